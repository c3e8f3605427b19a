"""The bodies of the CLI commands; argument parsing lives in main.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.main import association_settings
from minipacs.config import ConfigError, Settings
from minipacs.net.association import AssociationError, build_rq, connect
from minipacs.net.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.services.status import describe
from minipacs.services.storage_scu import Part10File, StoreSummary, proposal, scan, store_all
from minipacs.services.verification import echo as c_echo


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
    settings = association_settings(args)
    rq = build_rq(args.calling_aet, args.called_aet,
                  [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])], settings)
    try:
        assoc = await connect(args.host, args.port, rq, settings, connect_timeout=args.connect_timeout,
                              tls=args.tls)
    except AssociationError as exc:
        print(f"minipacs echo: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    code = EXIT_OK
    try:
        for _ in range(max(args.repeat, 1)):
            start = time.perf_counter()
            status = await c_echo(assoc)
            took = (time.perf_counter() - start) * 1000
            print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: {describe(status)} ({took:.1f} ms)")
            if status != 0:
                code = EXIT_PARTIAL
    except (AssociationError, LookupError) as exc:
        print(f"minipacs echo: {exc}", file=sys.stderr)
        assoc.abort()
        await assoc.wait_closed()
        return EXIT_NETWORK
    await assoc.release()
    return code


async def store(args: argparse.Namespace) -> int:
    summary = StoreSummary()
    files = scan(args.paths, summary)
    for path, why in summary.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not files:
        print("minipacs store: no DICOM files to send", file=sys.stderr)
        return EXIT_PARTIAL
    settings = association_settings(args)
    contexts = proposal(files)
    if len(contexts) > 128:
        print(f"minipacs store: the files need {len(contexts)} presentation contexts; one association "
              "allows 128. Send the folders separately.", file=sys.stderr)
        return EXIT_PARTIAL
    rq = build_rq(args.calling_aet, args.called_aet, contexts, settings)
    try:
        assoc = await connect(args.host, args.port, rq, settings, connect_timeout=args.connect_timeout,
                              tls=args.tls)
    except AssociationError as exc:
        print(f"minipacs store: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    bar = _progress(len(files), "store", enabled=not args.no_progress)
    start = time.perf_counter()

    def tick(_f: Part10File, _status: int) -> None:
        if bar is not None:
            bar.update(1)

    try:
        await store_all(assoc, files, summary, tick)
    except AssociationError as exc:
        print(f"minipacs store: {exc}", file=sys.stderr)
        if bar is not None:
            bar.close()
        _print_store_summary(summary, len(files), time.perf_counter() - start)
        return EXIT_NETWORK
    finally:
        if bar is not None:
            bar.close()
    await assoc.release()
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
