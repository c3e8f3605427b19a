"""X-Forwarded-For on the HTTP port (config ``http_trusted_proxies``): behind a real HAProxy
(``mode http``, ``option forwardfor``) the audit trail names the client, and nothing else can
write an address there. uvicorn believes the header from loopback by default; before this key
any local process could put any address into the audit trail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from minipacs.config import ConfigError, load_settings
from tests.peers import ServerProcess, free_port, start_server, wait_for_port
from tests.scaleout.test_haproxy import haproxy_running
from tests.scaleout.test_proxy_protocol import audit_rows

pytestmark = pytest.mark.interop

CLIENT = "127.0.0.2"
SPOOFED = "203.0.113.9"


@contextmanager
def haproxy_http(tmp: Path, backend: int) -> Iterator[int]:
    front = free_port()
    config = (
        "global\n    maxconn 64\ndefaults\n    mode http\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n"
        f"frontend web\n    bind 127.0.0.1:{front}\n    option forwardfor\n    default_backend node\n"
        f"backend node\n    server node 127.0.0.1:{backend}\n"
    )
    with haproxy_running(tmp, "haproxy-http", config, [front]):
        yield front


def qido(port: int, patient_id: str, *, source: str = "127.0.0.1", forwarded: str | None = None) -> int:
    """A QIDO-RS query (audited, with its PatientID) from ``source``; its HTTP status."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        conn.request("GET", f"/dicom-web/studies?PatientID={patient_id}", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def addresses(data: Path) -> dict[str, str]:
    rows = asyncio.run(audit_rows(data, ""))
    return {row["patient_id"]: row["address"] for row in rows if row["action"] == "queried"}


def run_server(tmp: Path, *extra: str) -> tuple[ServerProcess, int]:
    http = free_port()
    srv = start_server(tmp, *extra, env={"MINIPACS_HTTP_PORT": str(http)})
    wait_for_port("127.0.0.1", http, proc=srv.proc)
    return srv, http


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    srv, http = run_server(tmp_path)
    try:
        assert qido(http, "P-DIRECT", forwarded=SPOOFED) == 200
    finally:
        srv.stop()
    assert addresses(srv.data_dir)["P-DIRECT"] == "127.0.0.1"


def test_behind_haproxy_the_audit_names_the_client(tmp_path: Path) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text('http_trusted_proxies = ["127.0.0.1"]\n')
    srv, http = run_server(tmp_path, "--config", str(config))
    try:
        with haproxy_http(tmp_path, http) as front:
            assert qido(front, "P-PROXIED", source=CLIENT) == 200
            # a client that writes its own header: HAProxy appends the real address, which is believed
            assert qido(front, "P-LIAR", source=CLIENT, forwarded=SPOOFED) == 200
        # straight to the server from an address that is not a trusted proxy: the header is ignored
        assert qido(http, "P-BYPASS", source=CLIENT, forwarded=SPOOFED) == 200
    finally:
        srv.stop()
    found = addresses(srv.data_dir)
    assert found["P-PROXIED"] == CLIENT
    assert found["P-LIAR"] == CLIENT
    assert found["P-BYPASS"] == CLIENT


def test_http_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ConfigError, match="http_trusted_proxies: 'proxy.example' is not an IP address"):
        load_settings(env={"MINIPACS_HTTP_TRUSTED_PROXIES": "10.0.0.5,proxy.example"})
    settings = load_settings(env={"MINIPACS_HTTP_TRUSTED_PROXIES": "10.0.0.5,10.1.0.0/16"})
    assert settings.http_trusted_proxies == ("10.0.0.5", "10.1.0.0/16")
