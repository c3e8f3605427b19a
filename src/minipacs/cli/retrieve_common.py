"""What `minipacs move` and `minipacs get` share: arguments, the identifier, receivers, summaries."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL
from minipacs.cli.keys import parse_keys
from minipacs.cli.report import print_json, status_json, status_text
from minipacs.config import Settings
from minipacs.dicom.levels import LEVEL_NAMES, LEVEL_SPELLINGS
from minipacs.services.outbound import RetrieveRequest
from minipacs.services.retrieve_scu import FolderStorage, RetrieveResult
from minipacs.services.status import GET, MOVE, PENDING

#: Lowest unique key given -> the level it implies when no level is named (PS3.4 C.6.2.1).
LEVEL_OF_KEY = tuple((s.unique_key, s.level.value) for s in reversed(list(LEVEL_SPELLINGS.values())))


def retrieve_args(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "-P", "--patient", dest="model", action="store_const", const="PATIENT", help="Patient Root information model"
    )
    model.add_argument(
        "-S",
        "--study",
        dest="model",
        action="store_const",
        const="STUDY",
        help="Study Root information model [default]",
    )
    p.add_argument(
        "-L", "--level", choices=LEVEL_NAMES, type=str.upper, help="QueryRetrieveLevel [from the keys, else STUDY]"
    )
    p.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="identifier key, e.g. -k StudyInstanceUID=1.2.3 or -k 0020,000D=1.2.3 (repeatable)",
    )
    p.add_argument("--config", type=Path, help="TOML configuration file (for --into-archive)")
    p.add_argument("--data", type=Path, dest="data_dir", help="archive data folder (for --into-archive)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON (counts, status, failed UIDs)")


def identifier(args: argparse.Namespace) -> RetrieveRequest:
    """The request (model, level, encoded identifier) the arguments ask for; raises InvalidKeys (a ValueError)."""
    keys = [k for k in args.key if k.partition("=")[0].strip() not in ("QueryRetrieveLevel", "0008,0052")]
    named = {k.partition("=")[0].strip(): k.partition("=")[2] for k in args.key}
    level = args.level or named.get("QueryRetrieveLevel") or named.get("0008,0052") or ""
    if not level:
        level = next((lvl for key, lvl in LEVEL_OF_KEY if named.get(key)), "STUDY")
    model = args.model or "STUDY"
    if model == "STUDY" and level.upper() == "PATIENT":
        model = "PATIENT"
    return RetrieveRequest.build(parse_keys(keys), level=level, model=model)


@asynccontextmanager
async def receiver_service(
    args: argparse.Namespace, settings: Settings | None, folder: Path | None
) -> AsyncIterator[tuple[Any, str]]:
    """The storage service receiving the instances, and a phrase saying where they go."""
    if getattr(args, "into_archive", False):
        from minipacs.bootstrap import open_archive
        from minipacs.services.storage import StorageSCP

        if settings is None:
            raise ValueError("--into-archive needs the archive settings")
        archive = await open_archive(settings)
        try:
            yield StorageSCP(archive), f"into the archive in {settings.data_dir}"
        finally:
            await archive.close()
        return
    if folder is None:
        raise ValueError("no folder to receive into")
    yield FolderStorage(folder), f"into {folder}"


class ProgressPrinter:
    def __init__(self, enabled: bool, what: str) -> None:
        self.bar: Any = None
        self.enabled = enabled and sys.stderr.isatty()
        self.what = what
        self.start = time.perf_counter()

    def __call__(self, result: RetrieveResult) -> None:
        if not self.enabled or result.status != PENDING:
            return
        done = result.completed + result.failed + result.warning
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=done + result.remaining, desc=self.what, unit="file", file=sys.stderr)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def summary(
    op: str, result: RetrieveResult, seconds: float, where: str, *, as_json: bool = False, method: str = "move"
) -> int:
    """Print the outcome (the final status with its meaning and Error Comment); return the exit code."""
    table = GET if method == "get" else MOVE
    code = EXIT_OK if result.status == 0 else EXIT_PARTIAL
    if as_json:
        print_json(
            {
                "command": method,
                "operation": op,
                **status_json(result.status, result.error_comment, table),
                "completed": result.completed,
                "failed": result.failed,
                "warning": result.warning,
                "failed_uids": result.failed_uids,
                "where": where,
                "seconds": round(seconds, 3),
                "exit_code": code,
            }
        )
        return code
    print(
        f"{op}: {status_text(result.status, result.error_comment, table)}; {result.completed} completed, "
        f"{result.failed} failed, {result.warning} warning(s) in {seconds:.2f} s{' ' + where if where else ''}"
    )
    if result.error_comment:
        print(f"  error comment: {result.error_comment}", file=sys.stderr)
    for uid in result.failed_uids[:50]:
        print(f"  failed: {uid}", file=sys.stderr)
    if len(result.failed_uids) > 50:
        print(f"  ... and {len(result.failed_uids) - 50} more failed", file=sys.stderr)
    return code


def failure(command: str, error: str, as_json: bool, code: int) -> int:
    """``minipacs move|get`` could not do it: the reason on stderr (and as JSON); returns ``code``."""
    print(f"minipacs {command}: {error}", file=sys.stderr)
    if as_json:
        print_json({"command": command, "error": error, "exit_code": code})
    return code
