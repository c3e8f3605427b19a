"""`minipacs export --study UID (--dicomdir OUT | --zip OUT)`: DICOM media (core/media.py) from the archive.

``--dicomdir OUT`` writes the File-set into the folder OUT (new or empty): copy it onto a CD
or a USB stick as it is. ``--zip OUT`` writes the same File-set into a ZIP file, as
``GET /api/{level}/{id}/media`` sends it. One of --patient, --study, --series names what.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.audit import Action, ActorKind, login_name
from minipacs.core.errors import ArchiveError
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level

NEEDS_SETTINGS = True

#: flag -> (retrieve level, unique key)
_LEVELS: Final = {s.noun: (s.level.value, s.unique_key) for s in LEVEL_SPELLINGS.values() if s.level is not Level.IMAGE}


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("export", help="write a patient, study or series as DICOM media (DICOMDIR) to a folder or ZIP")
    settings_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--patient", metavar="ID", help="export this Patient ID")
    what.add_argument("--study", metavar="UID", help="export this Study Instance UID")
    what.add_argument("--series", metavar="UID", help="export this Series Instance UID")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--dicomdir", metavar="OUT", type=Path, help="write the File-set into folder OUT (new or empty)")
    out.add_argument("--zip", metavar="OUT", type=Path, help="write the File-set into the ZIP file OUT")


async def _export(settings: Settings, level: str, key: str, value: str, args: argparse.Namespace) -> int:
    from minipacs.bootstrap import open_archive
    from minipacs.core.media import build_media, write_media
    from minipacs.core.retrieve import select_instances

    archive = await open_archive(settings)
    try:
        found = await select_instances(archive, level, {key: value}, "PATIENT")
        usable = [i for i in found if not i.problem]
        if not usable:
            print(f"minipacs: {level.lower()} {value!r} has no stored instance in {settings.data_dir}", file=sys.stderr)
            return EXIT_USAGE
        media = await asyncio.to_thread(build_media, usable, f"{level.lower()} {value}")
        if args.dicomdir is not None:
            count = await asyncio.to_thread(write_media, media, args.dicomdir)
            where = str(args.dicomdir)
        else:
            count = await asyncio.to_thread(_write_zip, media.entries(), args.zip)
            count -= 2  # DICOMDIR, README
            where = str(args.zip)
        for study_uid in sorted({i.study_instance_uid for i in usable}):
            archive.audit.record(
                Action.EXPORTED,
                actor_kind=ActorKind.CLI,
                actor=login_name(),
                patient_id=value if level == "PATIENT" else "",
                study_uid=study_uid,
                detail=f"DICOM media of {level.lower()} {value} to {where}",
            )
    finally:
        await archive.close()
    left = len(found) - count
    print(f"exported {count} instance(s) to {where}" + (f"; {left} left out (see README)" if left else ""))
    return EXIT_OK if not left else EXIT_PARTIAL


def _write_zip(entries: list[tuple[str, Callable[[], BinaryIO] | bytes]], out: Path) -> int:
    from minipacs.web.transfer import zip_entries

    with open(out, "wb") as fh:
        for piece in zip_entries(entries):
            fh.write(piece)
    return len(entries)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    name = next(flag for flag in _LEVELS if getattr(args, flag) is not None)
    level, key = _LEVELS[name]
    try:
        return asyncio.run(_export(settings, level, key, getattr(args, name), args))
    except (ArchiveError, OSError) as exc:
        print(f"minipacs: export failed: {exc}", file=sys.stderr)
        return EXIT_USAGE
