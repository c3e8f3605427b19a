"""Node identity (issue 11, "Node identity"): the node_id setting, and the refusal of a second node
where it would do harm — any second `minipacs serve` on one SQLite index, a second live node with
one node_id on PostgreSQL. Two real processes each time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minipacs.config import ConfigError, Settings, default_node_id, load_settings
from tests.index.pg import postgres_schema_url
from tests.peers import ServerProcess, free_port, minipacs_cmd, start_server

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize(
    ("host", "node_id"),
    [
        ("pacs-1.example.org", "pacs-1.example.org"),
        ("my host (2)", "my-host-2"),
        ("ünïcode", "n-code"),
        ("x" * 80, "x" * 64),
        ("***", "minipacs"),
    ],
)
def test_the_default_node_id_is_the_host_name_made_fit(host: str, node_id: str) -> None:
    assert default_node_id(host) == node_id
    Settings(node_id=default_node_id(host)).validate()


def test_node_id_comes_from_the_environment_and_node_name_is_its_older_spelling() -> None:
    assert load_settings(env={"MINIPACS_NODE_ID": "node-a"}).resolved_node_id == "node-a"
    assert load_settings(env={"MINIPACS_NODE_NAME": "node-b"}).resolved_node_id == "node-b"
    assert load_settings(env={}).resolved_node_id == default_node_id()
    with pytest.raises(ConfigError, match="older spelling"):
        load_settings(env={"MINIPACS_NODE_ID": "a", "MINIPACS_NODE_NAME": "b"})


def _second_serve(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=SRC, MINIPACS_HTTP_PORT="0", **env)
    cmd = minipacs_cmd("serve", "--data", str(data), "--port", str(free_port()), "--host", "127.0.0.1")
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=120, check=False)


def _alive(srv: ServerProcess) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="CHECKER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_a_second_serve_on_one_sqlite_index_exits_with_a_sentence(tmp_path: Path) -> None:
    first = start_server(tmp_path, env={"MINIPACS_NODE_ID": "node-a"})
    try:
        second = _second_serve(first.data_dir, {"MINIPACS_NODE_ID": "node-b"})
        assert second.returncode == 2, second.stdout + second.stderr
        said = second.stderr
        assert "another minipacs node (node node-a, pid" in said, said
        assert "SQLite index" in said and "serves one node only" in said and "PostgreSQL" in said, said
        assert not any(p.name.startswith("node-") for p in (first.data_dir / "staging").iterdir())
        _alive(first)  # the first one never noticed
    finally:
        assert first.stop(signal.SIGINT) == 0
    again = start_server(tmp_path, env={"MINIPACS_NODE_ID": "node-b"})  # the claim went with its process
    again.stop()


@pytest.mark.postgres
def test_two_live_nodes_with_one_node_id_on_postgresql_are_refused(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    with postgres_schema_url() as url:
        first = start_server(tmp_path / "a", env={"MINIPACS_INDEX_URL": url, "MINIPACS_NODE_ID": "same"})
        try:
            second = _second_serve(tmp_path / "b" / "data", {"MINIPACS_INDEX_URL": url, "MINIPACS_NODE_ID": "same"})
            assert second.returncode == 2, second.stdout + second.stderr
            assert "already uses node_id 'same'" in second.stderr and "MINIPACS_NODE_ID" in second.stderr
            other = start_server(tmp_path / "b", env={"MINIPACS_INDEX_URL": url, "MINIPACS_NODE_ID": "other"})
            try:
                _alive(first)
                _alive(other)
            finally:
                other.stop()
        finally:
            first.stop()
        first.proc.wait()
        if sys.platform == "linux":  # a killed node's claim ends with its session
            killed = start_server(tmp_path / "a", env={"MINIPACS_INDEX_URL": url, "MINIPACS_NODE_ID": "same"})
            killed.proc.kill()
            killed.proc.wait()
            back = start_server(tmp_path / "a", env={"MINIPACS_INDEX_URL": url, "MINIPACS_NODE_ID": "same"})
            back.stop()


def test_one_node_id_in_two_indexes_of_one_postgresql_database_is_two_claims() -> None:
    """Advisory locks are per database; an index is per schema. Two archives in two schemas of one
    database each have their own nodes: the same node_id in both is no conflict, in one schema it is."""
    from minipacs.index.node_claim import NodeClaimRefused, claim_node

    with postgres_schema_url() as first, postgres_schema_url() as second:
        a = claim_node(first, "node-x")
        try:
            b = claim_node(second, "node-x")  # another index: its own claim
            b.release()
            with pytest.raises(NodeClaimRefused, match="node-x"):
                claim_node(first, "node-x")
        finally:
            a.release()
        claim_node(first, "node-x").release()  # released: free again
