"""DICOM Audit Messages (PS3.15 A.5) over syslog (RFC 5424) to a collector the test starts on loopback:
UDP (RFC 5426) and TLS with octet counting (RFC 5425)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import audit_syslog, open_archive
from minipacs.config import ConfigError, Settings
from minipacs.core.atna import APPLICATION, EVENTS, MSGID, audit_message
from minipacs.core.audit import Action, ActorKind
from minipacs.core.model import Origin
from minipacs.net.tls import server_context
from tests.dicomgen import write_ct
from tests.peers import free_port
from tests.tls_certs import make_pki

BOM = b"\xef\xbb\xbf"


def _parse(message: bytes) -> tuple[list[str], ET.Element]:
    """RFC 5424 header fields and the XML after the BOM."""
    head, _, xml = message.partition(BOM)
    return head.decode("ascii").split(" "), ET.fromstring(xml)


def _role(participant: ET.Element) -> str | None:
    code = participant.find("RoleIDCode")  # an element without children is falsy: compare with None
    return None if code is None else code.get("csd-code")


def test_every_action_has_an_audit_event() -> None:
    assert set(EVENTS) == {a.value for a in Action}
    row = {
        "time": dt.datetime.now(dt.UTC), "actor_kind": "dicom", "actor": "VIEWER", "address": "10.0.0.9",
        "patient_id": "P<&>", "study_uid": "1.2.3", "detail": "C-GET STUDY",
    }  # fmt: skip
    for action, event in EVENTS.items():
        root = ET.fromstring(audit_message({**row, "action": action}, "MINIPACS"))
        ident = root.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") == event.action_code
        code = ident.find("EventID")
        assert code is not None and code.get("csd-code") == event.code and code.get("codeSystemName") == "DCM"
        objects = {o.get("ParticipantObjectTypeCode"): o.get("ParticipantObjectID") for o in root.iter(
            "ParticipantObjectIdentification")}  # fmt: skip
        assert objects == {"2": "1.2.3", "1": "P<&>"}  # the study, and the patient (escaped, read back whole)
        users = [p.get("UserID") for p in root.iter("ActiveParticipant")]
        assert users == (["MINIPACS", "VIEWER"] if action in APPLICATION else ["VIEWER", "MINIPACS"])


async def _events(tmp_path: Path, url: str, got: Callable[[], list[bytes]], **extra: Any) -> list[bytes]:
    settings = Settings(data_dir=tmp_path / "data", fsync=False, audit_syslog=url, **extra)
    archive = await open_archive(settings)
    sender = audit_syslog(settings)
    assert sender is not None
    archive.audit.forward.append(sender.submit)
    task = asyncio.ensure_future(sender.run())
    study = generate_uid()
    try:
        await archive.import_file(write_ct(tmp_path / "a.dcm", study_uid=study, patient_id="PID-S"), Origin("import"))
        archive.audit.record(
            Action.VIEWED, actor_kind=ActorKind.USER, actor="alice", address="10.1.1.1", study_uid=study
        )
        archive.audit.record(Action.RETRIEVED, actor_kind=ActorKind.DICOM, actor="PACS2", study_uid=study)
        await archive.audit.flush()
        for _ in range(300):
            if len(got()) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await archive.close()
    messages = got()
    assert len(messages) == 2
    for message in messages:
        fields, root = _parse(message)
        assert fields[0] == "<85>1" and fields[3] == "minipacs" and fields[5] == MSGID  # authpriv.notice
        assert root.tag == "AuditMessage"
        ids = {o.get("ParticipantObjectID") for o in root.iter("ParticipantObjectIdentification")}
        assert ids == {study, "PID-S"}  # the Patient ID, filled from the index when the row was written
    return messages


def test_udp(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Collector(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            received.append(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            messages = await _events(tmp_path, f"udp://127.0.0.1:{port}", lambda: received)
        finally:
            transport.close()
        codes = [_parse(m)[1].find("EventIdentification/EventID").get("csd-code") for m in messages]  # type: ignore[union-attr]
        assert codes == ["110103", "110104"]

    asyncio.run(main())


def test_tls_octet_counting(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    received: list[bytes] = []
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(str(writer.get_extra_info("peercert")))
        try:
            while True:
                length = await reader.readuntil(b" ")
                received.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        context = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca), require_client_cert=True)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            await _events(
                tmp_path,
                f"tls://127.0.0.1:{port}",
                lambda: received,
                audit_syslog_ca_file=str(pki.ca),
                tls_cert_file=str(pki.client.cert),
                tls_key_file=str(pki.client.key),
            )
        finally:
            server.close()
        assert "ECHOSCU" in peers[0]  # our client certificate was presented and checked

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"audit_syslog": "http://x:1"}, "udp://host:port or tls://host:port"),
        ({"audit_syslog": "tls://127.0.0.1:6514"}, "audit_syslog_ca_file"),
        ({"audit_syslog_queue": 0}, "audit_syslog_queue"),
    ],
)
def test_settings_refused(tmp_path: Path, extra: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings(data_dir=tmp_path, **extra).validate()
    Settings(data_dir=tmp_path, audit_syslog="udp://127.0.0.1:514", audit_syslog_queue=1).validate()


def test_a_full_queue_drops_the_oldest() -> None:
    from minipacs.services.audit_syslog import SyslogSender, parse_collector

    sender = SyslogSender(parse_collector("udp://127.0.0.1"), "MINIPACS", max_queue=2)
    assert sender.collector.port == 514
    sender.submit([{"n": 1}, {"n": 2}, {"n": 3}])
    assert [r["n"] for r in sender._queue] == [2, 3] and sender.dropped == 1
    with pytest.raises(ValueError, match="audit_syslog_ca_file"):
        SyslogSender(parse_collector("tls://h:6514"), "MINIPACS")
    assert ssl  # the TLS test above uses the standard library's ssl through net/tls.py


def test_serve_sends_application_start_logins_and_application_stop(tmp_path: Path) -> None:
    """A real ``minipacs serve`` with a UDP collector on loopback: Application Start once ready, a UI
    login accepted and one refused (User Authentication) over real HTTP, and Application Stop at
    SIGTERM, sent before serve returns (the sender is drained at close, not cancelled with rows queued)."""
    import os
    import signal
    import socket

    import httpx

    from minipacs import bootstrap
    from minipacs.core.audit import login_name
    from tests.web.test_auth import USERS

    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    http_port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        fsync=False,
        port=0,
        http_host="127.0.0.1",
        http_port=http_port,
        users=USERS,
        audit_syslog=f"udp://127.0.0.1:{collector.getsockname()[1]}",
        audit_flush_seconds=0.05,
    )
    logins: list[int] = []

    async def use_then_stop() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
            for password in ("a-pass", "wrong"):
                r = await client.post("/ui/login", json={"name": "ada", "password": password})
                logins.append(r.status_code)
            logins.append((await client.get("/api/audit")).status_code)  # the session of the first login
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop

    tasks: list[asyncio.Future[None]] = []
    try:
        asyncio.run(
            bootstrap.serve(settings, on_ready=lambda app: tasks.append(asyncio.ensure_future(use_then_stop())))
        )
        assert logins == [200, 401, 200]
        collector.settimeout(2)
        messages = [collector.recv(65535) for _ in range(5)]  # all sent before serve returned
    finally:
        collector.close()
    got = []
    for message in messages:
        fields, root = _parse(message)
        assert fields[0] == "<85>1" and fields[5] == MSGID
        ident = root.find("EventIdentification")
        assert ident is not None
        event, kind = ident.find("EventID"), ident.find("EventTypeCode")
        assert event is not None
        roles = [(p.get("UserID"), p.get("UserIsRequestor"), _role(p)) for p in root.iter("ActiveParticipant")]
        code = (event.get("csd-code"), None if kind is None else kind.get("csd-code"), ident.get("EventActionCode"))
        got.append((*code, ident.get("EventOutcomeIndicator"), roles))
    ae, me = settings.ae_title, login_name()
    assert got == [
        ("110100", "110120", "E", "0", [(ae, "false", "110150"), (me, "true", "110151")]),
        ("110114", "110122", "E", "0", [("ada", "true", None), (ae, "false", None)]),
        ("110114", "110122", "E", "4", [("ada", "true", None), (ae, "false", None)]),
        ("110101", None, "R", "0", [("ada", "true", None), (ae, "false", None)]),
        ("110100", "110121", "E", "0", [(ae, "false", "110150"), (me, "true", "110151")]),
    ], got


def test_drain_waits_for_the_queue_and_is_bounded(tmp_path: Path) -> None:
    """At shutdown the sender is drained before it is cancelled: every queued row reaches the collector;
    an unreachable collector costs at most the timeout."""
    import socket

    from minipacs.services.audit_syslog import SyslogSender, parse_collector

    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    row = {
        "time": dt.datetime.now(dt.UTC), "actor_kind": "cli", "actor": "root", "address": "", "action": "app_stop",
        "patient_id": "", "study_uid": "", "detail": "", "outcome": 0,
    }  # fmt: skip

    async def main() -> tuple[bool, bool]:
        sender = SyslogSender(parse_collector(f"udp://127.0.0.1:{collector.getsockname()[1]}"), "MINIPACS")
        task = asyncio.ensure_future(sender.run())
        sender.submit([row] * 50)
        drained = await sender.drain(5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        port = free_port()  # a TLS port nobody listens on
        stuck = SyslogSender(parse_collector(f"tls://127.0.0.1:{port}"), "MINIPACS", tls=ssl.create_default_context())
        task = asyncio.ensure_future(stuck.run())
        stuck.submit([row])
        started = asyncio.get_running_loop().time()
        timed_out = not await stuck.drain(0.3)
        assert asyncio.get_running_loop().time() - started < 1.5
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return drained, timed_out

    try:
        assert asyncio.run(main()) == (True, True)
        collector.settimeout(2)
        assert len([collector.recv(65535) for _ in range(50)]) == 50
    finally:
        collector.close()
