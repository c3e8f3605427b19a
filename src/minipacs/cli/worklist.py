"""`minipacs worklist add | list | remove | import | query`: the Modality Worklist.

``add``/``list``/``remove``/``import`` work on the index (server stopped or
running: a running server answers the next query with the change); ``query`` is
the worklist SCU (like ``findscu -W``) against any MWL SCP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.nodes import IndexOnly
from minipacs.cli.report import status_text
from minipacs.config import Settings
from minipacs.core.worklist import InvalidWorklistEntry, Worklist, check_values
from minipacs.services.outbound import (
    AssociationLost,
    FindRequest,
    InvalidKeys,
    NoAssociation,
)
from minipacs.services.status import FIND

NEEDS_SETTINGS = True

#: Return keys a `worklist query` asks for when given no -k (PS3.4 Table K.6-1, the usual ones).
DEFAULT_QUERY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
)


def register(sub: Any) -> None:
    from minipacs.cli.main import network_args, settings_args

    parser = sub.add_parser("worklist", help="the modality worklist (add, list, remove, import, query)")
    actions = parser.add_subparsers(dest="worklist_action", required=True, metavar="ACTION")

    p = actions.add_parser("add", help="schedule a procedure step")
    settings_args(p)
    p.add_argument("--patient-id", required=True)
    p.add_argument("--patient-name", default="")
    p.add_argument("--birth-date", default="", help="YYYYMMDD")
    p.add_argument("--sex", default="", help="M, F or O")
    p.add_argument("--accession", default="")
    p.add_argument("--modality", required=True, help="e.g. CT, MR")
    p.add_argument("--station-aet", default="", help="Scheduled Station AE Title")
    p.add_argument("--start", default="", help="YYYYMMDD[HHMM[SS]] scheduled start")
    p.add_argument("--physician", default="", help="Scheduled Performing Physician's Name")
    p.add_argument("--description", default="", help="procedure description")
    p.add_argument("--procedure-id", default="", help="Requested Procedure ID and SPS ID")
    p.add_argument("--study-uid", default="", help="Study Instance UID (generated when absent)")

    p = actions.add_parser("list", help="list worklist entries")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="JSON output")

    p = actions.add_parser("remove", help="remove an entry by id, or every entry with an accession number")
    settings_args(p)
    p.add_argument("key", help="entry id or accession number")

    p = actions.add_parser("import", help="import DCMTK .wl files (wlmscpfs format) from files or folders")
    settings_args(p)
    p.add_argument("paths", nargs="+", type=Path)

    p = actions.add_parser("query", help="query a Modality Worklist SCP (like findscu -W)")
    network_args(p, "FINDSCU")
    p.add_argument(
        "-k",
        "--key",
        action="append",
        default=[],
        dest="keys",
        help="key as in findscu: PatientID=123456, ScheduledProcedureStepSequence[0].Modality=CT",
    )
    p.add_argument("--json", action="store_true", help="PS3.18 JSON output")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.worklist_action == "query":
        return asyncio.run(_query(args))
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    index = await IndexOnly.open(settings)
    try:
        worklist = Worklist(index)
        if args.worklist_action == "add":
            return await _add(args, worklist)
        if args.worklist_action == "list":
            return await _list(args, worklist)
        if args.worklist_action == "remove":
            count = await worklist.remove(args.key)
            if not count:
                print(
                    f"minipacs worklist remove: no entry with id or accession {args.key!r}; "
                    "see 'minipacs worklist list'",
                    file=sys.stderr,
                )
                return EXIT_PARTIAL
            print(f"removed {count} worklist entr{'y' if count == 1 else 'ies'}")
            return EXIT_OK
        added, problems = await worklist.import_files(args.paths)
        for problem in problems:
            print(f"skipped {problem}", file=sys.stderr)
        print(
            f"imported {added} worklist entr{'y' if added == 1 else 'ies'}"
            + (f", {len(problems)} file(s) skipped" if problems else "")
        )
        return EXIT_PARTIAL if problems else EXIT_OK
    finally:
        index.close()


#: The attribute each `worklist add` flag sets, for messages naming the flag (PS3.4 Table K.6-1).
ADD_FLAGS = {
    "PatientID": "--patient-id",
    "PatientName": "--patient-name",
    "PatientBirthDate": "--birth-date (YYYYMMDD)",
    "PatientSex": "--sex (M, F or O)",
    "AccessionNumber": "--accession",
    "Modality": "--modality",
    "ScheduledStationAETitle": "--station-aet",
    "ScheduledProcedureStepStartDate": "--start (YYYYMMDD[HHMM[SS]])",
    "ScheduledProcedureStepStartTime": "--start (YYYYMMDD[HHMM[SS]])",
    "ScheduledPerformingPhysicianName": "--physician",
    "RequestedProcedureDescription": "--description",
    "ScheduledProcedureStepDescription": "--description",
    "RequestedProcedureID": "--procedure-id",
    "ScheduledProcedureStepID": "--procedure-id",
    "StudyInstanceUID": "--study-uid",
}


def _entry_dataset(args: argparse.Namespace) -> Dataset:
    """The entry the flags describe, values as typed (checked by core.worklist.check_values, not here)."""
    ds = Dataset()
    with disable_value_validation():  # the one check is check_values, refusing; not a pydicom warning
        ds.PatientID = args.patient_id
        ds.PatientName = args.patient_name
        ds.PatientBirthDate = args.birth_date
        ds.PatientSex = args.sex
        ds.AccessionNumber = args.accession
        ds.RequestedProcedureDescription = args.description
        ds.RequestedProcedureID = args.procedure_id
        if args.study_uid:
            ds.StudyInstanceUID = args.study_uid
        sps = Dataset()
        sps.Modality = args.modality
        sps.ScheduledStationAETitle = args.station_aet
        sps.ScheduledProcedureStepStartDate = args.start[:8]
        sps.ScheduledProcedureStepStartTime = args.start[8:]
        sps.ScheduledPerformingPhysicianName = args.physician
        sps.ScheduledProcedureStepDescription = args.description
        sps.ScheduledProcedureStepID = args.procedure_id
        ds.ScheduledProcedureStepSequence = [sps]
    if any(not str(v).isascii() for v in (args.patient_name, args.physician, args.description)):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


async def _add(args: argparse.Namespace, worklist: Worklist) -> int:
    """Validated exactly as ``POST /api/worklist`` (core.worklist.check_values, then ``validated`` in
    Worklist.add, which generates the Study Instance UID and the procedure IDs when not given)."""
    ds = _entry_dataset(args)
    try:
        entry = await worklist.add(check_values(ds))
    except InvalidWorklistEntry as exc:
        flags = sorted({flag for keyword, flag in ADD_FLAGS.items() if keyword in str(exc)})
        print(f"minipacs worklist add: {exc}" + (f" (check {', '.join(flags)})" if flags else ""), file=sys.stderr)
        return EXIT_USAGE
    sps = entry.dataset.ScheduledProcedureStepSequence[0]
    print(
        f"added worklist entry {entry.id} (accession {entry.accession_number or '-'}, "
        f"study {entry.dataset.StudyInstanceUID}, requested procedure {entry.dataset.RequestedProcedureID}, "
        f"step {sps.ScheduledProcedureStepID})"
    )
    return EXIT_OK


async def _list(args: argparse.Namespace, worklist: Worklist) -> int:
    entries = await worklist.list()
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2))
        return EXIT_OK
    if not entries:
        print("the worklist is empty; add with: minipacs worklist add --patient-id ID --modality CT ...")
        return EXIT_OK
    columns = ("id", "status", "accession", "patient_id", "patient_name", "modality", "station", "start", "procedure")
    rows = [tuple(c.upper() for c in columns)] + [tuple(e.summary()[c] for c in columns) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


async def _query(args: argparse.Namespace) -> int:
    from minipacs.cli.keys import parse_keys
    from minipacs.cli.main import outbound, peer

    try:
        request = FindRequest.build(parse_keys(args.keys or DEFAULT_QUERY_KEYS), model="worklist")
    except InvalidKeys as exc:
        print(f"minipacs worklist query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = await outbound(args).query(peer(args), request)
    except NoAssociation as exc:
        print(f"minipacs worklist query: no association with {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    except AssociationLost as exc:
        print(f"minipacs worklist query: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    if args.json:
        print(json.dumps([m.to_json_dict() for m in result.matches], indent=2))
    else:
        for n, match in enumerate(result.matches, 1):
            print(f"# match {n}")
            print(match)
    if result.status != 0:
        print(
            f"minipacs worklist query: final status {status_text(result.status, result.error_comment, FIND)}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    print(f"{len(result.matches)} match(es)", file=sys.stderr)
    return EXIT_OK
