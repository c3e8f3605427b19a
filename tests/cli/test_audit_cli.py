"""`minipacs audit`: the same query as GET /api/audit from the command line, here over rows the CLI
itself wrote (`minipacs anonymize` and `minipacs export` are audited with actor kind "cli")."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from minipacs.cli.main import main
from tests.core.test_anonymize import conformant_ct

STUDY = "1.2.826.0.1.3680043.10.4.9"
SERIES = STUDY + ".1"


def _rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["audit", *args, "--json"]) == 0
    out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return out


def test_audit_lists_what_the_command_line_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    conformant_ct(STUDY, SERIES, f"{SERIES}.1").save_as(source / "1.dcm", enforce_file_format=True)
    data = ["--data", str(tmp_path / "data")]
    assert main(["import", *data, "--no-progress", str(source)]) == 0
    assert main(["anonymize", *data, "--study", STUDY]) == 0
    assert main(["export", *data, "--study", STUDY, "--dicomdir", str(tmp_path / "cd")]) == 0
    capsys.readouterr()

    rows = _rows(capsys, *data, "--study", STUDY)
    assert [r["action"] for r in rows] == ["exported", "anonymized"]  # newest first
    assert {(r["actor_kind"], r["actor"], r["patient_id"]) for r in rows} == {("cli", getpass.getuser(), "PID-7781")}
    assert "1 instance(s) de-identified (basic profile) into 1 new study(ies)" in rows[1]["detail"]
    assert [r["action"] for r in _rows(capsys, *data, "--patient", "PID-7781", "--limit", "1")] == ["exported"]
    assert _rows(capsys, *data, "--user", "somebody-else") == []
    assert _rows(capsys, *data, "--since", "2999-01-01") == []
    # each reading of the trail is in it (Audit Log Used), written as the command ends: the four above
    rows = _rows(capsys, *data, "--until", "2999-01-01T00:00:00Z")
    assert [r["action"] for r in rows] == ["audit_read"] * 4 + ["exported", "anonymized"]
    assert rows[0]["detail"] == "minipacs audit --since 2999-01-01" and rows[0]["actor_kind"] == "cli"
    assert rows[3]["detail"] == f"minipacs audit --study {STUDY}" and rows[3]["actor"] == getpass.getuser()
    # text output: one line per row
    assert main(["audit", *data, "--study", STUDY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "anonymized" in lines[1] and f"study {STUDY}" in lines[1]


def test_audit_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path / "data")]
    assert main(["audit", *data, "--since", "yesterday"]) == 2
    assert "not an ISO 8601 date" in capsys.readouterr().err
    assert main(["audit", *data, "--limit", "1001"]) == 2
    assert main(["audit", *data, "--limit", "1000"]) == 0
