"""DICOM TLS (PS3.15 B.1) against DCMTK, both directions: DCMTK echoscu/storescu/movescu ->
`minipacs serve` with a TLS port; `minipacs echo/store` and our C-MOVE sub-associations ->
DCMTK storescp +tls. Certificates are made per run (tests/tls_certs.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.dicomgen import write_ct
from tests.peers import dcmtk, free_port, minipacs_cmd, run, start_server, wait_for_port
from tests.tls_certs import Certificates, make_pki, write_crl

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Certificates) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp speaking TLS only, requiring a client certificate from our CA (its default)."""
    out = tmp_path / "storescp-out"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            dcmtk("storescp"),
            "+tls",
            str(pki.server.key),
            str(pki.server.cert),
            "+cf",
            str(pki.ca),
            "-od",
            str(out),
            "-aet",
            "TLSSCP",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _json_log(data_dir: Path) -> list[dict[str, Any]]:
    res = run(minipacs_cmd("log", "--data", str(data_dir), "--json", "-n", "50"))
    assert res.returncode == 0, res.stderr
    records: list[dict[str, Any]] = json.loads(res.stdout)
    return records


def test_dcmtk_peers_against_our_tls_port(tmp_path: Path, pki: Certificates, tls_storescp: tuple[int, Path]) -> None:
    scp_port, scp_out = tls_storescp
    study = generate_uid()
    sent = write_ct(tmp_path / "in" / "ct.dcm", study_uid=study)
    config = tmp_path / "minipacs.toml"
    config.write_text(
        "\n".join(
            [
                'allow_unregistered = "echo,store,find,move"',
                "fsync = false",
                f'tls_cert_file = "{pki.server.cert}"',
                f'tls_key_file = "{pki.server.key}"',
                f'tls_ca_file = "{pki.ca}"',
                "tls_require_client_cert = true",
                "",
                "[[nodes]]",
                'ae_title = "TLSSCP"',
                'host = "127.0.0.1"',
                f"port = {scp_port}",
                "tls = true",
                "",
            ]
        )
    )
    tls_port = free_port()
    server = start_server(tmp_path, "--config", str(config), "--tls-port", str(tls_port))
    client = ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)]
    try:
        wait_for_port("127.0.0.1", tls_port)
        echo = run([dcmtk("echoscu"), *client, "-aec", "MINIPACS", "127.0.0.1", str(tls_port)])
        store = run([dcmtk("storescu"), *client, "-aec", "MINIPACS", "127.0.0.1", str(tls_port), str(sent)])
        anonymous = run([dcmtk("echoscu"), "+tla", "+cf", str(pki.ca), "-aec", "MINIPACS", "127.0.0.1", str(tls_port)])
        stranger = run(
            [
                dcmtk("echoscu"),
                "+tls",
                str(pki.stranger.key),
                str(pki.stranger.cert),
                "+cf",
                str(pki.ca),
                "-aec",
                "MINIPACS",
                "127.0.0.1",
                str(tls_port),
            ]
        )
        plain_to_tls = run([dcmtk("echoscu"), "-to", "5", "-aec", "MINIPACS", "127.0.0.1", str(tls_port)])
        plain = run([dcmtk("echoscu"), "-aec", "MINIPACS", "127.0.0.1", str(server.port)])
        # C-MOVE on the plain port to a node registered with tls = true: the sub-association is TLS
        move = run(
            [
                dcmtk("movescu"),
                "-S",
                "-aet",
                "MOVESCU",
                "-aec",
                "MINIPACS",
                "-aem",
                "TLSSCP",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "127.0.0.1",
                str(server.port),
            ]
        )
        records = _json_log(server.data_dir)
        text_log = run(minipacs_cmd("log", "--data", str(server.data_dir), "-n", "50")).stdout
    finally:
        server.stop()
    text = server.log_text()
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert store.returncode == 0, store.stdout + store.stderr
    assert plain.returncode == 0, plain.stdout + plain.stderr
    for refused in (anonymous, stranger, plain_to_tls):
        assert refused.returncode != 0
    assert move.returncode == 0, move.stdout + move.stderr + text
    assert [p.name for p in scp_out.iterdir()], "nothing arrived at the TLS storescp"
    assert "DICOM TLS listener MINIPACS on 127.0.0.1:" in text and "client certificates required" in text
    assert "failed the TLS handshake: no certificate presented, and we require one" in text
    assert "failed the TLS handshake: certificate unknown: unable to get local issuer certificate" in text
    assert "failed the TLS handshake: the peer did not speak TLS (plain DICOM on the TLS port?)" in text
    tls_ok = [r for r in records if r["accepted"] and r["role"] == "acceptor" and r["tls"]]
    assert len(tls_ok) == 2 and all(r["tls_peer"] == "CN=ECHOSCU,O=Test Modality" for r in tls_ok)
    failed = " | ".join(r["reject_reason"] for r in records if r["tls"] == "failed" and not r["accepted"])
    for why in (
        "no certificate presented",
        "certificate unknown",
        "the peer did not speak TLS",
        "the connection was closed during the TLS handshake",
    ):  # the last: wait_for_port's probe
        assert f"TLS handshake failed: {why}" in failed
    sub = [r for r in records if r["role"] == "requestor"]
    assert sub and sub[0]["called_aet"] == "TLSSCP" and sub[0]["tls"]
    assert sub[0]["tls_peer"] == "CN=minipacs,O=minipacs tests"  # storescp shows the server certificate we gave it
    assert any(not r["tls"] and r["accepted"] and r["calling_aet"] == "ECHOSCU" for r in records)
    assert "from 127.0.0.1:" in text_log and " over TLSv1." in text_log and "(CN=ECHOSCU,O=Test Modality)" in text_log


def test_minipacs_echo_and_store_against_dcmtk_over_tls(
    tmp_path: Path, pki: Certificates, tls_storescp: tuple[int, Path]
) -> None:
    port, out = tls_storescp
    sent = write_ct(tmp_path / "in" / "ct.dcm")
    ours = ["--tls", "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    echo = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "TLSSCP", *ours))
    store = run(minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "TLSSCP", "--no-progress", *ours, str(sent)))
    no_cert = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "TLSSCP", "--tls", "--tls-ca", str(pki.ca)))
    no_ca = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "TLSSCP", "--tls"))
    untrusted = run(
        minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "TLSSCP", "--tls", "--tls-ca", str(pki.stranger.cert))
    )
    assert echo.returncode == 0 and "Success" in echo.stdout, echo.stdout + echo.stderr
    assert store.returncode == 0, store.stdout + store.stderr
    assert len(list(out.iterdir())) == 1
    assert no_cert.returncode == 3 and "may require a client certificate we did not send" in no_cert.stderr
    assert no_ca.returncode == 2 and "--tls needs --tls-ca" in no_ca.stderr
    assert untrusted.returncode == 3, untrusted.stderr
    assert "TLS handshake with 127.0.0.1:" in untrusted.stderr and "certificate unknown" in untrusted.stderr


def test_dcmtk_with_a_revoked_certificate_is_refused_and_ours_refuses_a_revoked_dcmtk(
    tmp_path: Path, pki: Certificates, tls_storescp: tuple[int, Path]
) -> None:
    """tls_crl_file, both ways: DCMTK echoscu presenting a revoked certificate to our TLS port, and
    `minipacs echo --tls-crl` calling DCMTK storescp whose server certificate the CRL lists."""
    crl = write_crl(pki, tmp_path / "crl.pem", (pki.client.cert,))
    config = tmp_path / "minipacs.toml"
    config.write_text(
        "\n".join(
            [
                'allow_unregistered = "echo"',
                "fsync = false",
                f'tls_cert_file = "{pki.server.cert}"',
                f'tls_key_file = "{pki.server.key}"',
                f'tls_ca_file = "{pki.ca}"',
                f'tls_crl_file = "{crl}"',
                "tls_require_client_cert = true",
                "",
            ]
        )
    )
    tls_port = free_port()
    server = start_server(tmp_path, "--config", str(config), "--tls-port", str(tls_port))
    try:
        wait_for_port("127.0.0.1", tls_port)
        revoked = run(
            [dcmtk("echoscu"), "+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)]
            + ["-aec", "MINIPACS", "127.0.0.1", str(tls_port)]
        )
        good = run(
            [dcmtk("echoscu"), "+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca)]
            + ["-aec", "MINIPACS", "127.0.0.1", str(tls_port)]
        )
    finally:
        server.stop()
    assert revoked.returncode != 0
    assert good.returncode == 0, good.stdout + good.stderr
    assert "failed the TLS handshake: certificate revoked: its CA's CRL (tls_crl_file) lists it" in server.log_text()

    scp_port, _ = tls_storescp  # presents pki.server's certificate
    node_crl = write_crl(pki, tmp_path / "node-crl.pem", (pki.server.cert,))
    ours = ["--tls", "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    refused = run(minipacs_cmd("echo", "127.0.0.1", str(scp_port), "-aec", "TLSSCP", *ours, "--tls-crl", str(node_crl)))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "TLS handshake with 127.0.0.1:" in refused.stderr and "certificate revoked" in refused.stderr
    write_crl(pki, node_crl)  # nothing revoked: the same call goes through
    accepted = run(
        minipacs_cmd("echo", "127.0.0.1", str(scp_port), "-aec", "TLSSCP", *ours, "--tls-crl", str(node_crl))
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
