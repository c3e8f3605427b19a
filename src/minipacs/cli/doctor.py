"""`minipacs doctor [NODE]`: the archive explains the network.

minipacs doctor PACS                 one registered node (AE title or registry id), step by step
minipacs doctor PACS --move-test     ... and the way back: a C-MOVE of one instance to us
minipacs doctor VIEWER --store-test  ... and a C-STORE of a test object that says what it is
minipacs doctor                      every registered node (doctor_parallel at once), our own
                                     listeners, the registry's duplicate titles, the findings
minipacs doctor --site               only the findings of the association log (no traffic)

Exit codes: 0 every check passed (warnings are printed, not failed); 1 a check failed after an
association was made, or a finding needs attention; 2 usage; 3 a node cannot be reached or
rejects us (steps 1, 2 and TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.nodes import IndexOnly
from minipacs.cli.report import print_json
from minipacs.config import Settings
from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import Node, NodeRegistry, calling_host_warning, registry_warnings
from minipacs.services.doctor import (
    FAILED,
    WARNING,
    ArrivalWatch,
    CatchListener,
    Doctor,
    DoctorSettings,
    ListenerReport,
    LogWatch,
    NodeReport,
    check_crl_file,
    check_listener,
    check_nodes,
)
from minipacs.services.outbound import Outbound, OutboundSettings

NEEDS_SETTINGS = True
#: Steps whose failure means "no association": exit code 3, as for echo/store/move.
NETWORK_STEPS = frozenset({"connect", "tls", "associate"})


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("doctor", help="check a DICOM node (or the whole site) step by step and explain what is wrong")
    settings_args(p)
    p.add_argument("node", nargs="?", metavar="NODE", help="a registered node: AE title or registry id [all of them]")
    p.add_argument("--host", dest="node_host", help="only the node with this AE title on this host")
    p.add_argument(
        "--move-test",
        action="store_true",
        help="step 5: C-MOVE one instance from the node to us and watch it arrive (moves real data)",
    )
    p.add_argument(
        "--store-test",
        action="store_true",
        help="step 5: C-STORE a test object (patient 'MINIPACS^CONNECTIVITY TEST') to the node",
    )
    p.add_argument("--site", action="store_true", help="only the findings of the association log; no network traffic")
    p.add_argument("--parallel", type=int, help="nodes checked at once [doctor_parallel, 8]")
    p.add_argument("--wait", type=float, help="seconds step 5 waits for the images [doctor_move_wait, 10]")
    p.add_argument("--bind", metavar="ADDR", help="local address to connect from [any]")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if args.parallel is not None and args.parallel < 1:
        print("minipacs doctor: --parallel must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.wait is not None and args.wait <= 0:
        print("minipacs doctor: --wait must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run(args, settings))


def doctor_for(settings: Settings, args: argparse.Namespace, arrivals: ArrivalWatch | None = None) -> Doctor:
    from minipacs.bootstrap import association_settings

    outbound = Outbound(
        OutboundSettings(association_settings(settings), connect_timeout=settings.connect_timeout, local_host=args.bind)
    )
    return Doctor(
        outbound,
        DoctorSettings(
            settings.ae_title,
            settings.port,
            connect_timeout=settings.connect_timeout,
            move_wait=args.wait if args.wait is not None else settings.doctor_move_wait,
            local_host=args.bind,
        ),
        arrivals,
    )


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    index = await IndexOnly.open(settings)
    try:
        registry = NodeRegistry(index)
        if args.site:
            return await _site_findings(args, settings, index, registry)
        if args.node is None:
            return await _whole_site(args, settings, index, registry)
        nodes = await _named(registry, args.node, args.node_host)
        if not nodes:
            where = f" on host {args.node_host}" if args.node_host else ""
            print(
                f"minipacs doctor: no node {args.node!r}{where} is registered; see 'minipacs nodes list'",
                file=sys.stderr,
            )
            return EXIT_USAGE
        async with _arrivals(args, settings, index) as arrivals:
            doctor = doctor_for(settings, args, arrivals)
            reports = await check_nodes(
                doctor,
                nodes,
                args.parallel or settings.doctor_parallel,
                move_test=args.move_test,
                store_test=args.store_test,
            )
        if args.json:
            print_json({"command": "doctor", "nodes": [r.json() for r in reports], "exit_code": _code(reports)})
        else:
            for report in reports:
                print_report(report)
        return _code(reports)
    finally:
        index.close()


async def _named(registry: NodeRegistry, name: str, host: str | None) -> list[Node]:
    if name.isdigit():
        node = await registry.get(int(name))
        found = [node] if node is not None else []
    else:
        found = await registry.find(name)
    return [n for n in found if host is None or n.host == host]


@contextlib.asynccontextmanager
async def _arrivals(
    args: argparse.Namespace, settings: Settings, index: IndexOnly
) -> AsyncIterator[ArrivalWatch | None]:
    """Who watches for step 5's images: our own listener on our port when it is free (the archive is not
    running), else the running archive's association log."""
    if not args.move_test:
        yield None
        return
    catcher = CatchListener(settings.ae_title, settings.host, settings.port)
    async with contextlib.AsyncExitStack() as stack:
        watch: ArrivalWatch
        try:
            watch = await stack.enter_async_context(catcher.running())
        except OSError:  # the port is taken: the archive runs and logs who reaches it
            watch = LogWatch(lambda: _latest(index, 200))
        yield watch


async def _latest(index: IndexOnly, limit: int) -> list[AssociationRecord]:
    from minipacs.index import repository as repo

    rows = await index.read(lambda conn: repo.load_associations(conn, limit))
    return [AssociationRecord(**row) for row in rows]


def _code(reports: list[NodeReport]) -> int:
    failed = [r.failed for r in reports if r.failed is not None]
    if any(step.name in NETWORK_STEPS for step in failed if step is not None):
        return EXIT_NETWORK
    return EXIT_PARTIAL if failed else EXIT_OK


MARKS = {"ok": "ok", WARNING: "WARNING", FAILED: "FAILED"}


def print_report(report: NodeReport) -> None:
    print(f"doctor: {report.label()}{' (TLS)' if report.tls else ''}")
    for step in report.steps:
        print(
            f"  {step.number} {step.name:<20} {MARKS.get(step.outcome, step.outcome):<8} "
            f"{step.ms:8.1f} ms  {step.verdict}"
        )
        if step.cause:
            print(f"      likely cause: {step.cause}")
        if step.fix:
            print(f"      fix: {step.fix}")
    failed = report.failed
    if failed is not None:
        print(f"  stopped at step {failed.number} ({failed.name}).")
    elif report.warnings:
        print(f"  passed, with {len(report.warnings)} warning(s).")
    else:
        print("  all checks passed.")


def print_listener(rep: ListenerReport) -> None:
    print(f"  {rep.name:<22} {'ok' if rep.ok else 'FAILED':<8} {rep.verdict}")
    if rep.cause:
        print(f"      likely cause: {rep.cause}")
    if rep.fix:
        print(f"      fix: {rep.fix}")


async def _listeners(settings: Settings, doctor: Doctor) -> list[ListenerReport]:
    checks = [check_listener(doctor, "DICOM listener", settings.host, settings.port, dicom=True)]
    if settings.tls_port:
        checks.append(
            check_listener(doctor, "DICOM TLS listener", settings.host, settings.tls_port, dicom=True, tls=True)
        )
    if settings.http_port:
        checks.append(check_listener(doctor, "HTTP listener", settings.http_host, settings.http_port, dicom=False))
    if settings.hl7_port:
        checks.append(check_listener(doctor, "HL7 listener", settings.hl7_host, settings.hl7_port, dicom=False))
    reports = list(await asyncio.gather(*checks))
    if settings.tls_crl_file:
        reports.append(await asyncio.to_thread(check_crl_file, settings.tls_crl_file))
    return reports


async def _whole_site(args: argparse.Namespace, settings: Settings, index: IndexOnly, registry: NodeRegistry) -> int:
    nodes = await registry.list()
    nodes = [n for n in nodes if args.node_host is None or n.host == args.node_host]
    async with _arrivals(args, settings, index) as arrivals:
        doctor = doctor_for(settings, args, arrivals)
        listeners = await _listeners(settings, doctor)
        reports = await check_nodes(
            doctor,
            nodes,
            args.parallel or settings.doctor_parallel,
            move_test=args.move_test,
            store_test=args.store_test,
        )
    registry_notes = registry_warnings(nodes)
    exposed = calling_host_warning(nodes, settings.check_calling_host)
    findings = await _findings(settings, index, nodes)
    code = _code(reports)
    if code == EXIT_OK and (registry_notes or findings or not all(r.ok for r in listeners)):
        code = EXIT_PARTIAL
    if args.json:
        print_json(
            {
                "command": "doctor",
                "listeners": [r.json() for r in listeners],
                "nodes": [r.json() for r in reports],
                "registry": registry_notes + ([exposed] if exposed else []),
                "findings": [f.json() for f in findings],
                "exit_code": code,
            }
        )
        return code
    print(f"our listeners ({settings.ae_title}):")
    for rep in listeners:
        print_listener(rep)
    print(f"the AE registry: {len(nodes)} node(s)")
    for note in registry_notes + ([exposed] if exposed else []):
        print(f"  warning: {note}")
    if not registry_notes:
        print("  no AE title is shared by several hosts")
    for report in reports:
        print_report(report)
    _print_findings(findings)
    bad = sum(not r.ok for r in reports)
    print(f"{len(reports)} node(s) checked, {bad} with a failure; {len(findings)} finding(s) in the association log")
    return code


async def _site_findings(args: argparse.Namespace, settings: Settings, index: IndexOnly, registry: NodeRegistry) -> int:
    nodes = await registry.list()
    findings = await _findings(settings, index, nodes)
    code = EXIT_PARTIAL if findings else EXIT_OK
    if args.json:
        print_json({"command": "doctor", "findings": [f.json() for f in findings], "exit_code": code})
        return code
    _print_findings(findings)
    if not findings:
        print(f"no findings in the latest {settings.diagnostics_window} associations")
    return code


async def _findings(settings: Settings, index: IndexOnly, nodes: list[Node]) -> list[Any]:
    from minipacs.core.diagnostics import analyse

    records = await _latest(index, settings.diagnostics_window)
    return analyse(records, nodes, settings.ae_title)


def _print_findings(findings: list[Any]) -> None:
    if findings:
        print(f"findings from the association log ({len(findings)}):")
    for f in findings:
        print(f"  {f.severity.upper()}: {f.title}")
        for line in f.evidence:
            print(f"      {line}")
        if f.fix:
            print(f"      fix: {f.fix}")
