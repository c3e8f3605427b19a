"""Certificate revocation for DICOM TLS (PS3.15 B.1 peers authenticated by certificate; RFC 5280 5 and
6.3): ``tls_crl_file`` holds the CRLs of the CAs in ``tls_ca_file``; a revoked peer certificate fails the
handshake on our listener and when we call a node, the file is followed without a restart, and every
way it can go wrong is said in words."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from pathlib import Path

import pytest

from minipacs.bootstrap import build_app
from minipacs.config import ConfigError, Settings
from minipacs.net.association import AssociationError
from minipacs.net.tls import (
    REVOCATION_WORDS,
    ReloadingContext,
    TLSConfigError,
    client_context,
    crl_warnings,
    current_context,
    describe_tls_error,
    read_crl_file,
    server_context,
)
from tests.net.test_tls import serving, tls_echo, warnings_of
from tests.tls_certs import Certificates, make_pki, write_crl


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client(pki: Certificates, *, revoked: bool) -> ssl.SSLContext:
    """``pki.client`` is the one the tests revoke; the server certificate, also made for client
    authentication, is the good client."""
    pair = pki.client if revoked else pki.server
    return current_context(client_context(str(pki.ca), str(pair.cert), str(pair.key)))


# ------------------------------------------------------------------ the file


def test_the_crls_of_a_file_are_read_with_their_dates(tmp_path: Path, pki: Certificates) -> None:
    start = dt.datetime(2026, 12, 1, 8, 0, 0, tzinfo=dt.UTC)
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.client.cert,), this_update=start)
    later = dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # from 2050 on: GeneralizedTime (RFC 5280 5.1.2.4)
    write_crl(pki, crl, this_update=later, next_update=dt.timedelta(days=30), append=True)
    first, second = read_crl_file(str(crl))
    assert (first.number, first.this_update, first.next_update) == (1, start, start + dt.timedelta(days=7))
    assert (second.number, second.this_update, second.next_update) == (2, later, later + dt.timedelta(days=30))
    assert crl_warnings([first, second], "crl.pem", now=start + dt.timedelta(days=6)) == []
    (words,) = crl_warnings([first, second], "crl.pem", now=start + dt.timedelta(days=7))
    assert words.startswith("CRL 1 of crl.pem is out of date (its nextUpdate 2026-12-08 08:00 UTC has passed)")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "TLS CRL file not found"),
        (b"", "holds no PEM CRL"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "holds no PEM CRL"),
        (b"-----BEGIN X509 CRL-----\nMIIB", "CRL 1 has no END line"),
        (b"-----BEGIN X509 CRL-----\n!!!!\n-----END X509 CRL-----\n", "CRL 1 is not a DER CRL"),
        (b"-----BEGIN X509 CRL-----\nMIIBAA==\n-----END X509 CRL-----\n", "CRL 1 is not a DER CRL"),  # truncated
    ],
)
def test_an_unusable_crl_file_is_said_in_words(
    tmp_path: Path, pki: Certificates, content: bytes | None, words: str
) -> None:
    path = tmp_path / "crl.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TLSConfigError) as info:
        server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca), crl_file=str(path))
    assert words in str(info.value)


def test_a_crl_file_needs_the_ca_file(tmp_path: Path, pki: Certificates) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem")
    with pytest.raises(TLSConfigError, match="tls_crl_file needs tls_ca_file"):
        server_context(str(pki.server.cert), str(pki.server.key), crl_file=str(crl))
    with pytest.raises(ConfigError, match="tls_crl_file needs tls_ca_file"):
        Settings(data_dir=tmp_path, tls_crl_file=str(crl)).validate()
    bad = Settings(
        data_dir=tmp_path / "data",
        tls_port=2762,
        tls_cert_file=str(pki.server.cert),
        tls_key_file=str(pki.server.key),
        tls_ca_file=str(pki.ca),
        tls_crl_file=str(tmp_path / "missing.pem"),
        fsync=False,
    )
    with pytest.raises(ConfigError, match="TLS CRL file not found"):
        asyncio.run(build_app(bad))


def test_contexts_with_a_crl_check_the_leaf_and_hold_its_crls(tmp_path: Path, pki: Certificates) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.client.cert,))
    write_crl(pki, crl, issuer="some other CA", append=True)
    for made in (
        server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca), True, str(crl)),
        client_context(str(pki.ca), crl_file=str(crl)),
    ):
        assert isinstance(made, ReloadingContext)
        context = made.current()
        assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
        assert context.cert_store_stats()["crl"] == 2
    plain = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    assert isinstance(plain, ssl.SSLContext) and not plain.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


@pytest.mark.parametrize(("message", "words"), sorted(REVOCATION_WORDS.items()))
def test_every_revocation_failure_has_words(message: str, words: str) -> None:
    exc = ssl.SSLCertVerificationError(1, "x")
    exc.verify_message = message
    assert describe_tls_error(exc) == words


# ------------------------------------------------------------------ on the wire


def test_a_revoked_client_is_refused_and_a_new_crl_is_followed_without_a_restart(
    tmp_path: Path, pki: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.client.cert,))
    revoked, good = _client(pki, revoked=True), _client(pki, revoked=False)

    async def attempt(port: int, context: ssl.SSLContext) -> str:
        try:
            return f"status {await tls_echo(port, context)}"
        except AssociationError as exc:
            return str(exc)

    async def main() -> list[str]:
        async with serving(tmp_path, pki, tls_require_client_cert=True, tls_crl_file=str(crl)) as app:
            port = app.dicom.tls_port
            seen = [await attempt(port, revoked), await attempt(port, good)]
            write_crl(pki, crl)  # the CA takes the revocation back (a certificate on hold released)
            await asyncio.sleep(1.1)  # the file is looked at once a second at most
            seen.append(await attempt(port, revoked))
            write_crl(pki, crl, (pki.server.cert,))  # and revokes the other one
            await asyncio.sleep(1.1)
            seen += [await attempt(port, good), await attempt(port, revoked)]
            return seen

    seen = asyncio.run(main())
    assert seen[1:3] == ["status 0", "status 0"] and seen[4] == "status 0", seen
    assert seen[0] != "status 0" and seen[3] != "status 0", seen
    words = warnings_of(caplog)
    assert words.count("failed the TLS handshake: certificate revoked: its CA's CRL (tls_crl_file) lists it") == 2
    infos = "\n".join(r.getMessage() for r in caplog.records)
    assert infos.count(f"TLS CRL file {crl} read again: 1 CRL(s)") == 2


def test_our_requestor_refuses_a_node_whose_certificate_is_revoked(tmp_path: Path, pki: Certificates) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.server.cert,))  # the listener's own certificate
    ours = client_context(str(pki.ca), str(pki.client.cert), str(pki.client.key), str(crl))

    async def main() -> str:
        async with serving(tmp_path, pki) as app:
            try:
                return f"status {await tls_echo(app.dicom.tls_port, current_context(ours))}"
            except AssociationError as exc:
                return str(exc)

    said = asyncio.run(main())
    assert said.startswith("TLS handshake with 127.0.0.1:") and "certificate revoked" in said, said


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("expired", "our CRL of its CA is out of date (nextUpdate passed)"),
        ("other CA", "tls_crl_file holds no CRL of the CA that issued its certificate"),
        ("forged", "the CRL of its CA in tls_crl_file is not signed by that CA"),
        ("future", "our CRL of its CA is not valid yet"),
    ],
)
def test_a_crl_that_cannot_vouch_refuses_every_client_and_says_why(
    tmp_path: Path, pki: Certificates, caplog: pytest.LogCaptureFixture, kind: str, words: str
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    crl = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC)
    if kind == "expired":
        write_crl(pki, crl, this_update=now - dt.timedelta(days=8), next_update=dt.timedelta(days=7))
    elif kind == "other CA":
        write_crl(pki, crl, issuer="some other CA")
    elif kind == "forged":
        write_crl(pki, crl, signer=pki.server.key)
    else:
        write_crl(pki, crl, this_update=now + dt.timedelta(days=1))

    async def main() -> str:
        async with serving(tmp_path, pki, tls_require_client_cert=True, tls_crl_file=str(crl)) as app:
            try:
                return f"status {await tls_echo(app.dicom.tls_port, _client(pki, revoked=False))}"
            except AssociationError as exc:
                return str(exc)

    assert asyncio.run(main()) != "status 0"
    logged = warnings_of(caplog)
    assert f"failed the TLS handshake: {words}" in logged, logged
    if kind == "expired":  # said when the file is read, before any client comes
        assert f"CRL 1 of {crl} is out of date" in logged


def test_a_crl_file_replaced_by_one_that_cannot_be_read_keeps_the_crls_in_force(
    tmp_path: Path, pki: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.client.cert,))
    made = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca), True, str(crl))
    assert isinstance(made, ReloadingContext)
    before = made.current()
    crl.write_bytes(b"half a file")
    time.sleep(1.1)
    with caplog.at_level(logging.ERROR, logger="minipacs"):
        assert made.current() is before
        assert made.current() is before  # said once per change, not per connection
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"the TLS CRL file {crl} holds no PEM CRL (-----BEGIN X509 CRL-----); the CRLs read before stay in force"
    ]
    crl.unlink()
    time.sleep(1.1)
    assert made.current() is before


def test_the_crl_setting_reaches_the_listener_and_our_requestor(tmp_path: Path, pki: Certificates) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem")

    async def main() -> tuple[object, object]:
        async with serving(tmp_path, pki, tls_crl_file=str(crl)) as app:
            return app.dicom.tls_context, app.dicom.assoc_settings.tls_context

    listener, requestor = asyncio.run(main())
    assert isinstance(listener, ReloadingContext) and isinstance(requestor, ReloadingContext)


def test_the_doctor_warns_a_day_before_a_crl_is_due_and_when_it_is_out_of_date(
    tmp_path: Path, pki: Certificates
) -> None:
    from minipacs.services.doctor import check_crl_file

    crl = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC)
    write_crl(pki, crl, this_update=now - dt.timedelta(days=1), next_update=dt.timedelta(days=7))
    fine = check_crl_file(str(crl))
    assert fine.ok and fine.verdict.startswith(f"1 CRL(s) in {crl}, none due within a day; the next is due ")
    write_crl(pki, crl, this_update=now - dt.timedelta(days=6, hours=12), next_update=dt.timedelta(days=7))
    soon = check_crl_file(str(crl))
    assert not soon.ok and f"CRL 1 of {crl} is due in 12 hour(s)" in soon.verdict
    assert "tls_crl_file" in soon.fix and "no restart needed" in soon.fix and soon.cause
    write_crl(pki, crl, this_update=now - dt.timedelta(days=8), next_update=dt.timedelta(days=7))
    late = check_crl_file(str(crl))
    assert not late.ok and "is out of date" in late.verdict
    crl.write_bytes(b"not a CRL")
    broken = check_crl_file(str(crl))
    assert not broken.ok and "holds no PEM CRL" in broken.verdict
