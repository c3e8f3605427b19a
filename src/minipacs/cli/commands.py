"""The bodies of the CLI commands; argument parsing lives in main.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.main import outbound, peer
from minipacs.config import ConfigError, Settings
from minipacs.services.outbound import (
    MAX_CONTEXTS,
    AssociationLost,
    EchoResponse,
    NoAssociation,
    OutboundError,
    SendOutcome,
    TooManyContexts,
)
from minipacs.services.status import describe
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

    def show(response: EchoResponse) -> None:
        nonlocal code
        print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: {describe(response.status)} "
              f"({response.ms:.1f} ms)")
        if response.status != 0:
            code = EXIT_PARTIAL

    try:
        await outbound(args).echo(peer(args), repeat=args.repeat, on_response=show)
    except OutboundError as exc:
        print(f"minipacs echo: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    return code


async def store(args: argparse.Namespace) -> int:
    summary = StoreSummary()
    files = scan(args.paths, summary)
    for path, why in summary.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not files:
        print("minipacs store: no DICOM files to send", file=sys.stderr)
        return EXIT_PARTIAL
    bar = _progress(len(files), "store", enabled=not args.no_progress)
    start = time.perf_counter()

    def tick(outcome: SendOutcome) -> None:
        if outcome.ok:
            summary.sent += 1
            summary.warnings += outcome.warning
        else:
            summary.failed.append((outcome.instance.path, outcome.reason))
        if bar is not None:
            bar.update(1)

    try:
        await outbound(args).send(peer(args), files, progress=tick)
    except TooManyContexts as exc:
        print(f"minipacs store: the files need {exc.needed} presentation contexts; one association "
              f"allows {MAX_CONTEXTS}. Send the folders separately.", file=sys.stderr)
        return EXIT_PARTIAL
    except NoAssociation as exc:
        print(f"minipacs store: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    except AssociationLost as exc:
        print(f"minipacs store: {exc}", file=sys.stderr)
        if bar is not None:
            bar.close()
        _print_store_summary(summary, len(files), time.perf_counter() - start)
        return EXIT_NETWORK
    finally:
        if bar is not None:
            bar.close()
    _print_store_summary(summary, len(files), time.perf_counter() - start)
    return EXIT_OK if summary.ok and not summary.warnings else EXIT_PARTIAL


def _print_store_summary(summary: StoreSummary, total: int, seconds: float) -> None:
    for path, why in summary.failed:
        print(f"failed {path}: {why}", file=sys.stderr)
    rate = summary.sent / seconds if seconds > 0 else 0.0
    print(f"sent {summary.sent} of {total} file(s) in {seconds:.2f} s ({rate:.0f}/s); "
          f"{summary.warnings} warning(s), {len(summary.failed)} failed, {len(summary.skipped)} skipped")


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr)


async def import_(settings: Settings, paths: list[Path], progress: bool) -> int:
    from minipacs.bootstrap import open_archive
    from minipacs.core.importer import import_tree

    archive = await open_archive(settings)
    total = {"stored": 0, "duplicate": 0, "rejected": 0}
    try:
        for root in paths:
            bar = _progress(0, "import", enabled=progress)
            summary = await import_tree(archive, root, bar.update if bar is not None else None)
            if bar is not None:
                bar.close()
            total["stored"] += summary.stored
            total["duplicate"] += summary.duplicates
            total["rejected"] += summary.rejected
            for path, why in summary.rejections:
                print(f"rejected {path}: {why}", file=sys.stderr)
    finally:
        await archive.close()
    print(f"imported: {total['stored']} stored, {total['duplicate']} duplicate(s), {total['rejected']} rejected")
    return EXIT_OK if total["rejected"] == 0 else EXIT_PARTIAL


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
        print(f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.calling_aet or '?'} -> {r.called_aet or '?'} "
              f"from {r.peer_host}:{r.peer_port}{secure}{user} {state}; {accepted_ctx}/{len(r.contexts)} contexts; "
              f"{what}; {r.bytes_received} B in, {r.bytes_sent} B out; {dur}; "
              f"{r.end_reason or ''}".rstrip("; "))
    return EXIT_OK
