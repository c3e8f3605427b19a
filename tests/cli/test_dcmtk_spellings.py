"""DCMTK's spellings on the minipacs command line (issue 12 item 20): the same words that work
with DCMTK's storescu/getscu/movescu work with minipacs, or minipacs says its own spelling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.cli.dcmtk import ANSWERS, SAME, DcmtkSpelling, translate
from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, free_port, minipacs_cmd, run, start_server

pytestmark = pytest.mark.interop


def _study(folder: Path, count: int) -> str:
    study, series = generate_uid(), generate_uid()
    for i in range(count):
        write_ct(folder / "sub" / f"f{i}.dcm", study_uid=study, series_uid=series, sop_uid=generate_uid())
    return study


def test_storescu_words_work_with_minipacs_store_and_with_storescu(server: ServerProcess, tmp_path: Path) -> None:
    """`storescu -aec MINIPACS +sd +r -v HOST PORT DIR`: the same words, to both tools."""
    _study(tmp_path / "in", 3)
    words = ["-aec", "MINIPACS", "+sd", "+r", "-nh", "-v", "127.0.0.1", str(server.port), str(tmp_path / "in")]
    theirs = run([dcmtk("storescu"), *words])
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    ours = run(minipacs_cmd("store", *words, "--no-progress"))
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert "sent 3 of 3" in ours.stdout
    # DCMTK's order: options before HOST PORT (was "argument port: invalid int value: '+r'")
    ours = run(
        minipacs_cmd(
            "store",
            "+sd",
            "+r",
            "127.0.0.1",
            str(server.port),
            str(tmp_path / "in"),
            "-aec",
            "MINIPACS",
            "--no-progress",
        )
    )
    assert ours.returncode == 0, ours.stdout + ours.stderr


def test_getscu_and_movescu_words(tmp_path: Path) -> None:
    """getscu's -od DIR is `get --out DIR`; movescu's -od DIR +P PORT is `move --store-to DIR --port PORT`;
    -d after the command is the global debug flag."""
    study = _study(tmp_path / "in", 2)
    dest_port = free_port()
    cfg = tmp_path / "minipacs.toml"
    cfg.write_text(
        f'fsync = false\nallow_unregistered = "echo,store,find,get"\n\n[[nodes]]\nae_title = "MOVESCU"\n'
        f'host = "127.0.0.1"\nport = {dest_port}\n'
    )
    srv = start_server(tmp_path, "--config", str(cfg))
    try:
        done = run(minipacs_cmd("store", "127.0.0.1", str(srv.port), "-aec", "MINIPACS", str(tmp_path / "in")))
        assert done.returncode == 0, done.stderr
        got = run(
            minipacs_cmd(
                "get",
                "-aec",
                "MINIPACS",
                "-od",
                str(tmp_path / "got"),
                "127.0.0.1",
                str(srv.port),
                "-k",
                f"StudyInstanceUID={study}",
                "--no-progress",
                "-d",
            )
        )
        assert got.returncode == 0, got.stdout + got.stderr
        assert "C-GET-RQ" in got.stderr  # -d: the DIMSE trace
        moved = run(
            minipacs_cmd(
                "move",
                "-aec",
                "MINIPACS",
                "-aet",
                "MOVESCU",
                "+P",
                str(dest_port),
                "-od",
                str(tmp_path / "moved"),
                "127.0.0.1",
                str(srv.port),
                "-k",
                f"StudyInstanceUID={study}",
                "--no-progress",
                "-v",
            )
        )
        assert moved.returncode == 0, moved.stdout + moved.stderr
    finally:
        srv.stop()
    assert len(list((tmp_path / "got").iterdir())) == 2 and len(list((tmp_path / "moved").iterdir())) == 2


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["find", "127.0.0.1", "104", "-W", "-k", "PatientID=1"], "minipacs worklist query HOST PORT"),
        (["store", "+xi", "127.0.0.1", "104", "x.dcm"], "minipacs chooses transfer syntaxes itself"),
        (["store", "-xs", "127.0.0.1", "104", "x.dcm"], "there is no option for it"),
        (["store", "+sp", "*.dcm", "127.0.0.1", "104", "x"], "name the files to send only some"),
        (["echo", "+tls", "k.pem", "c.pem", "127.0.0.1", "104"], "--tls --tls-ca PEM"),
        (
            ["get", "+zz", "127.0.0.1", "104"],
            "+zz is a DCMTK option minipacs get does not take; see `minipacs get --help`",
        ),
        (["find", "-X", "127.0.0.1", "104"], "--json"),
    ],
)
def test_dcmtk_options_minipacs_does_not_take_answer_with_its_spelling(
    words: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from minipacs.cli.main import main

    assert main(words) == 2
    assert said in capsys.readouterr().err


def test_translate_leaves_values_and_other_commands_alone() -> None:
    assert translate(["find", "h", "1", "-k", "PatientName=+x", "-k", "+x"]) == [
        "find",
        "h",
        "1",
        "-k",
        "PatientName=+x",
        "-k",
        "+x",
    ]
    assert translate(["worklist", "add", "--patient-name", "+x"]) == ["worklist", "add", "--patient-name", "+x"]
    assert translate(["-v", "serve", "+x"]) == ["-v", "serve", "+x"]
    assert translate(["echo", "h", "1", "-usr", "bob", "-pwd", "+pw", "-rsp"]) == [
        "echo",
        "h",
        "1",
        "--user",
        "bob",
        "--password",
        "+pw",
        "--pos-response",
    ]
    assert translate(["echo", "h", "1", "-usr", "bob", "-epw"]) == ["echo", "h", "1", "--user", "bob", "--password", ""]
    with pytest.raises(DcmtkSpelling):
        translate(["worklist", "query", "h", "1", "+xi"])


def test_every_spelling_the_tables_name_parses_or_answers() -> None:
    """A row per DCMTK option: each SAME row becomes arguments the minipacs parser takes, each ANSWERS
    row is refused with text naming a minipacs spelling."""
    from minipacs.cli.main import build_parser

    parser = build_parser()
    for command, word in SAME:
        cmd = "store" if command == "*" else command
        value = {
            "--out": ["d"],
            "--store-to": ["d"],
            "--port": ["1"],
            "-aem": ["A"],
            "-aec": ["A"],
            "-aet": ["A"],
            "--user": ["u"],
            "--password": ["p"],
        }.get((SAME[(command, word)] or ("",))[0], [])
        tail = {"store": ["f"], "get": ["--out", "d"], "move": ["-aem", "A"]}.get(cmd, [])
        needs_user = ["--user", "u"] if word in ("-pwd", "-rsp", "-epw", "--empty-password") else []
        words = translate([cmd, "h", "1", word, *value, *tail, *needs_user])
        parser.parse_args(words)
    for (command, word), answer in ANSWERS.items():
        cmd = "echo" if command == "*" else command
        with pytest.raises(DcmtkSpelling, match=re.escape(answer)):
            translate([cmd, "h", "1", word])
