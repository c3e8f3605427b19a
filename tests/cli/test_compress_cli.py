"""`minipacs compress --study UID [--dry-run] [--policy NAME] [--storage]`, in process, on a data folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.model import Origin
from tests.core.test_compression import _no_pixels, image, save
from tests.stored_files import instance_path


def test_compress_a_study_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, study = tmp_path / "data", generate_uid()
    ds, arr = image("multiframe", study)
    bare, _ = image("8bit", study)
    _no_pixels(bare)

    async def store() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            for n, item in enumerate((ds, bare)):
                await archive.import_file(save(item, tmp_path / f"{n}.dcm"), Origin("test"))
        finally:
            await archive.close()

    asyncio.run(store())
    config = tmp_path / "minipacs.toml"
    config.write_text(
        f'data_dir = "{data}"\nfsync = false\n\n'
        '[[compression]]\nname = "ct-rle"\nsyntax = "rle"\nmatch = { Modality = "CT" }\n'
    )
    assert main(["compress", "--config", str(config)]) == 2  # no --study
    assert "needs --study" in capsys.readouterr().err
    assert main(["compress", "--config", str(config), "--study", study, "--policy", "mr"]) == 2
    assert "no [[compression]] policy named 'mr' (ct-rle)" in capsys.readouterr().err

    assert main(["compress", "--config", str(config), "--study", study, "--policy", "ct-rle", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would compress" in out and "it has no Pixel Data" in out and "1 of 2 instance(s) to rle: would save" in out
    assert main(["compress", "--config", str(config), "--study", study, "--storage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"][study]["saved_bytes"] == 0  # a dry run changes nothing

    assert main(["compress", "--config", str(config), "--study", study, "--policy", "ct-rle", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = sorted(i["status"] for i in report["instances"])
    assert statuses == ["compressed", "skipped"] and report["syntax"] == "rle"
    assert report["studies"][study]["saved_bytes"] > 0 and report["studies"][study]["skipped"] == 1
    assert main(["compress", "--config", str(config), "--study", study]) == 0
    assert "nothing to compress" in capsys.readouterr().out  # each instance is looked at once
    assert main(["compress", "--config", str(config), "--storage", "--study", study]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("archive: 2 instance(s)") and "1 compressed, 1 skipped" in lines[1]

    async def check() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            path = await instance_path(archive, str(ds.SOPInstanceUID))
        finally:
            await archive.close()
        stored = pydicom.dcmread(path)
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
        assert np.array_equal(stored.pixel_array, arr)

    asyncio.run(check())


def test_compression_policies_in_the_config_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for table, words in (
        ('name = "a"\nsyntax = "jpeg-baseline"', "syntax 'jpeg-baseline' is not one of"),
        (
            'name = "a"\nsyntax = "rle"\nwhen = "ingest"\nolder_than_days = 30',
            'older_than_days needs when = "background"',
        ),
    ):
        config = tmp_path / "bad.toml"
        config.write_text(f"[[compression]]\n{table}\n")
        assert main(["compress", "--config", str(config), "--storage"]) == 2
        assert words in capsys.readouterr().err
    config.write_text('[[compression]]\nname = "a"\nsyntax = "rle"\n\n[[compression]]\nname = "a"\nsyntax = "rle"\n')
    assert main(["compress", "--config", str(config), "--storage"]) == 2
    assert "name 'a' is used twice" in capsys.readouterr().err
