"""The command line: settings precedence, exit codes, import and log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.config import ConfigError, load_settings
from minipacs.core.model import DuplicatePolicy
from tests.dicomgen import write_ct
from tests.peers import free_port, minipacs_cmd, run


def test_defaults_are_the_embedded_ones() -> None:
    s = load_settings(env={})
    assert (s.ae_title, s.port, s.data_dir) == ("MINIPACS", 11112, Path("minipacs-data"))
    assert s.resolved_index_url.startswith("sqlite:///") and s.resolved_index_url.endswith("index.sqlite3")


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[minipacs]\nae_title = "FROMFILE"\nport = 104\nduplicate_policy = "reject"\nmax_associations = 5\n')
    s = load_settings(cfg, env={})
    assert (s.ae_title, s.port, s.duplicate_policy, s.max_associations) == ("FROMFILE", 104, DuplicatePolicy.REJECT, 5)
    s = load_settings(cfg, env={"MINIPACS_PORT": "2104", "MINIPACS_FSYNC": "false"})
    assert (s.ae_title, s.port, s.fsync) == ("FROMFILE", 2104, False)
    s = load_settings(cfg, env={"MINIPACS_PORT": "2104"}, overrides={"port": 3104, "ae_title": "FLAG"})
    assert (s.ae_title, s.port) == ("FLAG", 3104)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('port = "many"', "port"),
        ("port = 70000", "port"),
        ('ae_title = "WAY_TOO_LONG_FOR_AN_AE"', "ae_title"),
        ('ae_title = "BACK\\\\SLASH"', "ae_title"),
        ("max_pdu_receive = 100", "max_pdu_receive"),
        ('duplicate_policy = "sometimes"', "duplicate_policy"),
        ("dimse_timeout = 0", "dimse_timeout"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=words):
        load_settings(cfg, env={})


def test_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("port = -1\n")
    res = run(minipacs_cmd("serve", "--config", str(cfg), "--data", str(tmp_path / "d")))
    assert res.returncode == 2
    assert "port" in res.stderr


def test_echo_to_nothing_exits_3_and_says_why() -> None:
    res = run(minipacs_cmd("echo", "127.0.0.1", str(free_port()), "-to", "2"))
    assert res.returncode == 3
    assert "is the peer listening" in res.stderr


def test_store_without_dicom_files_exits_1(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    res = run(minipacs_cmd("store", "127.0.0.1", str(free_port()), str(tmp_path)))
    assert res.returncode == 1
    assert "not a DICOM Part 10 file" in res.stderr


def test_import_and_log(tmp_path: Path) -> None:
    src = tmp_path / "src"
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        write_ct(src / f"{i}.dcm", study_uid=study, series_uid=series, sop_uid=generate_uid())
    (src / "readme.txt").write_text("hello")
    data = tmp_path / "data"
    res = run(minipacs_cmd("import", "--data", str(data), "--no-progress", str(src)))
    assert res.returncode == 1, res.stdout + res.stderr  # one file rejected
    assert "3 stored, 0 duplicate(s), 1 rejected" in res.stdout
    assert "readme.txt" in res.stderr
    again = run(minipacs_cmd("import", "--data", str(data), "--no-progress", str(src / "0.dcm")))
    assert again.returncode == 0
    assert "0 stored, 1 duplicate(s), 0 rejected" in again.stdout
    assert len(list((data / "storage").rglob("*.dcm"))) == 3
    log = run(minipacs_cmd("log", "--data", str(data), "--json"))
    assert log.returncode == 0 and log.stdout.strip() == "[]"


@pytest.mark.parametrize("flag", [[], ["--password-stdin"]])
def test_hash_password_reads_a_pipe(flag: list[str]) -> None:
    """Issue 12 item 18: `echo pw | minipacs users hash-password` used to die with EOFError."""
    from minipacs.core.users import verify_password

    res = subprocess.run(
        minipacs_cmd("users", "hash-password", *flag),
        input="s3cret pass\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    line = res.stdout.strip()
    assert line.startswith('password_hash = "') and line.endswith('"')
    assert verify_password("s3cret pass", line.split('"')[1])
    empty = subprocess.run(
        minipacs_cmd("users", "hash-password"), input="", capture_output=True, text=True, timeout=60, check=False
    )
    assert empty.returncode == 2 and "empty password is refused" in empty.stderr
