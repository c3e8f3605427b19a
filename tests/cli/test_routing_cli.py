"""`minipacs rules list|check` and `minipacs deliveries --study`, in process, on a data folder."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.routing import receipt_row
from minipacs.index import routing_repo

CONFIG = """
[[nodes]]
ae_title = "AI_NODE"
host = "127.0.0.1"
port = 11119

[[rules]]
name = "ct-to-ai"
when = "stable"
stable_seconds = 30
match = { Modality = "CT" }
calling_aet = "CT01"
send_to = ["AI_NODE"]

[[rules]]
name = "to-archive"
when = "instance"
send_to = ["LONGTERM"]
"""


def test_rules_list_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "minipacs.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nfsync = false\n{CONFIG}')
    assert main(["rules", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ct-to-ai" in out and "stable" in out and "config file, read-only" in out and '"CT01"' in out
    assert main(["rules", "list", "--config", str(config), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["ct-to-ai", "to-archive"] and listed[0]["match"] == {"Modality": "CT"}
    assert main(["rules", "check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "rule 'to-archive': send_to names 'LONGTERM', which is not a registered node" in err
    assert "ct-to-ai" not in err


def test_deliveries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    study = str(generate_uid())
    sops = [str(generate_uid()) for _ in range(2)]

    async def seed() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            rows = [receipt_row(3, "ct-to-ai", "C-STORE", "AI_NODE", study, "1.2.3", s) for s in sops]
            await archive.write(lambda conn: routing_repo.insert_deliveries(conn, rows))
            now = dt.datetime.now(dt.UTC)
            await archive.write(lambda c: routing_repo.set_job_deliveries(c, 3, "sent", "", now, sops=sops[:1]))
            why = "AI_NODE refused it: 0xA700 Out of Resources"
            await archive.write(lambda c: routing_repo.set_job_deliveries(c, 3, "failed", why, now, sops=sops[1:]))
        finally:
            await archive.close()

    asyncio.run(seed())
    assert main(["deliveries", "--study", study, "--data", str(data)]) == 1  # not everything delivered
    out = capsys.readouterr().out
    assert "ct-to-ai -> AI_NODE (C-STORE): 1 failed, 1 sent" in out
    assert f"failed    AI_NODE          {sops[1]} — AI_NODE refused it" in out and sops[0] not in out
    assert main(["deliveries", "--study", study, "--data", str(data), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d["status"] for d in doc["deliveries"]] == ["sent", "failed"]
    other = str(generate_uid())
    assert main(["deliveries", "--study", other, "--data", str(data)]) == 0
    assert "no delivery recorded" in capsys.readouterr().out
    assert main(["deliveries", "--study", "../etc", "--data", str(data)]) == 2
