"""`minipacs anonymize`: into the archive (same pseudonyms on every run: the key file), into a ZIP,
with --delete-original, with a configured key, and the usage errors (in-process)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from minipacs.cli.main import main
from tests.core.test_anonymize import conformant_ct

STUDY = "1.2.826.0.1.3680043.10.4.1"
SERIES = STUDY + ".1"


def _answer(capsys: pytest.CaptureFixture[str], args: list[str], code: int = 0) -> dict[str, object]:
    assert main(["anonymize", *args, "--json"]) == code
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_anonymize_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MINIPACS_ANONYMIZATION_KEY", raising=False)
    source = tmp_path / "src"
    source.mkdir()
    for n in range(2):
        conformant_ct(STUDY, SERIES, f"{SERIES}.{n + 1}").save_as(source / f"{n}.dcm", enforce_file_format=True)
    data = ["--data", str(tmp_path / "data")]
    assert main(["import", *data, "--no-progress", str(source)]) == 0
    capsys.readouterr()
    first = _answer(capsys, [*data, "--study", STUDY, "--option", "retain-patient-characteristics"])
    assert first["instances"] == 2 and str(first["study"]).startswith("2.25.")
    assert (tmp_path / "data" / "anonymization.key").exists()  # generated once, kept
    again = _answer(capsys, [*data, "--study", STUDY, "--option", "retain-patient-characteristics"])
    assert again["study"] == first["study"] and again["patient"] == first["patient"]
    # a ZIP, importable again; another key, other pseudonyms
    monkeypatch.setenv("MINIPACS_ANONYMIZATION_KEY", "another-key-for-this-test")
    out = tmp_path / "anon.zip"
    zipped = _answer(capsys, [*data, "--series", SERIES, "--zip", str(out)])
    assert zipped["study"] != first["study"] and zipfile.ZipFile(out).testzip() is None
    # --delete-original: the original study goes
    moved = _answer(capsys, [*data, "--patient", "PID-7781", "--delete-original"])
    assert moved["original_deleted"] is True
    assert main(["anonymize", *data, "--study", STUDY]) == 2
    assert "no stored instance" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path / "data")]
    assert main(["anonymize", *data]) == 2
    assert "--patient ID, --study UID or --series UID" in capsys.readouterr().err
    assert main(["anonymize", *data, "--study", "1.2.3", "--zip", str(tmp_path / "z.zip"), "--delete-original"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", *data, "--study", "1.2.3", "--option", "retain-everything"])
    assert exc.value.code == 2
