"""`minipacs labels`: list labels in use; show, add and remove a study's labels; bad input refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.labels import labels_of
from minipacs.core.model import Origin
from tests.dicomgen import write_ct


def test_labels_of_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, study = tmp_path / "data", str(generate_uid())

    async def store() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            await archive.import_file(write_ct(tmp_path / "a.dcm", study_uid=study), Origin("test"))
        finally:
            await archive.close()

    asyncio.run(store())
    base = ["labels", "--data", str(data)]
    assert main([*base, "--study", study, "--add", "keep", "--add", "teaching", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"study": study, "labels": ["keep", "teaching"]}
    assert main([*base, "--study", study, "--remove", "teaching"]) == 0
    assert capsys.readouterr().out.strip() == f"{study}: keep"
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"labels": [{"label": "keep", "studies": 1}]}

    # refused, nothing changed: a bad label, an unknown study, --add without --study
    assert main([*base, "--study", study, "--add", "no spaces"]) == 2
    assert "label" in capsys.readouterr().err
    assert main([*base, "--study", "1.2.3.404", "--add", "keep"]) == 2
    assert "not in the archive" in capsys.readouterr().err
    assert main([*base, "--add", "keep"]) == 2
    assert "--study" in capsys.readouterr().err

    async def read() -> list[str]:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            return await labels_of(archive, study)
        finally:
            await archive.close()

    assert asyncio.run(read()) == ["keep"]
