"""`minipacs doctor` step 6 (TLS: handshake, chain, expiry) and the C-STORE test of step 5, against DCMTK
storescp speaking TLS only and requiring a client certificate from our CA (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from minipacs.services.doctor import TEST_PATIENT_ID, TEST_PATIENT_NAME
from tests.peers import dcmtk, free_port, minipacs_cmd, run, wait_for_port
from tests.tls_certs import Certificates, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Certificates) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "storescp-out"
    out.mkdir()
    log = tmp_path / "storescp.log"
    for attempt in range(
        3
    ):  # a port found free may be taken (e.g. as another socket's source port) before storescp binds it
        port = free_port()
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [dcmtk("storescp"), "+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca)]
                + ["-od", str(out), "-aet", "TLSSCP", str(port)],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        try:
            wait_for_port("127.0.0.1", port, proc=proc)
            break
        except RuntimeError:
            proc.wait(10)
            if attempt == 2:
                raise RuntimeError("storescp +tls did not start:\n" + log.read_text(errors="replace")) from None
    try:
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _doctor(tmp_path: Path, ca: Path, pki: Certificates, port: int, *args: str) -> tuple[int, dict[str, object]]:
    data = tmp_path / "data"
    res = run(minipacs_cmd("nodes", "add", "--data", str(data), "TLSSCP", "127.0.0.1", str(port), "--tls"))
    assert res.returncode == 0, res.stderr
    config = tmp_path / "minipacs.toml"
    config.write_text(
        f'tls_ca_file = "{ca}"\ntls_cert_file = "{pki.server.cert}"\ntls_key_file = "{pki.server.key}"\n'
        f"port = {free_port()}\n"
    )
    res = run(minipacs_cmd("doctor", "--config", str(config), "--data", str(data), "TLSSCP", "--json", *args))
    doc: dict[str, object] = json.loads(res.stdout)
    return res.returncode, doc


def _steps(doc: dict[str, object]) -> list[dict[str, object]]:
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    steps: list[dict[str, object]] = nodes[0]["steps"]
    return steps


def test_tls_node_certificate_about_to_expire_and_a_test_object_stored(
    tmp_path: Path, pki: Certificates, tls_storescp: tuple[int, Path]
) -> None:
    port, out = tls_storescp
    code, doc = _doctor(tmp_path, pki.ca, pki, port, "--store-test")
    assert code == 0, doc  # warnings only
    steps = _steps(doc)
    assert [(s["number"], s["name"]) for s in steps] == [
        (1, "connect"),
        (6, "tls"),
        (2, "associate"),
        (3, "echo"),
        (4, "accepts"),
        (5, "way there (C-STORE)"),
    ]
    tls = steps[1]
    assert tls["outcome"] == "warning", tls  # the test certificates live one day
    details = tls["details"]
    assert isinstance(details, dict)
    assert details["subject"] == "organizationName=minipacs tests, commonName=minipacs"
    assert details["days_left"] == 0 and str(details["version"]).startswith("TLS")
    assert "expires in 0 day(s)" in str(tls["verdict"]) and "renewed" in str(tls["fix"])
    assert steps[5]["outcome"] == "ok", steps[5]
    (stored,) = list(out.iterdir())
    ds = pydicom.dcmread(stored)
    assert (str(ds.PatientName), ds.PatientID) == (TEST_PATIENT_NAME, TEST_PATIENT_ID)
    assert "not a patient" in ds.StudyDescription


def test_tls_node_whose_certificate_we_cannot_verify(
    tmp_path: Path, pki: Certificates, tls_storescp: tuple[int, Path]
) -> None:
    port, _out = tls_storescp
    code, doc = _doctor(tmp_path, pki.stranger.cert, pki, port)  # a CA file that did not sign the node's
    assert code == 3, doc
    steps = _steps(doc)
    assert [(s["number"], s["outcome"]) for s in steps] == [(1, "ok"), (6, "failed")]
    # OpenSSL's words for a chain that ends in a CA we do not trust
    assert str(steps[1]["verdict"]).startswith("the TLS handshake failed: self-signed certificate in certificate chain")
    assert "not signed by a CA we trust" in str(steps[1]["cause"])
    assert "tls_ca_file" in str(steps[1]["fix"])
