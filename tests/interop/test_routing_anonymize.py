"""Anonymize, then forward (issue 14, the research pipeline): a rule with ``anonymize`` sends
de-identified copies to a real DCMTK storescp, never the originals; the archive keeps only the
originals; the same patient gets the same pseudonym in two studies; receipts and the audit trail say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from minipacs.bootstrap import App
from minipacs.core.routing import study_receipts
from minipacs.index.anonymization_repo import list_mappings
from minipacs.services import route_jobs
from tests.interop.test_routing_interop import ct, node, receive, received, running, storescp, until
from tests.peers import free_port, start_server, wait_for_port

pytestmark = [pytest.mark.interop]

NAME, PID = "Research^Rita", "MRN-77123"


def test_anonymize_then_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_jobs, "ANONYMIZE_BATCH", 1)  # the first study's two instances: two batches
    port, out = free_port(), tmp_path / "dest"
    rules = [{"name": "research", "when": "instance", "send_to": ["DEST"], "anonymize": True}]
    first, second = str(generate_uid()), str(generate_uid())
    series = {first: str(generate_uid()), second: str(generate_uid())}
    sops: list[str] = []
    originals: set[str] = {first, second, *series.values()}

    async def body(app: App) -> None:
        for study, n in ((first, 1), (first, 2), (second, 1)):
            sop = str(generate_uid())
            sops.append(sop)
            await receive(app, ct(tmp_path, study, series[study], n, sop_uid=sop, patient_id=PID, patient_name=NAME))
        originals.update(sops)

        async def delivered() -> bool:
            receipts = [*await study_receipts(app.archive, first), *await study_receipts(app.archive, second)]
            return len(received(out)) >= 3 and len(receipts) == 3 and all(r["status"] == "sent" for r in receipts)

        await until(delivered, "3 de-identified instances delivered")
        receipts = [*await study_receipts(app.archive, first), *await study_receipts(app.archive, second)]
        assert all(r["reason"].startswith("anonymized: a de-identified copy was sent") for r in receipts), receipts
        assert {r["instance"] for r in receipts} == set(sops)  # receipts name the stored originals
        assert not list(app.archive.staging_dir.glob("*.anonymized"))  # the copies are gone from staging

        # the archive holds the originals only: three instances, under their own UIDs
        stored = await app.archive.read(
            lambda conn: conn.execute(text("SELECT sop_instance_uid FROM instances")).scalars().all()
        )
        assert sorted(stored) == sorted(sops)

        # the mapping is stored as the Anonymizer stores it
        rows, _ = await app.archive.read(lambda conn: list_mappings(conn, kind="patient_id", value=PID))
        assert len(rows) == 1 and rows[0]["pseudonym"].startswith("ANON")
        mapped["pid"] = rows[0]["pseudonym"]

        await app.archive.audit.flush()
        audit = await app.archive.audit.query(actor="research")
        actions = sorted({(r["action"], r["actor_kind"]) for r in audit})
        assert actions == [("anonymized", "rule"), ("sent", "rule")], audit
        assert {r["study_uid"] for r in audit if r["action"] == "sent"} == {first, second}
        assert all(r["patient_id"] == PID for r in audit)
        assert any("anonymized" in r["detail"] for r in audit if r["action"] == "sent")

    mapped: dict[str, Any] = {}
    with storescp(port, out):
        running(tmp_path, rules, (node("DEST", port),))(body)

    files = received(out)
    assert len(files) == 3
    pseudonym_ids, studies = set(), set()
    for path in files:
        raw = path.read_bytes()
        for value in (PID, "Research", "Rita", *originals):
            assert value.encode() not in raw, f"{value} found in the forwarded {path.name}"
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        pseudonym_ids.add(str(ds.PatientID))
        studies.add(str(ds.StudyInstanceUID))
        assert str(ds.SOPInstanceUID).startswith("2.25.")
    assert pseudonym_ids == {mapped["pid"]}  # one patient, one pseudonym across both studies
    assert len(studies) == 2


def test_anonymize_then_stow(tmp_path: Path) -> None:
    """STOW-RS to a second minipacs: it stores the de-identified copy only (with the rule's options)."""
    http_port = free_port()
    (tmp_path / "other").mkdir()
    other = start_server(tmp_path / "other", env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false"})
    base = f"http://127.0.0.1:{http_port}/dicom-web"
    rules = [
        {"name": "web-research", "when": "instance", "stow_to": [base], "anonymize": ["retain-long-modified-dates"]}
    ]
    study, series = str(generate_uid()), str(generate_uid())

    async def body(app: App) -> None:
        await receive(app, ct(tmp_path, study, series, 1, patient_id=PID, patient_name=NAME))

        async def sent() -> bool:
            receipts = await study_receipts(app.archive, study)
            return len(receipts) == 1 and receipts[0]["status"] == "sent"

        await until(sent, "the de-identified copy stored by STOW-RS")
        [receipt] = await study_receipts(app.archive, study)
        assert "anonymized" in receipt["reason"] and "retain-long-modified-dates" in receipt["reason"]
        assert httpx.get(f"{base}/studies", params={"PatientID": PID}).json() == []
        by_uid = httpx.get(f"{base}/studies/{study}/instances")
        assert by_uid.status_code in (204, 404) or by_uid.json() == [], by_uid.text  # not under the original UID
        [found] = httpx.get(f"{base}/studies").json()
        assert found["00100020"]["Value"][0].startswith("ANON")
        assert found["00080020"]["Value"][0] != "20240131"  # the study date moved by the patient's shift

    try:
        wait_for_port("127.0.0.1", http_port, proc=other.proc)
        running(tmp_path, rules, ())(body)
    finally:
        other.stop()
