"""Rejection notes over C-STORE (IHE IOCM RAD-66; core/rejection.py), pynetdicom as the sending peer, to the
server bootstrap wires: a note that cannot be applied is answered with a failure status and an Error
Comment that says why (PS3.4 B.2.3, PS3.7 C.4: an LO, at most 64 characters) -- 0xA775 when its sender
may not reject, 0xC002 when it lists no instance -- and nothing is stored or rejected; a registered
node's note is answered Success and applied.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from minipacs.bootstrap import App
from minipacs.core.nodes import Node
from minipacs.core.rejection import KEY_OBJECT_SELECTION
from tests.core.test_rejection import rejection_note
from tests.dicomgen import CT_IMAGE_STORAGE, make_ct
from tests.services.test_access_server import SERVER_AE, serving

pytestmark = pytest.mark.interop


def send(port: int, calling: str, datasets: list[Dataset]) -> list[tuple[int, str]]:
    """(Status, Error Comment) of each C-STORE, sent by pynetdicom on one association."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for uid in (CT_IMAGE_STORAGE, KEY_OBJECT_SELECTION):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE)
    assert assoc.is_established
    answers = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return answers


def _explicit(ds: Dataset) -> Dataset:
    """``ds`` as pynetdicom sends it: explicit VR little endian, UIDs in its file meta."""
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


async def _stored(app: App) -> set[str]:
    rows = await app.archive.read(lambda c: c.exec_driver_sql("SELECT sop_instance_uid FROM instances").all())
    return {r[0] for r in rows}


@pytest.mark.parametrize(
    ("mode", "calling", "status", "comment"),
    [
        ("registered", "STRANGER", 0xA775, "Only registered nodes may reject here; nothing was rejected"),
        ("off", "CT_ROOM_1", 0xA775, "Rejection notes are not accepted here; nothing was rejected"),
        ("registered", "CT_ROOM_1", 0x0000, ""),
        ("any", "STRANGER", 0x0000, ""),
    ],
    ids=["unregistered", "off", "registered", "any"],
)
def test_the_peer_is_told_whether_its_rejection_note_was_taken(
    tmp_path: Path, mode: str, calling: str, status: int, comment: str
) -> None:
    async def main() -> None:
        async with serving(tmp_path, rejection_notes=mode) as app:
            await app.nodes.add(Node("CT_ROOM_1", "127.0.0.1", 104))
            study, series = str(generate_uid()), str(generate_uid())
            images = [make_ct(study_uid=study, series_uid=series, sop_uid=generate_uid()) for _ in range(2)]
            note = _explicit(rejection_note(study, [(series, images[0].SOPInstanceUID)]))
            port = app.dicom.port
            assert await asyncio.to_thread(send, port, "CT_ROOM_1", images) == [(0, ""), (0, "")]
            answer = await asyncio.to_thread(send, port, calling, [note])
            assert answer == [(status, comment)]
            assert app.rejections is not None
            await app.rejections.settled()
            stored = await _stored(app)
            if status:
                assert stored == {i.SOPInstanceUID for i in images}  # nothing rejected, the note not stored
                assert app.rejections.applied == 0
            else:
                assert stored == {images[1].SOPInstanceUID, note.SOPInstanceUID}
                assert app.rejections.applied == 1
                again = await asyncio.to_thread(send, port, "CT_ROOM_1", [images[0]])
                assert again == [(0xA771, "A rejection note rejected this instance; it is not stored again")]

    asyncio.run(main())


def test_a_note_listing_no_instance_is_answered_0xC002(tmp_path: Path) -> None:
    """With the intake log on (fsync), a small C-STORE is received into memory: judged from its bytes."""

    async def main() -> None:
        async with serving(tmp_path, fsync=True) as app:
            assert app.archive.memory_staging_bytes(ExplicitVRLittleEndian) > 0
            await app.nodes.add(Node("CT_ROOM_1", "127.0.0.1", 104))
            note = _explicit(rejection_note(str(generate_uid()), []))
            answer = await asyncio.to_thread(send, app.dicom.port, "CT_ROOM_1", [note])
            assert answer == [(0xC002, "Rejection note evidence empty or invalid; nothing was rejected")]
            assert await _stored(app) == set()
            ct = make_ct(study_uid=str(generate_uid()), series_uid=str(generate_uid()), sop_uid=generate_uid())
            assert await asyncio.to_thread(send, app.dicom.port, "CT_ROOM_1", [ct]) == [(0, "")]
            good = _explicit(rejection_note(ct.StudyInstanceUID, [(ct.SeriesInstanceUID, ct.SOPInstanceUID)]))
            assert await asyncio.to_thread(send, app.dicom.port, "CT_ROOM_1", [good]) == [(0, "")]
            assert app.rejections is not None
            await app.rejections.settled()
            assert await _stored(app) == {good.SOPInstanceUID}

    asyncio.run(main())
