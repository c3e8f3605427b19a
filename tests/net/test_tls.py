"""DICOM TLS (PS3.15 B.1) between our own requestor and listener, on loopback: contexts, the
association log's TLS fields, and every refusal said in words without disturbing the others."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from minipacs.bootstrap import App, build_app
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.core.model import AssociationRecord
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.net.association import AssociationError, AssociationSettings, build_rq, connect
from minipacs.net.tls import (
    HANDSHAKE_REASONS,
    TLSConfigError,
    TLSInfo,
    client_context,
    describe_tls_error,
    server_context,
    subject_of,
    tls_info,
)
from minipacs.services.verification import echo
from tests.peers import free_port
from tests.tls_certs import Certificates, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------ contexts and words


def test_contexts_need_tls_1_2_and_check_the_chain(pki: Certificates) -> None:
    server = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca), require_client_cert=True)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    optional = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    assert optional.verify_mode == ssl.CERT_OPTIONAL  # a certificate that is sent is still checked
    client = client_context(str(pki.ca), str(pki.client.cert), str(pki.client.key))
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and not client.check_hostname


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda p: server_context("", ""), "needs a certificate (tls_cert_file)"),
        (lambda p: server_context(str(p.server.cert), str(p.server.key), "", True), "needs tls_ca_file"),
        (lambda p: server_context(str(p.server.cert) + ".nope", str(p.server.key)), "not found"),
        (lambda p: server_context(str(p.server.cert), str(p.client.key)), "are both PEM, unencrypted, and a pair?"),
        (lambda p: client_context(""), "calling a TLS node needs tls_ca_file"),
        (lambda p: client_context(str(p.client.key)), "cannot read the TLS CA file"),
    ],
)
def test_unusable_files_are_said_in_words(pki: Certificates, call: Any, words: str) -> None:
    with pytest.raises(TLSConfigError, match=r".*") as info:
        call(pki)
    assert words in str(info.value)


@pytest.mark.parametrize(("reason", "words"), sorted(HANDSHAKE_REASONS.items()))
def test_every_openssl_reason_has_words(reason: str, words: str) -> None:
    exc = ssl.SSLError(1, f"[SSL: {reason}] something")
    exc.reason = reason
    assert describe_tls_error(exc) == f"{words} [{reason}]"


def test_other_handshake_failures_in_words() -> None:
    verify = ssl.SSLCertVerificationError(1, "x")
    verify.verify_message = "unable to get local issuer certificate"
    assert describe_tls_error(verify) == "certificate unknown: unable to get local issuer certificate"
    assert describe_tls_error(TimeoutError()).startswith("no TLS handshake in time")
    slow = ConnectionAbortedError("SSL handshake is taking longer than 3.0 seconds: aborting the connection")
    assert describe_tls_error(slow).startswith("no TLS handshake in time")
    assert "closed during the TLS handshake" in describe_tls_error(ConnectionResetError())


def test_subject_of_a_peer_certificate() -> None:
    cert = {"subject": ((("organizationName", "Test Modality"),), (("commonName", "CT01"),))}
    assert subject_of(cert) == "CN=CT01,O=Test Modality"
    assert subject_of(None) == "" and subject_of({}) == ""


class _ResetSSLObject:
    """An ssl object whose peer alert arrived just as the connection was made."""

    def getpeercert(self) -> Any:
        raise ValueError("handshake not done yet")

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def version(self) -> str:
        return "TLSv1.3"


def test_tls_info() -> None:
    assert tls_info(None) is None  # plain TCP
    assert tls_info(_ResetSSLObject()) == TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "")


def test_tls_settings_from_the_environment_and_their_checks(pki: Certificates) -> None:
    env = {
        "MINIPACS_TLS_PORT": "2762",
        "MINIPACS_TLS_CERT_FILE": str(pki.server.cert),
        "MINIPACS_TLS_KEY_FILE": str(pki.server.key),
        "MINIPACS_TLS_CA_FILE": str(pki.ca),
        "MINIPACS_TLS_REQUIRE_CLIENT_CERT": "yes",
    }
    settings = load_settings(env=env)
    assert (settings.tls_port, settings.tls_require_client_cert, settings.tls_ca_file) == (2762, True, str(pki.ca))
    assert Settings().tls_port == 0  # off by default
    with pytest.raises(ConfigError, match="tls_port needs tls_cert_file and tls_key_file"):
        load_settings(env={"MINIPACS_TLS_PORT": "2762"})
    with pytest.raises(ConfigError, match="tls_require_client_cert needs tls_ca_file"):
        load_settings(env={**env, "MINIPACS_TLS_CA_FILE": ""})
    with pytest.raises(ConfigError, match="tls_port 11112 is also the plain DICOM port"):
        load_settings(env={**env, "MINIPACS_TLS_PORT": "11112"})
    with pytest.raises(ConfigError, match="outside 0..65535"):
        load_settings(env={**env, "MINIPACS_TLS_PORT": "70000"})


def test_unreadable_tls_files_stop_the_start(tmp_path: Path, pki: Certificates) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=0, tls_port=0, fsync=False)
    bad = dataclasses.replace(
        settings, tls_port=1, tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file=str(pki.server.key)
    )
    with pytest.raises(ConfigError, match="TLS certificate or key file not found"):
        asyncio.run(build_app(bad))


# ------------------------------------------------------------------ on the wire


@asynccontextmanager
async def serving(tmp_path: Path, pki: Certificates, **settings: Any) -> AsyncIterator[App]:
    base = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        tls_port=free_port(),
        ae_title="MINIPACS",
        fsync=False,
        acse_timeout=3.0,
        dimse_timeout=5.0,
        tls_cert_file=str(pki.server.cert),
        tls_key_file=str(pki.server.key),
        tls_ca_file=str(pki.ca),
    )
    app = await build_app(dataclasses.replace(base, **settings))
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


async def tls_echo(port: int, context: ssl.SSLContext | None, *, tls: bool = True) -> int:
    settings = AssociationSettings(ae_title="ECHOSCU", tls_context=context)
    rq = build_rq("ECHOSCU", "MINIPACS", [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings, connect_timeout=5, tls=tls)
    try:
        assert assoc.tls is not None and assoc.tls.version in ("TLSv1.2", "TLSv1.3")
        assert assoc.tls.peer_subject == "CN=minipacs,O=minipacs tests"
        return await echo(assoc)
    finally:
        await assoc.release()


async def association_log(app: App, count: int) -> list[AssociationRecord]:
    for _ in range(100):  # written when each association ends
        records = await app.archive.list_associations(20)
        if len(records) >= count:
            return records
        await asyncio.sleep(0.05)
    return await app.archive.list_associations(20)


def warnings_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_our_requestor_and_listener_over_tls(tmp_path: Path, pki: Certificates) -> None:
    client = client_context(str(pki.ca), str(pki.client.cert), str(pki.client.key))

    async def main() -> tuple[int, list[AssociationRecord]]:
        async with serving(tmp_path, pki, tls_require_client_cert=True) as app:
            status = await tls_echo(app.dicom.tls_port, client)
            return status, await association_log(app, 1)

    status, records = asyncio.run(main())
    assert status == 0
    assert records[0].accepted and records[0].tls in ("TLSv1.2", "TLSv1.3")
    assert records[0].tls_peer == "CN=ECHOSCU,O=Test Modality"


def test_refusals_are_said_in_words_and_do_not_disturb_others(
    tmp_path: Path, pki: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    good = client_context(str(pki.ca), str(pki.client.cert), str(pki.client.key))
    no_cert = client_context(str(pki.ca))
    stranger = client_context(str(pki.ca), str(pki.stranger.cert), str(pki.stranger.key))

    async def main() -> tuple[list[str], list[int], list[AssociationRecord], int]:
        async with serving(tmp_path, pki, tls_require_client_cert=True) as app:
            port = app.dicom.tls_port
            # one good association stays open while the others fail around it
            settings = AssociationSettings(ae_title="ECHOSCU", tls_context=good)
            rq = build_rq("ECHOSCU", "MINIPACS", [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
            survivor = await connect("127.0.0.1", port, rq, settings, connect_timeout=5, tls=True)
            errors: list[str] = []
            for context, tls in ((no_cert, True), (stranger, True), (None, False)):
                try:
                    await tls_echo(port, context, tls=tls)
                    errors.append("accepted")
                except AssociationError as exc:
                    errors.append(str(exc))
            statuses = [await echo(survivor), await tls_echo(port, good)]
            await survivor.release()
            plain = await plain_echo(app.dicom.port)
            return errors, statuses, await association_log(app, 6), plain

    errors, statuses, records, plain = asyncio.run(main())
    assert statuses == [0, 0] and plain == 0
    # TLS 1.3: the server judges our certificate after our side of the handshake ended
    assert all(
        "may require a client certificate we did not send or do not have signed by its CA" in e for e in errors[:2]
    )
    assert errors[2] == "connection closed by peer"  # plain DICOM to the TLS port
    words = warnings_of(caplog)
    assert "client from 127.0.0.1:" in words and "failed the TLS handshake" in words
    assert "no certificate presented, and we require one (tls_require_client_cert)" in words
    assert "failed the TLS handshake: certificate unknown: unable to get local issuer certificate" in words
    assert "the peer did not speak TLS (plain DICOM on the TLS port?)" in words
    failed = [r for r in records if r.tls == "failed"]
    assert len(failed) == 3 and all(
        not r.accepted and r.reject_reason.startswith("TLS handshake failed: ") for r in failed
    )
    assert any(r.accepted and r.tls == "" for r in records)  # the plain port is not TLS


async def plain_echo(port: int) -> int:
    settings = AssociationSettings(ae_title="ECHOSCU")
    rq = build_rq("ECHOSCU", "MINIPACS", [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings, connect_timeout=5)
    try:
        assert assoc.tls is None
        return await echo(assoc)
    finally:
        await assoc.release()


def test_tls_to_a_plain_port_and_without_client_settings(tmp_path: Path, pki: Certificates) -> None:
    client = client_context(str(pki.ca))

    async def main() -> list[str]:
        async with serving(tmp_path, pki) as app:
            out = []
            for context in (client, None):
                with pytest.raises(AssociationError) as info:
                    await tls_echo(app.dicom.port, context)
                out.append(str(info.value))
            return out

    to_plain, unconfigured = asyncio.run(main())
    assert "TLS handshake with 127.0.0.1:" in to_plain and "failed" in to_plain
    assert "no TLS client settings are configured (set tls_ca_file" in unconfigured


def test_a_client_silent_after_connecting_is_closed_after_the_acse_timeout(
    tmp_path: Path, pki: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def main() -> tuple[bytes, int]:
        async with serving(tmp_path, pki, acse_timeout=0.5) as app:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.dicom.tls_port)
            async with asyncio.timeout(5):
                left = await reader.read()  # the server hangs up
            writer.close()
            status = await tls_echo(app.dicom.tls_port, client_context(str(pki.ca)))
            return left, status

    left, status = asyncio.run(main())
    assert left == b"" and status == 0
    assert "failed the TLS handshake: no TLS handshake in time" in warnings_of(caplog)
