"""`minipacs nodes add | list | remove | check`, with the server stopped and running."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from minipacs.cli.main import main
from tests.peers import dcmtk, minipacs_cmd, run, start_server


@pytest.fixture
def nodes(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``nodes(data, *args)`` runs `minipacs nodes ARGS --data DATA` in-process: (exit code, stdout, stderr)."""

    def call(data: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["nodes", *args, "--data", str(data)])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def nodes_process(data: Path, *args: str) -> tuple[int, str, str]:
    """The same in a process of its own (next to a running server)."""
    res = run(minipacs_cmd("nodes", *args, "--data", str(data)))
    return res.returncode, res.stdout, res.stderr


def test_add_list_remove(tmp_path: Path, nodes: Callable[..., tuple[int, str, str]]) -> None:
    data = tmp_path / "data"
    code, out, _ = nodes(data, "list")
    assert code == 0 and "no nodes registered" in out
    code, out, err = nodes(
        data, "add", "SCU_12", "127.0.0.2", "104", "--description", "viewer 2F", "--permissions", "find,move"
    )
    assert code == 0, err
    assert out.strip() == "registered 'SCU_12' at 127.0.0.2:104 (may find,move)"
    code, out, _ = nodes(data, "add", "SCU_12", "127.0.0.2", "11112")
    assert (code, out.strip()) == (0, "updated 'SCU_12' at 127.0.0.2:11112 (may echo,store,find,move,get,mpps,commit)")
    assert nodes(data, "add", "CT1", "ct1.local", "4242", "--tls")[0] == 0

    code, out, _ = nodes(data, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["AE", "TITLE", "HOST", "PORT", "MAY", "TLS", "DESCRIPTION"]
    assert lines[1].split() == ["CT1", "ct1.local", "4242", "all", "yes"]
    assert lines[2].split() == ["SCU_12", "127.0.0.2", "11112", "all"]

    code, out, _ = nodes(data, "list", "--json")
    listed = json.loads(out)
    assert [(n["ae_title"], n["host"], n["port"], n["tls"]) for n in listed] == [
        ("CT1", "ct1.local", 4242, True),
        ("SCU_12", "127.0.0.2", 11112, False),
    ]
    assert listed[1]["permissions"] == ["echo", "store", "find", "move", "get", "mpps", "commit"]

    code, out, err = nodes(data, "remove", "SCU_12", "--host", "127.0.0.9")
    assert code == 1 and "no node 'SCU_12' on host 127.0.0.9 is registered" in err
    code, out, _ = nodes(data, "remove", "SCU_12")
    assert (code, out.strip()) == (0, "removed 1 node(s) 'SCU_12'")
    assert [n["ae_title"] for n in json.loads(nodes(data, "list", "--json")[1])] == ["CT1"]


def test_bad_nodes_exit_2_and_say_why(tmp_path: Path, nodes: Callable[..., tuple[int, str, str]]) -> None:
    data = tmp_path / "data"
    code, _, err = nodes(data, "add", "A_TITLE_THAT_IS_TOO_LONG", "127.0.0.1", "104")
    assert code == 2 and "1 to 16 characters" in err
    code, _, err = nodes(data, "add", "OK", "127.0.0.1", "0")
    assert code == 2 and "outside 1..65535" in err
    code, _, err = nodes(data, "add", "OK", "127.0.0.1", "104", "--permissions", "echo,delete")
    assert code == 2 and "unknown permission 'delete'" in err


def test_check_says_when_any_host_can_retrieve_with_a_title(
    tmp_path: Path, nodes: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8 item 16: with check_calling_host off (the default) an AE title is all a caller needs."""
    data = tmp_path / "data"
    nodes(data, "add", "VIEWER", "127.0.0.2", "104", "--permissions", "echo,find")
    code, out, _ = nodes(data, "check")
    assert (code, out.strip()) == (0, "1 node(s), no shared or near-identical AE titles")  # nothing to pull
    nodes(data, "add", "WS_7", "127.0.0.3", "104", "--permissions", "find,get")
    code, out, _ = nodes(data, "check")
    assert code == 0
    assert (
        "warning: 1 registered node(s) may retrieve images (C-MOVE/C-GET): WS_7. check_calling_host is off, "
        "so ANY host that calls with one of these AE titles gets those rights"
    ) in out
    monkeypatch.setenv("MINIPACS_CHECK_CALLING_HOST", "true")
    code, out, _ = nodes(data, "check")
    assert (code, out.strip()) == (0, "2 node(s), no shared or near-identical AE titles")


def test_check(tmp_path: Path, nodes: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIPACS_CHECK_CALLING_HOST", "true")  # the retrieve warning has its own test
    data = tmp_path / "data"
    nodes(data, "add", "SCU_12", "127.0.0.2", "104")
    code, out, _ = nodes(data, "check")
    assert (code, out.strip()) == (0, "1 node(s), no shared or near-identical AE titles")

    code, _, err = nodes(data, "add", "SCU_12", "127.0.0.3", "104")
    assert code == 0 and "warning: AE title 'SCU_12' is used by 2 nodes" in err  # said at once
    nodes(data, "add", "scu_12", "127.0.0.4", "104")
    code, out, _ = nodes(data, "check")
    assert code == 1
    shared, case = out.strip().split("\n")
    assert shared == (
        "warning: AE title 'SCU_12' is used by 2 nodes (127.0.0.2:104, 127.0.0.3:104). A C-MOVE to 'SCU_12' goes "
        "to the node whose host is the requester's address and is refused (0xA801) when the request comes from "
        "any other address; give each node its own AE title if you can."
    )
    assert case.startswith(
        "warning: AE titles 'SCU_12' at 127.0.0.2:104, 'SCU_12' at 127.0.0.3:104, "
        "'scu_12' at 127.0.0.4:104 differ only in case."
    )
    code, _, err = nodes(data, "list")
    assert code == 0 and "2 warning(s) about these nodes" in err


def test_with_the_server_running(tmp_path: Path) -> None:
    """Config nodes seeded at start-up; `nodes add` while serving takes effect without a restart."""
    cfg = tmp_path / "minipacs.toml"
    cfg.write_text(
        "allow_unregistered = []\nnodes_refresh = 0.2\n"
        '[[nodes]]\nae_title = "FROMCONFIG"\nhost = "127.0.0.1"\nport = 104\n'
        '[[nodes]]\nae_title = "FROMCONFIG"\nhost = "127.0.0.9"\nport = 104\n'
    )
    srv = start_server(tmp_path, "--config", str(cfg))
    echoscu = dcmtk("echoscu")
    try:

        def echo(calling: str) -> int:
            return run([echoscu, "-aet", calling, "-aec", "MINIPACS", "127.0.0.1", str(srv.port)]).returncode

        assert echo("FROMCONFIG") == 0
        assert echo("LATE") != 0
        code, out, err = nodes_process(srv.data_dir, "add", "LATE", "127.0.0.1", "104", "--config", str(cfg))
        assert code == 0, err
        deadline = time.monotonic() + 10
        while echo("LATE") != 0:
            assert time.monotonic() < deadline, "the server did not pick up the new node"
            time.sleep(0.2)
        listed = json.loads(nodes_process(srv.data_dir, "list", "--json")[1])
        assert sorted((n["ae_title"], n["host"]) for n in listed) == [
            ("FROMCONFIG", "127.0.0.1"),
            ("FROMCONFIG", "127.0.0.9"),
            ("LATE", "127.0.0.1"),
        ]
    finally:
        assert srv.stop() == 0
    log = srv.log_text()
    assert "AE registry: AE title 'FROMCONFIG' is used by 2 nodes (127.0.0.1:104, 127.0.0.9:104)" in log
    assert "calling AE title 'LATE' from 127.0.0.1 is not a registered node" in log
    assert "(rule: allow_unregistered)" in log
