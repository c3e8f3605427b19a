"""`minipacs doctor`: active checks of one DICOM node, step by step, each timed and worded.

1. the name resolves and TCP connects (refused / timed out / reset / unreachable);
6. TLS (for nodes registered with TLS, run right after step 1 since the association needs it):
   handshake, the certificate chain as our CA file sees it, the days left;
2. an association as our AE title to its AE title: accepted, or rejected with PS3.8 Table 9-21's
   reason in words and the fix;
3. C-ECHO (PS3.4 A.4) a few times: the round trip, and the ~40 ms signature of Nagle's
   algorithm meeting delayed ACKs;
4. what it accepts: the Q/R models (PS3.4 C.6), the worklist (K.6.1) and the storage classes and
   transfer syntaxes we would send, one presentation context per pair (PS3.8 9.3.2.2);
5. the way back (opt-in): a C-MOVE (C.4.2) of one instance from the node to us, watching whether
   the sub-association reaches us, from which address and under which calling AE title; or a
   C-STORE (B.2) of a test object that says what it is.

The checks stop at the first failure, whose verdict carries the likely cause and the fix. All
network traffic goes through the ONE outbound path (services/outbound.py), except the raw TCP
connect of step 1 and the TLS handshake of step 6, which look beneath the association on purpose.
The words are in services/doctor_verdicts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from minipacs.core.model import AssociationRecord
from minipacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MODALITY_WORKLIST_FIND,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION_SOP_CLASS,
    uid_name,
)
from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES
from minipacs.net.association import AssociationRejected
from minipacs.net.tls import TLSConfigError, crl_warnings, current_context_async, read_crl_file
from minipacs.services import doctor_verdicts as words
from minipacs.services.outbound import (
    QR_SYNTAXES,
    Address,
    FindRequest,
    NoAssociation,
    Outbound,
    OutboundError,
    Peer,
    RetrieveRequest,
)
from minipacs.services.retrieve_scu import RECEIVABLE_SYNTAXES
from minipacs.services.status import (
    MOVE,
    MOVE_DESTINATION_UNKNOWN,
    SUBOPS_ALL_FAILED,
    SUBOPS_SOME_FAILED,
    describe,
    is_success,
    is_warning,
)
from minipacs.services.storage_scu import read_sendable

#: Outcomes of a step.
OK: Final = "ok"
WARNING: Final = "warning"
FAILED: Final = "failed"

#: Round trips in this window (ms) are the Nagle/delayed-ACK signature (delayed ACK timers are 40 ms on
#: Linux, up to 200 ms on Windows; a LAN round trip is well under a millisecond).
NAGLE_WINDOW_MS: Final = (30.0, 60.0)

#: The storage classes step 4 asks about: the image classes a site sends most.
_PROBE_CLASS_NAMES: Final = (
    "CT Image Storage",
    "MR Image Storage",
    "Computed Radiography Image Storage",
    "Digital X-Ray Image Storage - For Presentation",
    "Digital Mammography X-Ray Image Storage - For Presentation",
    "Ultrasound Image Storage",
    "Ultrasound Multi-frame Image Storage",
    "Secondary Capture Image Storage",
    "X-Ray Angiographic Image Storage",
    "Nuclear Medicine Image Storage",
    "Positron Emission Tomography Image Storage",
    "Enhanced CT Image Storage",
    "Enhanced MR Image Storage",
    "Grayscale Softcopy Presentation State Storage",
    "Basic Text SR Storage",
    "Encapsulated PDF Storage",
)
_BY_NAME: Final = {name: uid for uid, name in STORAGE_SOP_CLASSES.items()}
PROBE_STORAGE_CLASSES: Final = tuple(_BY_NAME[name] for name in _PROBE_CLASS_NAMES)
#: The transfer syntaxes step 4 asks about for each class: the uncompressed ones and the usual compressions.
PROBE_SYNTAXES: Final = tuple(RECEIVABLE_SYNTAXES[:7])
#: The query/retrieve models (and the worklist) step 4 asks about.
PROBE_MODELS: Final = (
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    STUDY_ROOT_GET,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    PATIENT_ROOT_GET,
    MODALITY_WORKLIST_FIND,
)
_QR_SHORT: Final = {
    STUDY_ROOT_FIND: "Study Root C-FIND",
    STUDY_ROOT_MOVE: "Study Root C-MOVE",
    STUDY_ROOT_GET: "Study Root C-GET",
    PATIENT_ROOT_FIND: "Patient Root C-FIND",
    PATIENT_ROOT_MOVE: "Patient Root C-MOVE",
    PATIENT_ROOT_GET: "Patient Root C-GET",
    MODALITY_WORKLIST_FIND: "Modality Worklist",
}


# ------------------------------------------------------------------ results


@dataclass
class Step:
    """One step: its number in the issue's order, what it checks, the outcome, the time, the words."""

    number: int
    name: str
    outcome: str  # OK, WARNING, FAILED
    ms: float
    verdict: str
    cause: str = ""
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 1)}


@dataclass
class NodeReport:
    ae_title: str
    host: str
    port: int
    tls: bool
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.outcome != FAILED for s in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.outcome == FAILED), None)

    @property
    def warnings(self) -> list[Step]:
        return [s for s in self.steps if s.outcome == WARNING]

    def label(self) -> str:
        return f"{self.ae_title!r} at {self.host}:{self.port}"

    def json(self) -> dict[str, Any]:
        return {
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "ok": self.ok,
            "steps": [s.json() for s in self.steps],
        }


class _Stop(Exception):
    """A step failed: the checks end here."""


# ------------------------------------------------------------------ who came back (step 5)


@dataclass(frozen=True)
class Arrival:
    """An association that reached us: who called, from where, how many C-STOREs it carried."""

    calling_ae: str
    host: str
    stored: int
    started: dt.datetime


class ArrivalWatch(Protocol):
    """Tells step 5 which associations reached our listener since a moment."""

    async def since(self, moment: dt.datetime) -> list[Arrival]: ...


def arrivals_of(records: Sequence[AssociationRecord], moment: dt.datetime) -> list[Arrival]:
    """The associations we accepted that started at or after ``moment`` (an association log read)."""
    found = []
    for rec in records:
        if rec.role != "acceptor" or rec.started_at < moment:
            continue
        stored = sum(1 for op in rec.operations if op.get("op") == "C-STORE" and op.get("outcome") != "failed")
        found.append(Arrival(rec.calling_aet, rec.peer_host, stored, rec.started_at))
    return found


class LogWatch:
    """Arrivals read from the association log of a running archive (``read``: the latest records)."""

    def __init__(self, read: Callable[[], Awaitable[list[AssociationRecord]]]) -> None:
        self.read = read

    async def since(self, moment: dt.datetime) -> list[Arrival]:
        return arrivals_of(await self.read(), moment)


class CatchListener:
    """A listener of our own on our AE title and port, for when the archive is not running: it accepts
    the C-STOREs of the C-MOVE test into a temporary folder, deleted afterwards, and remembers who came."""

    def __init__(self, ae_title: str, host: str, port: int) -> None:
        self.ae_title, self.host, self.port = ae_title, host, port
        self.records: list[AssociationRecord] = []

    async def _log(self, rec: AssociationRecord) -> None:
        self.records.append(rec)

    async def since(self, moment: dt.datetime) -> list[Arrival]:
        return arrivals_of(self.records, moment)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CatchListener]:
        """Listening for the body; raises OSError when the port is taken."""
        from minipacs.services.retrieve_scu import FolderStorage
        from minipacs.services.server import DicomServer

        with tempfile.TemporaryDirectory(prefix="minipacs-doctor-") as folder:
            server = DicomServer(
                self.ae_title,
                [FolderStorage(Path(folder))],
                host=self.host,
                port=self.port,
                association_logger=self._log,
            )
            await server.start()
            try:
                yield self
            finally:
                await server.close(grace=2.0)


# ------------------------------------------------------------------ the checks


@dataclass(frozen=True)
class DoctorSettings:
    """Who we are to the node (``port``: the one it must have registered for us) and the limits."""

    ae_title: str
    port: int
    connect_timeout: float = 15.0
    echo_count: int = 3
    move_wait: float = 10.0  # how long step 5 waits for images after the C-MOVE response
    tls_warn_days: int = 30
    local_host: str | None = None


class Doctor:
    """The active checks for one node at a time (nodes in parallel need one Doctor each or none:
    it keeps no state between :meth:`check` calls)."""

    def __init__(self, outbound: Outbound, settings: DoctorSettings, arrivals: ArrivalWatch | None = None) -> None:
        self.outbound = outbound
        self.settings = settings
        self.arrivals = arrivals

    async def check(self, node: Peer, *, move_test: bool = False, store_test: bool = False) -> NodeReport:
        report = NodeReport(node.ae_title, node.host, node.port, node.tls)
        try:
            tcp = await self._step(report, 1, "connect", self._connect(node))
            us = words.us(str(tcp.get("local_address", "")), self.settings.port)
            seen_at = str(tcp.get("address", ""))
            if node.tls:
                await self._step(report, 6, "tls", self._tls(node))
            await self._step(report, 2, "associate", self._associate(node, us))
            await self._step(report, 3, "echo", self._echo(node, us))
            await self._step(report, 4, "accepts", self._accepts(node, us))
            if move_test:
                await self._step(report, 5, "way back (C-MOVE)", self._move_back(node, us, seen_at))
            if store_test:
                await self._step(report, 5, "way there (C-STORE)", self._store_test(node))
        except _Stop:
            pass
        return report

    async def _step(self, report: NodeReport, number: int, name: str, work: Awaitable[Step]) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            step = await work
        except Exception as exc:  # noqa: BLE001 - a check that broke is itself a finding
            step = Step(
                number,
                name,
                FAILED,
                0.0,
                f"the check itself failed: {exc}",
                "an unexpected answer from the node",
                "run with -d for the details",
            )
        step.number, step.name = number, name
        if not step.ms:
            step.ms = (time.perf_counter() - start) * 1000
        report.steps.append(step)
        if step.outcome == FAILED:
            raise _Stop
        return step.details

    # -------------------------------------------------------------- step 1

    async def _connect(self, node: Peer) -> Step:
        host, port, timeout = node.host, node.port, self.settings.connect_timeout
        start = time.perf_counter()
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return _failed(words.unresolved(host, exc.strerror or str(exc)))
        address = str(infos[0][4][0])
        local = (self.settings.local_host, 0) if self.settings.local_host else None
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout)
        except TimeoutError:
            return _failed(words.timed_out(host, port, timeout))
        except ConnectionRefusedError:
            return _failed(words.refused(host, port, node.ae_title))
        except ConnectionResetError:
            return _failed(words.reset(host, port))
        except OSError as exc:  # EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL (our --bind address) ...
            return _failed(words.unreachable(host, port, exc.strerror or str(exc)))
        ms = (time.perf_counter() - start) * 1000
        local = writer.get_extra_info("sockname")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        details = {"address": address, "local_address": str(local[0]) if local else ""}
        return Step(0, "", OK, ms, words.connected(host, port, address), details=details)

    # -------------------------------------------------------------- step 6 (TLS)

    async def _tls(self, node: Peer) -> Step:
        configured = self.outbound.settings.association.tls_context
        if configured is None:
            return _failed(words.TLS_NOT_CONFIGURED)
        context = await current_context_async(configured)
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(node.host, node.port, ssl=context, server_hostname=node.host),
                self.settings.connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            return _failed(words.tls_failed(exc.verify_message or str(exc)))
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            return _failed(words.tls_failed(str(exc) or type(exc).__name__))
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            cert = writer.get_extra_info("peercert") or {}
            version = ssl_object.version() if ssl_object is not None else "TLS"
        finally:
            writer.transport.abort()  # no TLS close_notify exchange: the peer waits for an association request
        subject = ", ".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
        issuer = ", ".join("=".join(pair) for rdn in cert.get("issuer", ()) for pair in rdn)
        not_after = cert.get("notAfter", "")
        days = -1
        if not_after:
            expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
            days = (expires - dt.datetime.now(dt.UTC)).days
        details = {"version": version, "subject": subject, "issuer": issuer, "not_after": not_after, "days_left": days}
        if 0 <= days < self.settings.tls_warn_days:
            w = words.tls_expiring(subject, days)
            return Step(0, "", WARNING, 0.0, w.verdict, w.cause, w.fix, details)
        return Step(0, "", OK, 0.0, words.tls_ok(version, subject, days), details=details)

    # -------------------------------------------------------------- step 2

    async def _associate(self, node: Peer, us: str) -> Step:
        try:
            async with self.outbound.session(node, [(VERIFICATION_SOP_CLASS, QR_SYNTAXES)]) as assoc:
                ok = assoc.context_for(VERIFICATION_SOP_CLASS) is not None
        except NoAssociation as exc:
            cause = exc.__cause__
            if isinstance(cause, AssociationRejected):
                rj = cause.rj
                w = words.rejected(
                    rj.source,
                    rj.reason,
                    rj.result == 1,
                    ours=self.outbound.ae_title,
                    us=us,
                    theirs=node.ae_title,
                    host=node.host,
                    wire=str(exc),
                )
                return _failed(w, {"result": rj.result, "source": rj.source, "reason": rj.reason})
            return _failed(words.association_failed(str(exc), ours=self.outbound.ae_title, us=us))
        return Step(0, "", OK, 0.0, words.accepted(node.ae_title, self.outbound.ae_title), details={"verification": ok})

    # -------------------------------------------------------------- step 3

    async def _echo(self, node: Peer, us: str) -> Step:
        try:
            responses = await self.outbound.echo(node, repeat=self.settings.echo_count)
        except OutboundError as exc:
            if "Verification" in str(exc):
                w = words.ECHO_NOT_ACCEPTED
                return Step(0, "", WARNING, 0.0, w.verdict, w.cause, w.fix)
            return _failed(words.association_failed(str(exc), ours=self.outbound.ae_title, us=us))
        bad = next((r for r in responses if r.status != 0), None)
        if bad is not None:
            text = describe(bad.status) if bad.status >= 0 else "no response"
            return _failed(words.echo_refused(text + (f" ({bad.error_comment})" if bad.error_comment else "")))
        times = [r.ms for r in responses]
        median = sorted(times)[len(times) // 2]
        details = {"round_trips_ms": [round(t, 2) for t in times], "median_ms": round(median, 2)}
        low, high = NAGLE_WINDOW_MS
        if low <= median <= high:
            w = words.nagle(median)
            return Step(0, "", WARNING, 0.0, w.verdict, w.cause, w.fix, details)
        return Step(0, "", OK, 0.0, words.echo_ok(times), details=details)

    # -------------------------------------------------------------- step 4

    async def _accepts(self, node: Peer, us: str) -> Step:
        contexts: list[tuple[str, Sequence[str]]] = [(uid, QR_SYNTAXES) for uid in PROBE_MODELS]
        for uid in PROBE_STORAGE_CLASSES:
            contexts += [(uid, [ts]) for ts in PROBE_SYNTAXES]
        models: list[str] = []
        storage: dict[str, list[str]] = {}
        try:
            async with self.outbound.session(node, contexts) as assoc:
                for ctx in assoc.contexts.values():
                    if ctx.abstract_syntax in _QR_SHORT:
                        models.append(ctx.abstract_syntax)
                    else:
                        storage.setdefault(ctx.abstract_syntax, []).append(ctx.transfer_syntax)
        except OutboundError as exc:
            if isinstance(exc.__cause__, AssociationRejected):  # step 2 was accepted: it is these contexts
                w = words.NOTHING_ACCEPTED
                return _failed(words.Words(f"{w.verdict} ({exc})", w.cause, w.fix))
            return _failed(words.association_failed(str(exc), ours=self.outbound.ae_title, us=us))
        models = [uid for uid in PROBE_MODELS if uid in models]
        details = {
            "models": [_QR_SHORT[uid] for uid in models],
            "storage": {
                uid_name(uid): [uid_name(ts) for ts in PROBE_SYNTAXES if ts in storage[uid]]
                for uid in PROBE_STORAGE_CLASSES
                if uid in storage
            },
            "storage_refused": [uid_name(uid) for uid in PROBE_STORAGE_CLASSES if uid not in storage],
            "qr_node": any(uid in models for uid in (STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE)),
        }
        if not models and not storage:
            return _failed(words.NOTHING_ACCEPTED, details)
        compressed = sorted(
            {
                ts
                for got in storage.values()
                for ts in got
                if ts not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
            }
        )
        parts = [
            "query/retrieve: " + (", ".join(_QR_SHORT[uid] for uid in models) if models else "none"),
            f"storage: {len(storage)} of {len(PROBE_STORAGE_CLASSES)} image/document classes",
            "compressed syntaxes: " + (", ".join(uid_name(ts) for ts in compressed) if compressed else "none"),
        ]
        return Step(0, "", OK, 0.0, "the node accepts " + "; ".join(parts), details=details)

    # -------------------------------------------------------------- step 5

    async def _one_instance(self, node: Peer) -> tuple[str, str, str] | None:
        """(study, series, instance) of one instance on the node, by C-FIND down the Study Root levels."""
        study = await self.outbound.query(
            node, FindRequest.build({"StudyInstanceUID": ""}, level="STUDY"), cancel_after=1
        )
        for match in study.matches:
            st = str(match.get("StudyInstanceUID", "") or "")
            series = await self.outbound.query(
                node,
                FindRequest.build({"StudyInstanceUID": st, "SeriesInstanceUID": ""}, level="SERIES"),
                cancel_after=1,
            )
            for sm in series.matches:
                se = str(sm.get("SeriesInstanceUID", "") or "")
                images = await self.outbound.query(
                    node,
                    FindRequest.build(
                        {"StudyInstanceUID": st, "SeriesInstanceUID": se, "SOPInstanceUID": ""}, level="IMAGE"
                    ),
                    cancel_after=1,
                )
                for im in images.matches:
                    uid = str(im.get("SOPInstanceUID", "") or "")
                    if uid:
                        return st, se, uid
        return None

    async def _move_back(self, node: Peer, us: str, node_address: str) -> Step:
        """Arrivals count when they call as the node's title or come from its address: other traffic
        reaching a running archive, or other nodes checked in parallel, are not this node's images."""
        ours = self.outbound.ae_title
        if self.arrivals is None:
            w = words.move_no_instance("nothing here can watch for the images coming back")
            return _failed(w)
        try:
            found = await self._one_instance(node)
        except OutboundError as exc:
            return _failed(words.move_no_instance(f"C-FIND failed: {exc}"))
        if found is None:
            return _failed(words.move_no_instance("the node lists no instance"))
        study, series, instance = found
        request = RetrieveRequest.build(
            {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance}, level="IMAGE"
        )
        moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        start = time.perf_counter()
        try:
            result = await self.outbound.retrieve(node, request, method="move", destination=ours)
        except OutboundError as exc:
            return _failed(words.move_refused(str(exc), ""))
        details: dict[str, Any] = {
            "instance": instance,
            "status": result.status,
            "status_text": describe(result.status, MOVE) if result.status >= 0 else "no response",
            "completed": result.completed,
            "failed": result.failed,
        }
        came: list[Arrival] = []
        deadline = time.perf_counter() + self.settings.move_wait
        while True:
            came = [
                a
                for a in await self.arrivals.since(moment)
                if a.calling_ae.strip() == node.ae_title or a.host in (node_address, node.host)
            ]
            if any(a.stored for a in came) or time.perf_counter() >= deadline:
                break
            refused = result.status >= 0 and not is_success(result.status) and not is_warning(result.status)
            if refused and time.perf_counter() >= start + 2.0:  # a failure status: nothing is on its way
                break
            await asyncio.sleep(0.2)
        details["arrivals"] = [
            {"calling_ae": a.calling_ae, "host": a.host, "stored": a.stored, "started": a.started.isoformat()}
            for a in came
        ]
        stored = [a for a in came if a.stored]
        if stored:
            a = stored[0]
            text = words.move_arrived(a.calling_ae, a.host, sum(x.stored for x in stored), time.perf_counter() - start)
            if a.calling_ae.strip() != node.ae_title:
                return Step(
                    0, "", WARNING, 0.0, text, words.move_other_caller(a.calling_ae, node.ae_title), "", details
                )
            return Step(0, "", OK, 0.0, text, details=details)
        status_text = details["status_text"]
        if result.status == MOVE_DESTINATION_UNKNOWN:
            return _failed(words.move_destination_unknown(ours, us), details)
        if result.failed or result.status in (SUBOPS_ALL_FAILED, SUBOPS_SOME_FAILED):
            return _failed(words.move_failed_nothing_arrived(status_text, ours, us), details)
        if is_success(result.status) or is_warning(result.status):
            return _failed(words.move_success_nothing_arrived(self.settings.move_wait, ours, us), details)
        return _failed(words.move_refused(status_text, result.error_comment), details)

    async def _store_test(self, node: Peer) -> Step:
        with tempfile.TemporaryDirectory(prefix="minipacs-doctor-") as folder:
            path = Path(folder) / "test.dcm"
            await asyncio.to_thread(write_test_object, path, self.outbound.ae_title)
            instance = read_sendable(path)
            try:
                result = await self.outbound.send(node, [instance])
            except OutboundError as exc:
                return _failed(words.store_refused(str(exc)))
        if result.failed:
            outcome = result.failed[0]
            return _failed(
                words.store_refused(outcome.reason or "refused"), {"sop_instance": instance.sop_instance_uid}
            )
        return Step(
            0, "", OK, 0.0, words.store_ok("0x0000 Success"), details={"sop_instance": instance.sop_instance_uid}
        )


def _failed(w: words.Words, details: dict[str, Any] | None = None) -> Step:
    return Step(0, "", FAILED, 0.0, w.verdict, w.cause, w.fix, details or {})


#: The test object's Patient and Study, so that nobody takes it for a patient's image.
TEST_PATIENT_NAME: Final = "MINIPACS^CONNECTIVITY TEST"
TEST_PATIENT_ID: Final = "MINIPACS-DOCTOR-TEST"
TEST_DESCRIPTION: Final = "minipacs doctor test object: not a patient, safe to delete"


def write_test_object(path: Path, ae_title: str) -> None:
    """A Secondary Capture (PS3.3 A.8.1) of 8x8 grey pixels whose names say what it is."""
    sc = _BY_NAME["Secondary Capture Image Storage"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sc)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sc
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    now = dt.datetime.now()
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientName = TEST_PATIENT_NAME
    ds.PatientID = TEST_PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "DOCTOR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = TEST_DESCRIPTION
    ds.SeriesDescription = f"sent by {ae_title}"
    ds.ImageComments = TEST_DESCRIPTION
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(0, 256, 4))
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------ the site


@dataclass
class ListenerReport:
    """One of our own listeners: does it answer (TCP, and C-ECHO for the DICOM ones)?"""

    name: str
    host: str
    port: int
    ok: bool
    ms: float
    verdict: str
    cause: str = ""
    fix: str = ""

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 1)}


async def check_listener(
    doctor: Doctor, name: str, host: str, port: int, *, dicom: bool, tls: bool = False
) -> ListenerReport:
    """Connect to our own ``name`` listener (``host`` 0.0.0.0 / :: as loopback); a DICOM one is C-ECHOed as well."""
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    me = Address(doctor.outbound.ae_title, target, port, tls)  # our own listener, by address
    start = time.perf_counter()
    step = await doctor._connect(me)
    if step.outcome == FAILED:
        w = words.listener_down(name, target, port)
        return ListenerReport(name, target, port, False, step.ms, w.verdict + f" ({step.verdict})", w.cause, w.fix)
    if dicom and not tls:
        echo = await doctor._echo(me, words.us(target, port))
        if echo.outcome == FAILED:
            return ListenerReport(
                name, target, port, False, (time.perf_counter() - start) * 1000, echo.verdict, echo.cause, echo.fix
            )
        return ListenerReport(
            name, target, port, True, (time.perf_counter() - start) * 1000, f"our {name} answers: {echo.verdict}"
        )
    return ListenerReport(name, target, port, True, step.ms, f"our {name} accepts connections on port {port}")


#: How far ahead the doctor warns of a CRL's nextUpdate (CAs publish every few days; a cron job fetches).
CRL_WARN_AHEAD: Final = dt.timedelta(days=1)


def check_crl_file(crl_file: str, now: dt.datetime | None = None) -> ListenerReport:
    """``tls_crl_file`` (net/tls.py): readable, and no CRL out of date or due within CRL_WARN_AHEAD (past
    its nextUpdate, every TLS peer of that CA is refused)."""
    name = "TLS CRL file"
    try:
        crls = read_crl_file(crl_file)
    except TLSConfigError as exc:
        return ListenerReport(name, "", 0, False, 0.0, str(exc), fix=words.CRL_FIX)
    said = crl_warnings(crls, crl_file, now, soon=CRL_WARN_AHEAD)
    if said:
        return ListenerReport(name, "", 0, False, 0.0, said[0], words.CRL_CAUSE, words.CRL_FIX)
    due = min((c.next_update for c in crls if c.next_update is not None), default=None)
    when = f"; the next is due {due:%Y-%m-%d %H:%M} UTC" if due is not None else ""
    return ListenerReport(name, "", 0, True, 0.0, f"{len(crls)} CRL(s) in {crl_file}, none due within a day{when}")


async def check_nodes(
    doctor: Doctor, nodes: Sequence[Peer], parallel: int, *, move_test: bool = False, store_test: bool = False
) -> list[NodeReport]:
    """Every node, at most ``parallel`` at once; the reports in the order of ``nodes``."""
    gate = asyncio.Semaphore(max(parallel, 1))

    async def one(node: Peer) -> NodeReport:
        async with gate:
            return await doctor.check(node, move_test=move_test, store_test=store_test)

    return list(await asyncio.gather(*(one(n) for n in nodes)))


__all__ = [
    "FAILED",
    "OK",
    "WARNING",
    "Arrival",
    "ArrivalWatch",
    "CatchListener",
    "Doctor",
    "DoctorSettings",
    "ListenerReport",
    "LogWatch",
    "NodeReport",
    "Step",
    "arrivals_of",
    "check_crl_file",
    "check_listener",
    "check_nodes",
    "write_test_object",
]
