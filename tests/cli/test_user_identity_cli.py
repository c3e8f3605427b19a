"""The SCU commands send a DICOM user identity (PS3.7 D.3.3.7.1; issue 12 item 19): against
minipacs with ``dicom_user_identity = "required"`` every SCU command gets in with --user and a
password and is rejected without; pynetdicom as acceptor records what arrived (type 1 with only
--user, type 2 with a password from argv, the environment or a prompt)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from minipacs.core.users import hash_password
from tests.dicomgen import write_ct
from tests.peers import ServerProcess, free_port, minipacs_cmd, run, start_server

pytestmark = pytest.mark.interop

PASSWORD = "correct horse"
SECRET_ENV = {"SCU_TEST_PASSWORD": PASSWORD}


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """minipacs requiring a user identity; a node MOVEDEST (our `move --store-to`) is registered."""
    dest_port = free_port()
    cfg = tmp_path / "minipacs.toml"
    cfg.write_text(
        "\n".join(
            [
                'dicom_user_identity = "required"',
                "fsync = false",
                'allow_unregistered = "echo,store,find,get"',
                "",
                "[[users]]",
                'name = "alice"',
                f'password_hash = "{hash_password(PASSWORD, n=2**10)}"',
                'role = "operator"',
                "",
                "[[nodes]]",
                'ae_title = "MOVEDEST"',
                'host = "127.0.0.1"',
                f"port = {dest_port}",
                "",
            ]
        )
    )
    srv = start_server(tmp_path, "--config", str(cfg))
    try:
        yield srv, dest_port
    finally:
        srv.stop()


def test_every_scu_command_gets_in_with_an_identity_and_not_without(
    locked_server: tuple[ServerProcess, int], tmp_path: Path
) -> None:
    srv, dest_port = locked_server
    peer = ["127.0.0.1", str(srv.port), "-aec", "MINIPACS"]
    me = ["--user", "alice", "--password-env", "SCU_TEST_PASSWORD"]
    study = generate_uid()
    write_ct(tmp_path / "in" / "a.dcm", study_uid=study)

    refused = run(minipacs_cmd("echo", *peer))
    assert refused.returncode == 3 and "reject" in refused.stderr, refused.stdout + refused.stderr
    wrong = run(minipacs_cmd("echo", *peer, "--user", "alice", "--password", "guessing"))
    assert wrong.returncode == 3, wrong.stdout + wrong.stderr
    bare = run(minipacs_cmd("echo", *peer, "--user", "alice"))  # type 1 proves nothing under "required"
    assert bare.returncode == 3, bare.stdout + bare.stderr
    assert run(minipacs_cmd("store", *peer, "--no-progress", str(tmp_path / "in"))).returncode == 3

    checks = {
        "echo": minipacs_cmd("echo", *peer, *me),
        "store": minipacs_cmd(
            "store", *peer, "--user", "alice", "--password", PASSWORD, "--no-progress", str(tmp_path / "in")
        ),
        "find": minipacs_cmd("find", *peer, *me, "-k", f"StudyInstanceUID={study}", "--json"),
        "worklist query": minipacs_cmd("worklist", "query", *peer, *me),
        "get": minipacs_cmd(
            "get", *peer, *me, "--out", str(tmp_path / "got"), "--no-progress", "-k", f"StudyInstanceUID={study}"
        ),
        "move": minipacs_cmd(
            "move",
            *peer,
            *me,
            "-aet",
            "MOVEDEST",
            "--port",
            str(dest_port),
            "--store-to",
            str(tmp_path / "moved"),
            "--no-progress",
            "-k",
            f"StudyInstanceUID={study}",
        ),
    }
    for name, cmd in checks.items():
        done = run(cmd, env=SECRET_ENV)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        if name == "find":
            assert len(json.loads(done.stdout)) == 1
    got, moved = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("got", "moved"))
    assert len(got) == 1 and got == moved
    log = srv.log_text()
    assert PASSWORD not in log and "guessing" not in log


def _recording_scp(seen: list[tuple[int, bytes, bytes | None]]) -> tuple[int, Any]:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def on_user_id(event: Any, *args: Any) -> tuple[bool, bytes | None]:
        seen.append(
            (
                event.user_id_type,
                bytes(event.primary_field),
                None if event.secondary_field is None else bytes(event.secondary_field),
            )
        )
        return True, None

    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    return port, ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_USER_ID, on_user_id)])


def test_pynetdicom_receives_type_1_and_type_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from minipacs.cli.main import main

    seen: list[tuple[int, bytes, bytes | None]] = []
    port, scp = _recording_scp(seen)
    peer = ["127.0.0.1", str(port), "-aec", "PYNETSCP"]
    asked: list[str] = []

    def prompt(text: str = "") -> str:
        asked.append(text)
        return "from the prompt"

    monkeypatch.setattr("getpass.getpass", prompt)
    monkeypatch.setenv("SCU_TEST_PASSWORD", "from the environment")
    try:
        assert main(["echo", *peer]) == 0
        assert main(["echo", *peer, "--user", "bob"]) == 0
        assert main(["echo", *peer, "--user", "bob", "--password", "from argv"]) == 0
        assert main(["echo", *peer, "--user", "bob", "--password-env", "SCU_TEST_PASSWORD"]) == 0
        assert main(["echo", *peer, "--user", "bøb", "--password-prompt"]) == 0
    finally:
        scp.shutdown()
    assert seen == [
        (1, b"bob", b""),
        (2, b"bob", b"from argv"),
        (2, b"bob", b"from the environment"),
        (2, "bøb".encode(), b"from the prompt"),
    ]  # PS3.7 D.3.3.7.1: UTF-8
    assert asked == ["DICOM password for bøb: "]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--password", "x"], "--password needs --user NAME"),
        (["--password-env", "SCU_TEST_PASSWORD"], "--password-env needs --user NAME"),
        (["--user", "bob", "--password-env", "SCU_TEST_NOT_SET"], "SCU_TEST_NOT_SET: no such environment variable"),
        (["--user", "b" * 65536], "longer than the 65535 bytes"),
        (["--user", "bob", "--password", "p" * 65536], "password is longer than the 65535 bytes"),
    ],
)
def test_identity_flags_that_cannot_work_are_usage_errors(
    capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    from minipacs.cli.main import main

    os.environ.pop("SCU_TEST_NOT_SET", None)
    assert main(["echo", "127.0.0.1", str(free_port()), *flags]) == 2
    assert said in capsys.readouterr().err


def test_a_password_at_the_limit_goes_out(capsys: pytest.CaptureFixture[str]) -> None:
    from minipacs.services.outbound import MAX_IDENTITY_FIELD, UserIdentity

    item = UserIdentity("bob", "p" * MAX_IDENTITY_FIELD).item()
    assert (item.identity_type, len(item.secondary_field)) == (2, 65535)
    assert "p" * 10 not in repr(UserIdentity("bob", "p" * 20))
