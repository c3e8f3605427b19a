"""GET /api/rejections: the instances rejection notes rejected (core/rejection.py), with why and by whom; and
a rejection note sent by STOW-RS: refused before it is stored with the FailureReason C-STORE would answer."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.core.rejection import Rejections, read_note
from tests.core.test_rejection import rejection_note
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow


def test_the_rejected_instances_are_listed_with_the_note_and_its_sender(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/api/rejections")).json() == {"total": 0, "rejected": []}
        study, other, series = str(generate_uid()), str(generate_uid()), str(generate_uid())
        first = read_note(rejection_note(study, [(series, str(generate_uid())) for _ in range(3)]))
        second = read_note(rejection_note(other, [(series, str(generate_uid()))], code="113039"))
        assert first is not None and second is not None
        rejections = Rejections(archive)
        await rejections.apply(first, Origin("dicom", "CT_ROOM_1", "MINIPACS", "10.1.2.3", 104))
        await rejections.apply(second, Origin("stow", peer_host="127.0.0.1"))
        answer = (await client.get("/api/rejections")).json()
        assert answer["total"] == 4 and len(answer["rejected"]) == 4
        newest = answer["rejected"][0]
        assert newest["code"] == "113039" and newest["meaning"] == "Data Retention Policy Expired"
        assert newest["note_uid"] == second.note_uid and newest["actor"] == "stow 127.0.0.1"
        of_study = (await client.get(f"/api/rejections?study={study}&limit=2&offset=1")).json()
        assert of_study["total"] == 3 and len(of_study["rejected"]) == 2
        assert {r["actor"] for r in of_study["rejected"]} == {"CT_ROOM_1 10.1.2.3"}
        for bad in ("limit=0", "limit=1001", "offset=-1", "study=1.2.x", "limit=1e3"):
            assert (await client.get(f"/api/rejections?{bad}")).status_code == 400, bad

    web(body)


def _note_bytes(study: str, references: list[tuple[str, str]]) -> tuple[bytes, str]:
    note = rejection_note(study, references)
    note.file_meta = pydicom.dataset.FileMetaDataset()
    note.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    out = io.BytesIO()
    note.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(note.SOPInstanceUID)


@pytest.mark.parametrize(("mode", "reason"), [("off", 0xA775), ("registered", None)])
def test_a_rejection_note_sent_by_stow_rs(web: Callable[..., Any], mode: str, reason: int | None) -> None:
    """PS3.18 10.5.3: a refused note is a Failed SOP (FailureReason 0xA775, as C-STORE answers it), the
    request 409 when nothing was stored; an HTTP user allowed to store may reject (mode registered)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        rejections = Rejections(archive, mode)
        rejections.start()
        try:
            study, series, sop = str(generate_uid()), str(generate_uid()), str(generate_uid())
            assert (await stow(client, part10(study_uid=study, series_uid=series, sop_uid=sop))).status_code == 200
            note, note_uid = _note_bytes(study, [(series, sop)])
            r = await stow(client, note)
            await rejections.settled()
            uids = await archive.read(
                lambda c: {row[0] for row in c.exec_driver_sql("SELECT sop_instance_uid FROM instances")}
            )
            if reason is None:
                assert r.status_code == 200, r.text
                assert uids == {note_uid} and rejections.applied == 1
                return
            assert r.status_code == 409, r.text
            failed = r.json()["00081198"]["Value"]
            assert failed == [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.59"]},
                    "00081155": {"vr": "UI", "Value": [note_uid]},
                    "00081197": {"vr": "US", "Value": [reason]},
                }
            ]
            assert "A775" in r.headers["Warning"]
            assert uids == {sop} and rejections.applied == 0
            mixed = await stow(client, note, part10(study_uid=study))  # the other part is stored
            assert mixed.status_code == 202, mixed.text
        finally:
            await rejections.close()

    web(body)
