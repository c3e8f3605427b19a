"""C-MOVE and C-GET SCP and SCU, in process, over real loopback associations.

The archive serves MoveSCP/GetSCP; destinations are our own storage SCPs
(folder receivers), some made to refuse or to be slow so partial failure and
C-CANCEL can be seen; a fake registry stands in for the AE registry (the
real one is exercised by the interop tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.errors import AmbiguousDestination, UnknownDestination
from minipacs.core.model import Origin
from minipacs.dicom.uids import VERIFICATION_SOP_CLASS
from minipacs.net.association import Association, AssociationSettings, Message, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.presentation import SupportedContext
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP, batches
from minipacs.services.retrieve_scu import (
    FolderStorage,
    RetrieveResult,
    c_get,
    c_move,
    get_contexts,
    move_contexts,
    retrieve_identifier,
)
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from minipacs.services.verification import VerificationSCP, echo
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.peers import dataset_bytes
from tests.stored_files import instance_path

TIMEOUTS = Timeouts(acse=5.0, dimse=10.0, idle=30.0)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class FakeNode:
    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass
class FakeRegistry:
    nodes: list[FakeNode] = field(default_factory=list)

    async def resolve_move_destination(self, ae_title: str, requester_host: str) -> FakeNode:
        found = [n for n in self.nodes if n.ae_title == ae_title]
        if not found:
            raise UnknownDestination(f"C-MOVE destination {ae_title!r} is not a registered node")
        if len(found) == 1:
            return found[0]
        mine = [n for n in found if n.host == requester_host]
        if len(mine) == 1:
            return mine[0]
        raise AmbiguousDestination(f"{ae_title!r} is registered at " + ", ".join(f"{n.host}:{n.port}" for n in found))


class PickyStorage(FolderStorage):
    """Refuses the instances listed, answers the rest; optionally slow."""

    def __init__(
        self, folder: Path, refuse: set[str] | None = None, delay: float = 0.0, syntaxes: frozenset[str] | None = None
    ) -> None:
        super().__init__(folder)
        self.refuse = refuse or set()
        self.delay = delay
        self.syntaxes = syntaxes

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        base = super().supported_contexts()
        if self.syntaxes is None:
            return base
        return {uid: SupportedContext(uid, self.syntaxes) for uid in base}

    async def c_store(self, assoc: Association, message: Message) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        sop = str(message.command.get("AffectedSOPInstanceUID", ""))
        if sop in self.refuse:
            if message.dataset is not None:
                message.dataset.discard()
            rsp = Command.make(
                "C-STORE-RSP",
                MessageIDBeingRespondedTo=message.command["MessageID"],
                AffectedSOPClassUID=message.command["AffectedSOPClassUID"],
                AffectedSOPInstanceUID=sop,
                Status=0xA700,
                ErrorComment="disk full (test)",
            )
            await assoc.send_message(message.context.context_id, rsp)
            return
        await super().c_store(assoc, message)


@dataclass
class Env:
    archive: Archive
    server: DicomServer
    registry: FakeRegistry
    files: dict[str, Path]  # SOP Instance UID -> source file
    study_uid: str
    series_uids: list[str]
    tmp: Path

    def settings(self, ae: str = "VIEWER") -> AssociationSettings:
        return AssociationSettings(ae_title=ae, timeouts=TIMEOUTS)

    @asynccontextmanager
    async def destination(
        self, ae: str = "DEST", service: Any = None, host: str = "127.0.0.1"
    ) -> AsyncIterator[FolderStorage]:
        folder = self.tmp / f"dest-{ae}-{host}"
        svc = service or FolderStorage(folder)
        dest = DicomServer(ae, [svc], host=host, port=0, timeouts=TIMEOUTS)
        await dest.start()
        self.registry.nodes.append(FakeNode(ae, host, dest.port))
        try:
            yield svc
        finally:
            await dest.close(grace=2.0)

    async def move(
        self, identifier: Dataset, destination: str = "DEST", model: str = "STUDY", on_progress: Any = None
    ) -> RetrieveResult:
        rq = build_rq("VIEWER", "MINIPACS", move_contexts(model), self.settings())
        assoc = await connect("127.0.0.1", self.server.port, rq, self.settings())
        try:
            return await c_move(assoc, model, identifier, destination, on_progress)
        finally:
            await assoc.release()


@asynccontextmanager
async def archive_env(
    tmp_path: Path,
    count: int = 6,
    series: int = 2,
    syntax: str = ExplicitVRLittleEndian,
    pending_every: int = 1,
    pending_interval: float = 0.2,
    **settings: Any,
) -> AsyncIterator[Env]:
    archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False, **settings))
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    files: dict[str, Path] = {}
    for i in range(count):
        sop = generate_uid()
        path = write_ct(
            tmp_path / "src" / f"{i:03d}.dcm",
            study_uid=study,
            series_uid=series_uids[i % series],
            sop_uid=sop,
            transfer_syntax=syntax,
            InstanceNumber=i + 1,
        )
        files[sop] = path
        await archive.import_file(path, Origin("import"))
    registry = FakeRegistry()
    server = DicomServer(
        "MINIPACS",
        [
            VerificationSCP(),
            StorageSCP(archive, scu_role=True),
            MoveSCP(
                archive,
                registry,
                pending_every=pending_every,
                pending_interval=pending_interval,
                association_logger=archive.record_association,
            ),
            GetSCP(archive, pending_every=pending_every, pending_interval=pending_interval),
        ],
        host="127.0.0.1",
        port=0,
        timeouts=TIMEOUTS,
        association_logger=archive.record_association,
    )
    await server.start()
    try:
        yield Env(archive, server, registry, files, study, series_uids, tmp_path)
    finally:
        await server.close(grace=2.0)
        await archive.close()


def parse_keys(level: str, specs: list[str]) -> Dataset:
    """The identifier for DCMTK-style "k=v" specs (the CLI's -k), through the structured keys."""
    return retrieve_identifier(level, {path: value for path, _, value in (s.partition("=") for s in specs)})


def study_key(env: Env) -> Dataset:
    return parse_keys("STUDY", [f"StudyInstanceUID={env.study_uid}"])


def received(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.glob("*.dcm")}


# ------------------------------------------------------------------ C-MOVE


def test_move_study_sends_stored_bytes_and_leaves_a_receipt(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env, env.destination() as dest:
            seen: list[RetrieveResult] = []
            result = await env.move(study_key(env), on_progress=lambda r: seen.append(RetrieveResult(**vars(r))))
            assert (result.status, result.completed, result.failed, result.warning) == (0, 6, 0, 0)
            assert result.failed_uids == []
            got = received(dest.folder)
            assert set(got) == set(env.files)
            for sop, src in env.files.items():
                assert dataset_bytes(got[sop]) == dataset_bytes(src)
            pendings = [r for r in seen if r.status == 0xFF00]
            assert [p.remaining for p in pendings] == [5, 4, 3, 2, 1]
            await asyncio.sleep(0.2)  # the association log is written when the association ends
            records = await env.archive.list_associations(10)
            receipts = [op for r in records for op in r.operations if op.get("op") == "C-MOVE"]
            assert receipts and receipts[0]["destination_ae"] == "DEST"
            assert receipts[0]["destination_host"] == "127.0.0.1"
            assert receipts[0]["completed"] == 6 and receipts[0]["failed"] == 0
            sub = [r for r in records if r.role == "requestor"]
            assert sub and sub[0].called_aet == "DEST"
            # the outgoing sub-association lists what it carried (issue 12 item 22), not "no operations"
            carried = [op for op in sub[0].operations if op.get("op") == "C-STORE"]
            assert sorted(op["sop_instance"] for op in carried) == sorted(env.files)
            assert all(op["status"] == 0 and op["outcome"] == "success" for op in carried)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("every", "interval", "remaining"),
    [
        (1, 0.0, [5, 4, 3, 2, 1]),  # after every sub-operation
        (4, 0.0, [2]),  # after every 4th
        (0, 1e-9, [5, 4, 3, 2, 1]),  # by time: the interval always passed
        (0, 0.0, []),  # never: Pending responses are optional (PS3.4 C.4.2.3.1)
        (100, 3600.0, []),  # the defaults' shape on a small study: only the final response
    ],
)
def test_move_pending_responses_by_count_or_time(
    tmp_path: Path, every: int, interval: float, remaining: list[int]
) -> None:
    async def main() -> None:
        async with (
            archive_env(tmp_path, pending_every=every, pending_interval=interval) as env,
            env.destination() as dest,
        ):
            seen: list[RetrieveResult] = []
            result = await env.move(study_key(env), on_progress=lambda r: seen.append(RetrieveResult(**vars(r))))
            assert (result.status, result.completed) == (0, 6)
            assert len(received(dest.folder)) == 6
            assert [r.remaining for r in seen if r.status == 0xFF00] == remaining

    asyncio.run(main())


@pytest.mark.parametrize(
    "level,keys,expected",
    [
        ("SERIES", lambda e: [f"StudyInstanceUID={e.study_uid}", f"SeriesInstanceUID={e.series_uids[0]}"], 3),
        ("SERIES", lambda e: [f"SeriesInstanceUID={e.series_uids[0]}\\{e.series_uids[1]}"], 6),
        ("IMAGE", lambda e: [f"SOPInstanceUID={list(e.files)[0]}"], 1),
        ("STUDY", lambda e: ["StudyInstanceUID=1.2.3.4.5.6.7"], 0),
    ],
)
def test_move_levels(tmp_path: Path, level: str, keys: Any, expected: int) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env, env.destination() as dest:
            result = await env.move(parse_keys(level, keys(env)))
            assert (result.status, result.completed) == (0, expected)
            assert len(received(dest.folder)) == expected

    asyncio.run(main())


def test_move_patient_root(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env, env.destination() as dest:
            result = await env.move(parse_keys("PATIENT", ["PatientID=P1"]), model="PATIENT")
            assert (result.status, result.completed) == (0, 6)
            assert len(received(dest.folder)) == 6

    asyncio.run(main())


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_move_patient_whose_id_is_not_ascii(tmp_path: Path, charset: str) -> None:
    """PS3.4 C.4.2.1.4.1: the identifier carries a Specific Character Set when its Patient ID is not in
    the default repertoire, and the Patient ID is read in it. A UTF-8 "PÄT9" was read as Latin-1
    ("PÃ\x84T9") and the move found nothing, while C-FIND found the patient."""

    async def main() -> None:
        async with archive_env(tmp_path, count=2) as env, env.destination() as dest:
            sop = generate_uid()
            path = write_ct(
                tmp_path / "src" / "umlaut.dcm",
                study_uid=generate_uid(),
                series_uid=generate_uid(),
                sop_uid=sop,
                patient_id="PÄT9",
                SpecificCharacterSet="ISO_IR 192",
            )
            await env.archive.import_file(path, Origin("import"))
            ds = Dataset()
            ds.SpecificCharacterSet = charset
            ds.QueryRetrieveLevel = "PATIENT"
            ds.PatientID = "PÄT9"
            result = await env.move(ds, model="PATIENT")
            assert (result.status, result.completed) == (0, 1)
            assert set(received(dest.folder)) == {sop}

    asyncio.run(main())


def test_unknown_destination_is_a801_with_a_sentence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env:
            result = await env.move(study_key(env), destination="NOBODY")
            assert result.status == 0xA801
            assert "NOBODY" in result.error_comment

    with caplog.at_level(logging.WARNING, logger="minipacs.move"):
        asyncio.run(main())
    assert "'NOBODY' is not a registered node" in caplog.text


def test_ambiguous_destination_names_candidates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env:
            env.registry.nodes += [FakeNode("VIEWER", "10.0.0.2", 104), FakeNode("VIEWER", "10.0.0.3", 104)]
            result = await env.move(study_key(env), destination="VIEWER")
            assert result.status == 0xA801

    with caplog.at_level(logging.WARNING, logger="minipacs.move"):
        asyncio.run(main())
    assert "10.0.0.2:104" in caplog.text and "10.0.0.3:104" in caplog.text


@pytest.mark.parametrize(
    ("keys", "level", "comment"),
    [
        ([], "", "QueryRetrieveLevel (0008,0052) is missing"),  # no level, no keys
        (["StudyInstanceUID=1.2.*"], "STUDY", "StudyInstanceUID '1.2.*' contains a wildcard"),
        ([], "STUDY", "a STUDY-level retrieve needs the Unique Key StudyInstanceUID"),  # unique key missing
        (["PatientID=P1"], "PATIENT", ""),  # PATIENT level in Study Root
        (["StudyInstanceUID=" + "1" * 80], "STUDY", ""),  # too long
    ],
)
def test_bad_identifier_is_a900(tmp_path: Path, keys: list[str], level: str, comment: str) -> None:
    """0xA900 with an Error Comment that names the key at fault when it fits the LO (PS3.7 C.4), not
    "Identifier cannot select instances; check level and UIDs" whatever the fault."""

    async def main() -> None:
        async with archive_env(tmp_path, count=1, series=1) as env:
            result = await env.move(parse_keys(level, keys), destination="DEST")
            assert result.status == 0xA900, result
            assert result.error_comment
            if comment:
                assert result.error_comment == comment

    asyncio.run(main())


def test_partial_failure_lists_failed_instances(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env:
            refuse = set(list(env.files)[:2])
            async with env.destination(service=PickyStorage(tmp_path / "picky", refuse)) as dest:
                result = await env.move(study_key(env))
            assert (result.status, result.completed, result.failed) == (0xB000, 4, 2)
            assert sorted(result.failed_uids) == sorted(refuse)
            assert set(received(dest.folder)) == set(env.files) - refuse

    asyncio.run(main())


def test_all_failed_is_a702(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=3) as env:
            async with env.destination(service=PickyStorage(tmp_path / "picky", set(env.files))):
                result = await env.move(study_key(env))
            assert (result.status, result.completed, result.failed) == (0xA702, 0, 3)
            assert sorted(result.failed_uids) == sorted(env.files)

    asyncio.run(main())


def test_unreachable_destination_fails_every_suboperation(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=2) as env:
            from tests.peers import free_port

            env.registry.nodes.append(FakeNode("GONE", "127.0.0.1", free_port()))
            result = await env.move(study_key(env), destination="GONE")
            assert (result.status, result.failed) == (0xA702, 2)
            assert "GONE" in result.error_comment

    asyncio.run(main())


def test_destination_that_rejects_the_association_is_named_so(tmp_path: Path) -> None:
    """A destination that answers A-ASSOCIATE-RJ (here: it does not know the called AE title) is
    reachable: the Error Comment says it rejected us, not "check its host and port"."""

    async def main() -> None:
        async with archive_env(tmp_path, count=2) as env:
            picky = DicomServer(
                "OTHER",
                [FolderStorage(tmp_path / "picky")],
                host="127.0.0.1",
                port=0,
                timeouts=TIMEOUTS,
                check_called_aet=True,
            )
            await picky.start()
            try:
                env.registry.nodes.append(FakeNode("PICKY", "127.0.0.1", picky.port))
                result = await env.move(study_key(env), destination="PICKY")
            finally:
                await picky.close(grace=2.0)
            assert (result.status, result.failed) == (0xA702, 2)
            assert result.error_comment == "PICKY rejected the association; see the server log"

    asyncio.run(main())


def test_missing_file_fails_that_instance_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=3, series=1) as env, env.destination():
            victim = list(env.files)[1]
            path = await instance_path(env.archive, victim)
            path.unlink()
            result = await env.move(study_key(env))
            assert (result.status, result.completed, result.failed, result.failed_uids) == (0xB000, 2, 1, [victim])

    asyncio.run(main())


def test_transcodes_when_destination_refuses_the_stored_syntax(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=2, series=1, syntax=ExplicitVRBigEndian) as env:
            only_implicit = PickyStorage(tmp_path / "implicit", syntaxes=frozenset({ImplicitVRLittleEndian}))
            async with env.destination(service=only_implicit) as dest:
                result = await env.move(study_key(env))
            assert (result.status, result.completed) == (0, 2)
            for sop, path in received(dest.folder).items():
                ds = pydicom.dcmread(path)
                assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
                assert ds.PixelData == pydicom.dcmread(env.files[sop]).PixelData

    asyncio.run(main())


def test_cancel_stops_the_move_after_the_current_suboperation(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=10, series=1) as env:
            async with env.destination(service=PickyStorage(tmp_path / "slow", delay=0.1)) as dest:
                rq = build_rq("VIEWER", "MINIPACS", move_contexts("STUDY"), env.settings())
                assoc = await connect("127.0.0.1", env.server.port, rq, env.settings())
                ctx = assoc.context_for("1.2.840.10008.5.1.4.1.2.2.2")
                assert ctx is not None
                sent: list[asyncio.Task[None]] = []

                def on_progress(r: RetrieveResult) -> None:
                    if r.status == 0xFF00 and r.completed == 2 and not sent:
                        cancel = Command.make("C-CANCEL-RQ", MessageIDBeingRespondedTo=assoc._message_id)
                        sent.append(asyncio.ensure_future(assoc.send_message(ctx.context_id, cancel)))

                result = await c_move(assoc, "STUDY", study_key(env), "DEST", on_progress)
                await assoc.release()
            assert result.status == 0xFE00
            assert 2 <= result.completed < 10
            assert len(received(dest.folder)) == result.completed

    asyncio.run(main())


def test_batches_keep_each_association_under_128_contexts() -> None:
    from minipacs.core.retrieve import StoredInstance

    insts = [StoredInstance(f"1.2.3.{i}", f"9.{i}", ExplicitVRLittleEndian, "x", None, 0) for i in range(100)]  # type: ignore[arg-type]
    groups = batches(insts)
    assert len(groups) == 2 and sum(len(g) for g in groups) == 100


# ------------------------------------------------------------------ C-GET


async def _get(env: Env, service: FolderStorage, identifier: Dataset, roles: bool = True) -> RetrieveResult:
    contexts, role_items = get_contexts("STUDY")
    rq = build_rq("VIEWER", "MINIPACS", contexts, env.settings(), roles=role_items if roles else [])
    assoc = await connect(
        "127.0.0.1", env.server.port, rq, env.settings(), handler=service.c_store, sink_factory=service.sink_for
    )
    try:
        return await c_get(assoc, "STUDY", identifier)
    finally:
        await assoc.release()


def test_get_with_one_storage_class_not_taken_is_a_warning_listing_it(tmp_path: Path) -> None:
    """PS3.4 C.4.3.3.1: the requester took the SCP role for CT Image Storage only; the study's MR instance
    cannot go over this association, so that sub-operation fails (named in the Failed SOP Instance UID
    List, the Error Comment saying why) and the others are sent: 0xB000, not a failure of the whole."""

    async def main() -> None:
        async with archive_env(tmp_path, count=3, series=1) as env:
            mr = generate_uid()
            path = write_ct(
                tmp_path / "src" / "mr.dcm",
                study_uid=env.study_uid,
                series_uid=generate_uid(),
                sop_uid=mr,
                SOPClassUID=MR_IMAGE_STORAGE,
                Modality="MR",
            )
            ds = pydicom.dcmread(path)
            ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.save_as(path)
            await env.archive.import_file(path, Origin("import"))
            contexts, roles = get_contexts("STUDY")
            only_ct = [role for role in roles if role.sop_class_uid == CT_IMAGE_STORAGE]
            sink = FolderStorage(tmp_path / "got")
            rq = build_rq("VIEWER", "MINIPACS", contexts, env.settings(), roles=only_ct)
            assoc = await connect(
                "127.0.0.1", env.server.port, rq, env.settings(), handler=sink.c_store, sink_factory=sink.sink_for
            )
            try:
                result = await c_get(assoc, "STUDY", study_key(env))
            finally:
                await assoc.release()
            assert (result.status, result.completed, result.failed) == (0xB000, 3, 1)
            assert result.failed_uids == [mr]
            assert result.error_comment == "Storage class not offered with the SCP role (role selection)"
            assert set(received(sink.folder)) == set(env.files)

    asyncio.run(main())


class PriorityRecorder(FolderStorage):
    """Stores as FolderStorage does and keeps the Priority of every C-STORE-RQ."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.priorities: list[int] = []

    async def c_store(self, assoc: Association, message: Message) -> None:
        self.priorities.append(int(message.command["Priority"]))
        await super().c_store(assoc, message)


@pytest.mark.parametrize("priority", [1, 2])  # HIGH, LOW (PS3.7 Table 9.3-1)
def test_suboperations_carry_the_priority_of_the_move_and_the_get(tmp_path: Path, priority: int) -> None:
    """PS3.4 C.4.2.1.2 / C.4.3.1.2: the Priority "of the C-MOVE [C-GET] operation and corresponding
    C-STORE sub-operations"; "the same priority shall be used for all C-STORE sub-operations". Every
    sub-operation went out MEDIUM (0). pynetdicom is the requester here: it sends the priority asked."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    got: list[int] = []

    def move_and_get(port: int, identifier: Dataset) -> tuple[int, int]:
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)

        def on_store(event: Any) -> int:
            got.append(int(event.request.Priority))
            return 0x0000

        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="MINIPACS",
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        try:
            moved = [
                s.Status
                for s, _ in assoc.send_c_move(
                    identifier, "DEST", StudyRootQueryRetrieveInformationModelMove, priority=priority
                )
            ]
            fetched = [
                s.Status
                for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, priority=priority)
            ]
        finally:
            assoc.release()
        return moved[-1], fetched[-1]

    async def main() -> None:
        async with archive_env(tmp_path, count=3) as env:
            recorder = PriorityRecorder(tmp_path / "dest")
            async with env.destination(service=recorder):
                statuses = await asyncio.to_thread(move_and_get, env.server.port, study_key(env))
            assert statuses == (0, 0)
            assert recorder.priorities == [priority] * 3
            assert got == [priority] * 3

    asyncio.run(main())


def test_get_study_on_the_same_association(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path) as env:
            sink = FolderStorage(tmp_path / "got")
            result = await _get(env, sink, study_key(env))
            assert (result.status, result.completed, result.failed) == (0, 6, 0)
            got = received(sink.folder)
            assert set(got) == set(env.files)
            for sop, src in env.files.items():
                assert dataset_bytes(got[sop]) == dataset_bytes(src)

    asyncio.run(main())


def test_get_without_role_selection_fails_every_suboperation(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=2) as env:
            sink = FolderStorage(tmp_path / "got")
            result = await _get(env, sink, study_key(env), roles=False)
            assert (result.status, result.failed) == (0xA702, 2)
            # the Error Comment names the fix (PS3.4 C.4.3.3.1, PS3.7 D.3.3.4 role selection)
            assert result.error_comment == "Storage class not offered with the SCP role (role selection)"
            assert received(sink.folder) == {}

    asyncio.run(main())


def test_a_request_past_the_window_during_a_c_get_does_not_stall_it(tmp_path: Path) -> None:
    """PS3.7 D.3.3.3: a requestor that proposed no Asynchronous Operations Window may have one request
    outstanding. One that sent a C-ECHO-RQ right after its C-GET-RQ had the C-ECHO held and our reading
    paused until a request ended -- but the C-GET could not end: its C-STORE sub-operations wait for the
    peer's C-STORE-RSPs, which were never read. It stalled for dimse_timeout and was aborted. Reading now
    goes on while we wait for the peer's responses: the C-GET completes, then the C-ECHO is answered."""

    async def main() -> None:
        async with archive_env(tmp_path, count=3, series=1) as env:
            sink = FolderStorage(tmp_path / "got")
            contexts, role_items = get_contexts("STUDY")
            contexts = [*contexts, (VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian])]
            rq = build_rq("VIEWER", "MINIPACS", contexts, env.settings(), roles=role_items)
            assoc = await connect(
                "127.0.0.1", env.server.port, rq, env.settings(), handler=sink.c_store, sink_factory=sink.sink_for
            )
            try:
                started = asyncio.get_running_loop().time()
                get = asyncio.ensure_future(c_get(assoc, "STUDY", study_key(env)))
                await asyncio.sleep(0)  # the C-GET-RQ goes out first
                status = await asyncio.wait_for(echo(assoc), TIMEOUTS.dimse * 2)
                result = await get
                assert (result.status, result.completed) == (0, 3)
                assert status == 0x0000
                assert asyncio.get_running_loop().time() - started < TIMEOUTS.dimse / 2
            finally:
                await assoc.release()

    asyncio.run(main())


def test_more_than_a_window_of_requests_past_it_during_a_c_get_is_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While we wait for the peer's responses we read on, so what the peer may pile up past its window is
    bounded: one window's worth (here 1, no window proposed) is held and answered (the test above), one
    request more gets an A-ABORT with the reason in the log."""

    async def main() -> None:
        async with archive_env(tmp_path, count=3, series=1) as env:
            sink = FolderStorage(tmp_path / "got")
            contexts, role_items = get_contexts("STUDY")
            contexts = [*contexts, (VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian])]
            rq = build_rq("VIEWER", "MINIPACS", contexts, env.settings(), roles=role_items)
            assoc = await connect(
                "127.0.0.1", env.server.port, rq, env.settings(), handler=sink.c_store, sink_factory=sink.sink_for
            )
            get = asyncio.ensure_future(c_get(assoc, "STUDY", study_key(env)))
            await asyncio.sleep(0)
            with caplog.at_level(logging.WARNING, logger="minipacs.net"):
                outcomes = await asyncio.wait_for(
                    asyncio.gather(get, echo(assoc), echo(assoc), return_exceptions=True), TIMEOUTS.dimse / 2
                )
            assert any(isinstance(o, Exception) for o in outcomes)
            await asyncio.wait_for(assoc.wait_closed(), TIMEOUTS.acse)
            assert any("past its Asynchronous Operations Window" in r.getMessage() for r in caplog.records)

    asyncio.run(main())


def test_relational_retrieve_is_agreed_and_served(tmp_path: Path) -> None:
    """PS3.4 C.5.2.1 / C.5.3.1: a requester proposing relational-retrieve (byte 1 = 1) for MOVE and GET is
    told yes, and then moves a series by its Series Instance UID alone (C.4.2.2.2.1). We serve such
    identifiers whatever was negotiated; the answer was missing, which says "not supported"."""
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation as PynetdicomExtended
    from pynetdicom.sop_class import (
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )

    classes = (StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelGet)

    def negotiate(port: int, identifier: Dataset) -> tuple[dict[str, bytes], list[int]]:
        ae = AE(ae_title="VIEWER")
        items = []
        for uid in classes:
            ae.add_requested_context(uid)
            item = PynetdicomExtended()
            item.sop_class_uid, item.service_class_application_information = uid, b"\x01"
            items.append(item)
        assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS", ext_neg=items)
        assert assoc.is_established
        try:
            agreed = {str(uid): bytes(info) for uid, info in assoc.acceptor.sop_class_extended.items()}
            statuses = [s.Status for s, _ in assoc.send_c_move(identifier, "DEST", classes[0])]
        finally:
            assoc.release()
        return agreed, statuses

    async def main() -> None:
        async with archive_env(tmp_path, count=4, series=2) as env:
            async with env.destination() as dest:
                series = Dataset()
                series.QueryRetrieveLevel = "SERIES"
                series.SeriesInstanceUID = env.series_uids[0]
                agreed, statuses = await asyncio.to_thread(negotiate, env.server.port, series)
                assert agreed == {uid: b"\x01" for uid in classes}
                assert statuses[-1] == 0
                assert len(received(dest.folder)) == 2

    asyncio.run(main())
