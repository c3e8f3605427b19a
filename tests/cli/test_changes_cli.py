"""`minipacs changes`: the changes journal on the command line (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.cli.main import main
from tests.dicomgen import write_ct


def test_changes_pages_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = generate_uid()
    sops = [generate_uid() for _ in range(2)]
    for n, sop in enumerate(sops):
        write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=study, series_uid=f"{study[:60]}.1", sop_uid=sop)
    data = str(tmp_path / "data")
    assert main(["import", "--data", data, "--no-progress", str(tmp_path / "src")]) == 0
    capsys.readouterr()
    assert main(["changes", "--data", data, "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "NewPatient" in lines[0] and "NewStudy" in lines[1]
    assert lines[-1] == "last seq 2; more: minipacs changes --since 2"
    assert main(["changes", "--data", data, "--since", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["type"] for c in out["changes"]] == ["NewSeries", "NewInstance", "NewInstance"]
    assert sorted(c["uid"] for c in out["changes"][1:]) == sorted(sops) and out["done"] is True
    assert out["last"] == out["changes"][-1]["seq"] == 5


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "1001"], ["--since", "-1"]])
def test_bad_bounds_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["changes", "--data", str(tmp_path / "data"), *args]) == 2
    assert "--limit from 1 to 1000" in capsys.readouterr().err
