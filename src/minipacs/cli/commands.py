"""The bodies of the CLI commands; argument parsing lives in main.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.main import outbound, peer
from minipacs.cli.report import print_json, status_json, status_text
from minipacs.config import ConfigError, Settings
from minipacs.services.outbound import (
    MAX_CONTEXTS,
    EchoResponse,
    NoAssociation,
    OutboundError,
    SendOutcome,
    SendResult,
    TooManyContexts,
)
from minipacs.services.storage_scu import StoreSummary, scan


def serve(settings: Settings) -> int:
    from minipacs.bootstrap import serve as serve_forever

    try:
        asyncio.run(serve_forever(settings))
    except ConfigError as exc:  # e.g. HTTP beyond loopback without users
        print(f"minipacs: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"minipacs: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NETWORK
    return EXIT_OK


async def echo(args: argparse.Namespace) -> int:
    code = EXIT_OK
    target = f"{args.called_aet}@{args.host}:{args.port}"

    def show(response: EchoResponse) -> None:
        nonlocal code
        if not args.json:
            print(f"C-ECHO {target}: {status_text(response.status, response.error_comment)} ({response.ms:.1f} ms)")
        if response.status != 0:
            code = EXIT_PARTIAL

    try:
        responses = await outbound(args).echo(peer(args), repeat=args.repeat, on_response=show)
    except OutboundError as exc:
        print(f"minipacs echo: {exc}", file=sys.stderr)
        if args.json:
            print_json({"command": "echo", "peer": target, "error": str(exc), "exit_code": EXIT_NETWORK})
        return EXIT_NETWORK
    if args.json:
        print_json(
            {
                "command": "echo",
                "peer": target,
                "exit_code": code,
                "responses": [{**status_json(r.status, r.error_comment), "ms": round(r.ms, 3)} for r in responses],
            }
        )
    return code


async def store(args: argparse.Namespace) -> int:
    """C-STORE files and folders; every file not sent is listed with why (stderr, and ``--json``).

    An association that breaks off is replaced by a new one for the rest (services/outbound.py send).
    """
    summary = StoreSummary()
    files = scan(args.paths, summary)
    target = f"{args.called_aet}@{args.host}:{args.port}"
    for path, why in summary.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not files:
        print("minipacs store: no DICOM files to send", file=sys.stderr)
        if args.json:
            print_json(_store_json(target, summary, 0, [], [], None, 0.0, EXIT_PARTIAL, "no DICOM files to send"))
        return EXIT_PARTIAL
    bar = _progress(len(files), "store", enabled=not args.no_progress)
    start = time.perf_counter()
    failed: list[SendOutcome] = []
    warned: list[SendOutcome] = []

    def tick(outcome: SendOutcome) -> None:
        if outcome.ok:
            summary.sent += 1
            summary.warnings += outcome.warning
            if outcome.warning:
                warned.append(outcome)
        else:
            summary.failed.append((Path(outcome.instance.label), outcome.reason))
            failed.append(outcome)
        if bar is not None:
            bar.update(1)

    error, code = "", EXIT_OK
    result: SendResult | None = None
    try:
        result = await outbound(args).send(peer(args), files, progress=tick)
    except TooManyContexts as exc:
        error = (
            f"the files need {exc.needed} presentation contexts; one association allows {MAX_CONTEXTS}. "
            "Send the folders separately."
        )
        code = EXIT_PARTIAL
    except NoAssociation as exc:
        error, code = str(exc), EXIT_NETWORK
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if error or result is None:
        print(f"minipacs store: {error}", file=sys.stderr)
        if args.json:
            print_json(_store_json(target, summary, len(files), failed, warned, result, seconds, code, error))
        return code
    if result.gave_up:
        code = EXIT_NETWORK
    else:
        code = EXIT_OK if summary.ok and not summary.warnings else EXIT_PARTIAL
    for path, why in summary.failed:
        print(f"failed {path}: {why}", file=sys.stderr)
    for why in result.broken:
        print(f"minipacs store: an association broke off ({why}); the rest went on a new one", file=sys.stderr)
    if args.json:
        print_json(_store_json(target, summary, len(files), failed, warned, result, seconds, code, ""))
    else:
        _print_store_summary(summary, len(files), seconds, result)
    return code


def _store_json(
    target: str,
    summary: StoreSummary,
    total: int,
    failed: list[SendOutcome],
    warned: list[SendOutcome],
    result: SendResult | None,
    seconds: float,
    code: int,
    error: str,
) -> dict[str, Any]:
    def one(outcome: SendOutcome) -> dict[str, Any]:
        status = status_json(outcome.status) if outcome.status is not None else {"status": None}
        return {
            "path": str(outcome.instance.label),
            "sop_instance_uid": outcome.instance.sop_instance_uid,
            **status,
            "reason": outcome.reason,
        }

    document: dict[str, Any] = {
        "command": "store",
        "peer": target,
        "files": total,
        "sent": summary.sent,
        "warnings": [one(o) for o in warned],
        "failed": [one(o) for o in failed],
        "skipped": [{"path": str(path), "reason": why} for path, why in summary.skipped],
        "associations": result.associations if result is not None else 0,
        "associations_broken": result.broken if result is not None else [],
        "seconds": round(seconds, 3),
        "exit_code": code,
    }
    if error:
        document["error"] = error
    return document


def _print_store_summary(summary: StoreSummary, total: int, seconds: float, result: SendResult) -> None:
    rate = summary.sent / seconds if seconds > 0 else 0.0
    again = f"; {result.associations} associations ({len(result.broken)} broke off)" if result.broken else ""
    print(
        f"sent {summary.sent} of {total} file(s) in {seconds:.2f} s ({rate:.0f}/s); "
        f"{summary.warnings} warning(s), {len(summary.failed)} failed, {len(summary.skipped)} skipped{again}"
    )


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr)


async def import_(settings: Settings, paths: list[Path], progress: bool, as_json: bool = False) -> int:
    from minipacs.bootstrap import open_archive
    from minipacs.core.importer import import_tree

    archive = await open_archive(settings)
    total = {"stored": 0, "duplicate": 0, "rejected": 0, "pack_files": 0, "pack_entries": 0}
    rejections: list[tuple[Path, str]] = []
    not_replayed: list[tuple[Path, int]] = []
    try:
        for root in paths:
            bar = _progress(0, "import", enabled=progress)
            summary = await import_tree(archive, root, bar.update if bar is not None else None)
            if bar is not None:
                bar.close()
            total["stored"] += summary.stored
            total["duplicate"] += summary.duplicates
            total["rejected"] += summary.rejected
            total["pack_files"] += summary.pack_files
            total["pack_entries"] += summary.pack_entries
            for path, why in summary.rejections:
                rejections.append((path, why))
                print(f"rejected {path}: {why}", file=sys.stderr)
            for folder, count in summary.not_replayed:
                not_replayed.append((folder, count))
                print(
                    f"warning: {folder} is a data folder whose intake log holds {count} record(s) after its last "
                    "checkpoint: instances it acknowledged may not be in its storage folder yet (a crash or a power "
                    f"cut before they were written there). Run `minipacs serve --data {folder}` once (its start "
                    "replays them), stop it, then import again.",
                    file=sys.stderr,
                )
    finally:
        await archive.close()
    code = EXIT_OK if total["rejected"] == 0 and not not_replayed else EXIT_PARTIAL
    if as_json:
        print_json(
            {
                "command": "import",
                "data_dir": str(settings.data_dir),
                "stored": total["stored"],
                "duplicates": total["duplicate"],
                "rejected": [{"path": str(p), "reason": why} for p, why in rejections],
                "pack_files": total["pack_files"],
                "pack_entries": total["pack_entries"],
                "not_replayed": [{"data_folder": str(f), "records": n} for f, n in not_replayed],
                "exit_code": code,
            }
        )
    else:
        # a data folder's small instances are entries of pack files (blobs/packs.py): say they were read
        packs = (
            f"; {total['pack_entries']} of them entries of {total['pack_files']} pack file(s)"
            if total["pack_files"]
            else ""
        )
        print(
            f"imported: {total['stored']} stored, {total['duplicate']} duplicate(s), {total['rejected']} rejected"
            f"{packs}"
        )
    return code


async def show_log(settings: Settings, limit: int, as_json: bool) -> int:
    from minipacs.bootstrap import open_archive

    archive = await open_archive(settings)
    try:
        records = await archive.list_associations(limit)
    finally:
        await archive.close()
    if as_json:
        out = []
        for r in records:
            d = dict(r.__dict__)
            d["started_at"] = r.started_at.isoformat()
            d["ended_at"] = r.ended_at.isoformat() if r.ended_at else None
            d["duration_s"] = r.duration_s
            out.append(d)
        print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    for r in records:
        ops: dict[str, int] = {}
        for op in r.operations:
            counts = op.get("counts")
            if op.get("op") == "summary" and isinstance(counts, dict):
                ops = {str(k): int(v) for k, v in counts.items()}
                break
            key = f"{op.get('op')} {op.get('outcome', '')}".strip()
            ops[key] = ops.get(key, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(ops.items())) or "no operations"
        state = "accepted" if r.accepted else f"REJECTED: {r.reject_reason}"
        dur = f"{r.duration_s:.2f}s" if r.duration_s is not None else "-"
        accepted_ctx = sum(1 for c in r.contexts if c.get("result") == "accepted")
        secure = f" over {r.tls}" + (f" ({r.tls_peer})" if r.tls_peer else "") if r.tls and r.tls != "failed" else ""
        user = f" user {r.user_identity}" if r.user_identity else ""
        print(
            f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.calling_aet or '?'} -> {r.called_aet or '?'} "
            f"from {r.peer_host}:{r.peer_port}{secure}{user} {state}; {accepted_ctx}/{len(r.contexts)} contexts; "
            f"{what}; {r.bytes_received} B in, {r.bytes_sent} B out; {dur}; "
            f"{r.end_reason or ''}".rstrip("; ")
        )
    return EXIT_OK
