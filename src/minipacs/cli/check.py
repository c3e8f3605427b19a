"""`minipacs check [--remove-unindexed] [--json]`: index rows without their file, files without a row
(core/storage_check.py). Exit 0 when both lists are empty (after any removal), else 1."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Final

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.storage_check import DataDirectoryInUse, StorageCheck, check_storage, remove_unindexed

NEEDS_SETTINGS = True

#: Most keys of each list printed as text (--json prints them all).
SHOWN: Final = 20


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("check", help="index rows whose file is missing, files in storage no row names")
    settings_args(p)
    p.add_argument(
        "--remove-unindexed",
        action="store_true",
        help="remove the files no row names (refused while another minipacs process uses the data directory)",
    )
    p.add_argument("--json", action="store_true", help="JSON output: counts and every key found")


async def _check(settings: Settings, remove: bool) -> tuple[StorageCheck, list[str], str]:
    from minipacs.bootstrap import open_archive

    archive = await open_archive(settings)
    try:
        found = await check_storage(archive)
        removed: list[str] = []
        refused = ""
        if remove and found.unindexed:
            try:
                removed = await remove_unindexed(archive, found.unindexed)
            except DataDirectoryInUse as exc:
                refused = str(exc)
        return found, removed, refused
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    found, removed, refused = asyncio.run(_check(settings, args.remove_unindexed))
    left = sorted(set(found.unindexed) - set(removed))
    if args.json:
        document = {
            "rows": found.rows,
            "files": found.files,
            "missing": [{"sop_instance_uid": uid, "blob_key": key} for uid, key in found.missing],
            "unindexed": found.unindexed,
            "removed": removed,
            "pending_removal": found.pending_removal,
        }
        print(json.dumps(document, indent=2))
    else:
        print(f"{found.rows} index row(s), {found.files} file(s) in storage")
        print(f"{len(found.missing)} row(s) whose file is missing")
        for uid, key in found.missing[:SHOWN]:
            print(f"  missing  {uid}  {key}")
        print(f"{len(found.unindexed)} file(s) no row names" + (f", {len(removed)} removed" if removed else ""))
        for key in found.unindexed[:SHOWN]:
            print(f"  {'removed' if key in removed else 'unindexed'}  {key}")
        if found.pending_removal:
            print(
                f"{found.pending_removal} file(s) of replaced copies wait out keep_replaced_seconds before "
                "their removal (a retrieve may still read them): not unindexed"
            )
        more = max(len(found.missing), len(found.unindexed)) - SHOWN
        if more > 0:
            print(f"  … {more} more: minipacs check --json lists them all")
        if found.unindexed and not args.remove_unindexed:
            print("minipacs check --remove-unindexed removes the files no row names (with minipacs serve stopped)")
    if refused:
        print(f"minipacs: {refused}", file=sys.stderr)
    return EXIT_OK if not found.missing and not left else EXIT_PARTIAL
