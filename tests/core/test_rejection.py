"""Rejection notes (IHE IOCM; core/rejection.py): a Key Object Selection titled with a CID 7011 code
deletes the instances it lists, and a later store of one is refused with 0xA771, but after 113039; a
note that cannot be applied is refused BEFORE it is stored (0xA775, 0xC002, 0xA700), and nothing is
stored or rejected.

In process, on the archive with ``Rejections`` started as serve starts it; who may reject is checked
for each ``rejection_notes`` mode. tests/services/test_rejection_store.py sends notes with pynetdicom to
the server bootstrap wires, tests/web/test_rest_rejections.py with STOW-RS, and
tests/interop/test_rejection_interop.py with DCMTK storescu to a running ``minipacs serve``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import ConfigError, Settings
from minipacs.core.archive import Archive
from minipacs.core.errors import (
    PreviouslyRejected,
    RejectionNotAllowed,
    RejectionNotesOff,
    RejectionNoteTooLarge,
    UnregisteredRejecter,
)
from minipacs.core.model import Origin
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.rejection import KEY_OBJECT_SELECTION, RejectionNoteError, Rejections, read_note, read_staged
from minipacs.core.staging import stage_file
from minipacs.index import rejection_repo
from minipacs.services.status import ERROR_COMMENT_MAX, describe, error_comment, status_for_store_error
from tests.dicomgen import write_ct

MODALITY = Origin("dicom", "CT_ROOM_1", "MINIPACS", "127.0.0.1", 40000)
STRANGER = Origin("dicom", "STRANGER", "MINIPACS", "127.0.0.9", 40000)


def rejection_note(
    study: str, references: list[tuple[str, str]], code: str = "113001", scheme: str = "DCM", series: str = ""
) -> Dataset:
    """A Key Object Selection Document (PS3.3 A.35.4) of ``study`` titled ``code`` listing (series, SOP)."""
    ds = Dataset()
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "KO"
    ds.PatientID, ds.PatientName = "P1", "Doe^John"
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code, scheme, "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = Sequence([title])
    by_series: dict[str, list[str]] = {}
    for series_uid, sop in references:
        by_series.setdefault(series_uid, []).append(sop)
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = Sequence()
    for series_uid, sops in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = Sequence()
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
            item.ReferencedSOPSequence.append(ref)
        evidence.ReferencedSeriesSequence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.save_as(path, enforce_file_format=True)
    return path


async def _stored(archive: Archive) -> set[str]:
    return await archive.read(lambda c: {r[0] for r in c.exec_driver_sql("SELECT sop_instance_uid FROM instances")})


def _run(tmp_path: Path, body: Any, mode: str = "registered") -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        rejections = Rejections(archive, mode)
        rejections.start()
        try:
            await NodeRegistry(archive).add(Node("CT_ROOM_1", "127.0.0.1", 104))
            await body(archive, rejections)
        finally:
            await rejections.close()
            await archive.close()

    asyncio.run(main())


def test_reading_a_note_takes_only_rejection_titles_and_checks_what_it_lists() -> None:
    study, series = str(generate_uid()), str(generate_uid())
    sops = [str(generate_uid()) for _ in range(3)]
    note = read_note(rejection_note(study, [(series, s) for s in sops] + [(series, sops[0])]))
    assert note is not None and note.code == "113001" and note.meaning == "Rejected for Quality Reasons"
    assert note.references == tuple((study, series, s) for s in sops)  # each once
    for code in ("113037", "113038", "113039"):
        assert read_note(rejection_note(study, [(series, sops[0])], code=code)) is not None
    assert read_note(rejection_note(study, [(series, sops[0])], code="113000")) is None  # another KOS title
    assert read_note(rejection_note(study, [(series, sops[0])], scheme="99LOCAL")) is None
    other = rejection_note(study, [(series, sops[0])])
    other.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # an SR with the same title: not a KOS
    assert read_note(other) is None
    with pytest.raises(RejectionNoteError, match="lists no instance"):
        read_note(rejection_note(study, []))
    for bad in ("1.2.x", "1." * 40):  # a hostile note: not a UID, longer than 64
        broken = rejection_note(study, [(series, sops[0])])
        item = broken.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        ref = item.ReferencedSOPSequence[0]
        ref[0x00081155] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(0x00081155), "UI", len(bad), bad.encode(), 0, False, True
        )
        with pytest.raises(RejectionNoteError, match="invalid UID"):
            read_note(broken)


def test_a_note_deletes_what_it_lists_and_a_rejected_instance_is_refused_after(tmp_path: Path) -> None:
    async def body(archive: Archive, rejections: Rejections) -> None:
        study, series = str(generate_uid()), str(generate_uid())
        files = [write_ct(tmp_path / f"{n}.dcm", study_uid=study, series_uid=series) for n in range(3)]
        for path in files:
            await archive.import_file(path, MODALITY)
        sops = [pydicom.dcmread(p).SOPInstanceUID for p in files]
        later = str(generate_uid())  # listed before it was stored
        assert not archive.rejections_possible
        note = rejection_note(study, [(series, sops[0]), (series, sops[1]), (series, later)])
        stored = await archive.import_file(_save(note, tmp_path / "note.dcm"), MODALITY)
        await rejections.settled()
        assert rejections.applied == 1 and archive.rejections_possible
        assert await _stored(archive) == {sops[2], stored.sop_instance_uid}  # the note itself stays
        rows, total = await archive.read(lambda c: rejection_repo.listed(c, study=study))
        assert total == 3 and {r["code"] for r in rows} == {"113001"}
        assert {r["note_uid"] for r in rows} == {note.SOPInstanceUID}
        with pytest.raises(PreviouslyRejected, match=r"rejected by a rejection note \(113001, DCM\)") as refused:
            await archive.import_file(files[0], MODALITY)
        assert status_for_store_error(refused.value) == 0xA771
        assert "Subsequent occurrence of a rejected object" in describe(0xA771)
        late = write_ct(tmp_path / "late.dcm", study_uid=study, series_uid=series, sop_uid=later)
        with pytest.raises(PreviouslyRejected):
            await archive.import_file(late, MODALITY)
        assert await _stored(archive) == {sops[2], stored.sop_instance_uid}
        await archive.audit.flush()
        audit = await archive.read(
            lambda c: c.exec_driver_sql("SELECT action, actor, detail, outcome FROM audit").all()
        )
        assert any(a == "deleted" and actor == "CT_ROOM_1" and "2 instance(s) deleted" in d for a, actor, d, _ in audit)

    _run(tmp_path, body)


def test_after_data_retention_policy_expired_the_instance_may_be_stored_again(tmp_path: Path) -> None:
    async def body(archive: Archive, rejections: Rejections) -> None:
        study, series = str(generate_uid()), str(generate_uid())
        path = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=series)
        sop = pydicom.dcmread(path).SOPInstanceUID
        await archive.import_file(path, MODALITY)
        note = rejection_note(study, [(series, sop)], code="113039")
        await archive.import_file(_save(note, tmp_path / "note.dcm"), MODALITY)
        await rejections.settled()
        assert sop not in await _stored(archive)
        await archive.import_file(path, MODALITY)  # a deliberate restore
        assert sop in await _stored(archive)

    _run(tmp_path, body)


@pytest.mark.parametrize(
    ("mode", "origin", "refusal"),
    [
        ("registered", MODALITY, None),
        ("registered", STRANGER, UnregisteredRejecter),
        ("registered", Origin("stow", peer_host="127.0.0.1"), None),
        ("any", STRANGER, None),
        ("off", MODALITY, RejectionNotesOff),
        ("off", Origin("stow", peer_host="127.0.0.1"), RejectionNotesOff),
    ],
    ids=["registered-node", "unregistered-peer", "http-user", "any-peer", "off", "off-http-user"],
)
def test_who_may_reject(tmp_path: Path, mode: str, origin: Origin, refusal: type[RejectionNotAllowed] | None) -> None:
    """A note its sender may not make is refused before it is stored: the store fails, the note is not
    stored, nothing is rejected or recorded, and the audit trail says why."""

    async def body(archive: Archive, rejections: Rejections) -> None:
        study, series = str(generate_uid()), str(generate_uid())
        path = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=series)
        sop = pydicom.dcmread(path).SOPInstanceUID
        await archive.import_file(path, MODALITY)
        note = rejection_note(study, [(series, sop)])
        note_file = _save(note, tmp_path / "note.dcm")
        if refusal is None:
            await archive.import_file(note_file, origin)
            await rejections.settled()
            assert await _stored(archive) == {note.SOPInstanceUID}
            assert rejections.applied == 1 and rejections.refused == 0
            return
        with pytest.raises(refusal) as refused:
            await archive.import_file(note_file, origin)
        assert status_for_store_error(refused.value) == 0xA775
        assert "Rejection not allowed" in describe(0xA775)
        comment = error_comment(0xA775, refused.value)
        assert len(comment) <= ERROR_COMMENT_MAX and "nothing was rejected" in comment
        assert ("registered nodes" if refusal is UnregisteredRejecter else "not accepted here") in comment
        await rejections.settled()
        assert await _stored(archive) == {sop}  # the image stays, the note was not stored
        assert rejections.applied == 0 and rejections.refused == 1
        assert not archive.rejections_possible
        assert (await archive.read(lambda c: rejection_repo.listed(c)))[1] == 0
        await archive.audit.flush()
        audit = await archive.read(lambda c: c.exec_driver_sql("SELECT detail, outcome FROM audit").all())
        why = "is not a registered node" if refusal is UnregisteredRejecter else "rejection_notes = off"
        assert any("rejection note refused" in d and why in d and o == 4 for d, o in audit), audit
        await archive.import_file(path, MODALITY)  # nothing recorded: it may be stored again

    _run(tmp_path, body, mode)


def test_a_restart_knows_there_were_rejections_and_refuses_at_once(tmp_path: Path) -> None:
    study, series = str(generate_uid()), str(generate_uid())
    path = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=series)
    sop = pydicom.dcmread(path).SOPInstanceUID

    async def body(archive: Archive, rejections: Rejections) -> None:
        await archive.import_file(path, MODALITY)
        await archive.import_file(_save(rejection_note(study, [(series, sop)]), tmp_path / "note.dcm"), MODALITY)
        await rejections.settled()

    _run(tmp_path, body)

    async def again() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            assert archive.rejections_possible  # read at start: no listener needed to refuse
            with pytest.raises(PreviouslyRejected):
                await archive.import_file(path, MODALITY)
        finally:
            await archive.close()

    asyncio.run(again())


@pytest.mark.parametrize("lists", ["nothing", "itself"])
def test_a_note_listing_no_instance_is_refused_and_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, lists: str
) -> None:
    """The evidence (0040,A375, Type 1 in the Key Object Document Module) must name an instance to reject,
    other than the note: else 0xC002, from a registered node too, and nothing is stored."""

    async def body(archive: Archive, rejections: Rejections) -> None:
        study, series = str(generate_uid()), str(generate_uid())
        path = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=series)
        await archive.import_file(path, MODALITY)
        note = rejection_note(study, [], series=series)
        if lists == "itself":
            note = rejection_note(study, [(series, "1.2.3.4")], series=series)
            ref = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = note.SOPInstanceUID
        with pytest.raises(RejectionNoteError, match="lists no instance") as refused:
            await archive.import_file(_save(note, tmp_path / "note.dcm"), MODALITY)
        assert status_for_store_error(refused.value) == 0xC002
        assert error_comment(0xC002, refused.value) == "Rejection note evidence empty or invalid; nothing was rejected"
        await rejections.settled()
        assert rejections.refused == 1 and rejections.applied == 0
        assert await _stored(archive) == {pydicom.dcmread(path).SOPInstanceUID}

    _run(tmp_path, body)
    assert "lists no instance" in caplog.text


def test_another_key_object_selection_is_stored_as_it_is(tmp_path: Path) -> None:
    """A Key Object Selection with another title (a key image note, 113000 "Of Interest"), or with a
    rejection code of another scheme, is no rejection note: stored, even with no evidence, in mode off."""

    async def body(archive: Archive, rejections: Rejections) -> None:
        study = str(generate_uid())
        for n, (code, scheme) in enumerate((("113000", "DCM"), ("113001", "99LOCAL"))):
            note = rejection_note(study, [], code=code, scheme=scheme)
            stored = await archive.import_file(_save(note, tmp_path / f"kos{n}.dcm"), STRANGER)
            assert stored.sop_instance_uid == note.SOPInstanceUID
        await rejections.settled()
        assert len(await _stored(archive)) == 2 and rejections.refused == 0

    _run(tmp_path, body, "off")


def test_rejection_notes_setting_is_validated() -> None:
    for mode in ("registered", "any", "off"):
        Settings(rejection_notes=mode).validate()
    with pytest.raises(ConfigError, match="rejection_notes must be registered, any or off"):
        Settings(rejection_notes="all").validate()


def test_a_note_naming_every_image_of_two_series_removes_each_series_once(tmp_path: Path) -> None:
    """One transaction: the instances of every series, then one pass over the parents left empty (the
    changes journal has each series deleted exactly once; the study keeps the note's own series)."""

    async def body(archive: Archive, rejections: Rejections) -> None:
        study = str(generate_uid())
        refs = []
        for s in range(2):
            series = str(generate_uid())
            for n in range(2):
                path = write_ct(tmp_path / f"{s}-{n}.dcm", study_uid=study, series_uid=series)
                await archive.import_file(path, MODALITY)
                refs.append((series, pydicom.dcmread(path).SOPInstanceUID))
        other = str(generate_uid())  # the note's own series, in the same study: the study stays
        await archive.import_file(_save(rejection_note(study, refs, series=other), tmp_path / "n.dcm"), MODALITY)
        await rejections.settled()
        assert rejections.applied == 1
        rows = await archive.read(
            lambda c: c.exec_driver_sql("SELECT level, uid FROM changes WHERE change_type = 'Deleted'").all()
        )
        by_level: dict[str, list[str]] = {}
        for level, name in rows:
            by_level.setdefault(level, []).append(name)
        assert sorted(by_level["instance"]) == sorted(sop for _, sop in refs)
        assert sorted(by_level["series"]) == sorted({series for series, _ in refs})
        assert "study" not in by_level  # the note's own series keeps the study

    _run(tmp_path, body)


def test_a_note_at_max_references_is_read_and_one_more_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from minipacs.core import rejection

    monkeypatch.setattr(rejection, "MAX_REFERENCES", 3)
    study, series = str(generate_uid()), str(generate_uid())
    at = read_note(rejection_note(study, [(series, str(generate_uid())) for _ in range(3)]))
    assert at is not None and len(at.references) == 3
    with pytest.raises(RejectionNoteTooLarge, match="more than 3 instances") as refused:
        read_note(rejection_note(study, [(series, str(generate_uid())) for _ in range(4)]))
    assert status_for_store_error(refused.value) == 0xA700
    assert error_comment(0xA700, refused.value) == "Rejection note too large here; split it into several notes"


def test_a_note_at_max_note_bytes_is_read_and_one_byte_larger_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from minipacs.core import rejection

    async def body(archive: Archive, rejections: Rejections) -> None:
        study, series = str(generate_uid()), str(generate_uid())
        note = _save(rejection_note(study, [(series, str(generate_uid()))]), tmp_path / "n.dcm")
        stored = await archive.import_file(note, Origin("import"))
        await rejections.settled()
        size = archive.blobs.size(stored.relative_path)
        monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", size)
        assert rejections._read(stored.relative_path) is not None
        monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", size - 1)
        with pytest.raises(RejectionNoteError, match=f"larger than {size - 1} bytes"):
            rejections._read(stored.relative_path)

    _run(tmp_path, body)


def test_a_staged_note_at_max_note_bytes_is_read_and_one_byte_larger_is_refused_unstored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before it is stored: a rejection note of MAX_NOTE_BYTES is read; one byte more is refused (0xA700)
    from its title alone; a Key Object Selection of another title that large is stored as it is."""
    from minipacs.core import rejection

    study, series = str(generate_uid()), str(generate_uid())
    note_file = _save(rejection_note(study, [(series, str(generate_uid()))]), tmp_path / "n.dcm")
    other_file = _save(rejection_note(study, [], code="113000"), tmp_path / "kos.dcm")
    staged = stage_file(tmp_path, note_file, 1 << 20)
    size = staged.path.stat().st_size
    monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", size)
    note = read_staged(staged, 64)
    assert note is not None and note.code == "113001"
    monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", size - 1)
    with pytest.raises(RejectionNoteTooLarge, match=f"larger than {size - 1} bytes"):
        read_staged(staged, 64)
    other = stage_file(tmp_path, other_file, 1 << 20)
    monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", other.path.stat().st_size - 1)
    assert read_staged(other, 64) is None

    async def body(archive: Archive, rejections: Rejections) -> None:
        monkeypatch.setattr(rejection, "MAX_NOTE_BYTES", 16)
        with pytest.raises(RejectionNoteTooLarge):
            await archive.import_file(note_file, MODALITY)
        await archive.import_file(other_file, MODALITY)
        assert await _stored(archive) == {pydicom.dcmread(other_file).SOPInstanceUID}

    _run(tmp_path, body)


def test_a_note_received_into_memory_is_judged_from_its_bytes(tmp_path: Path) -> None:
    """A small C-STORE is staged in memory (core/staging.py): nothing at its path, the whole file in
    ``data``; the note is read from those bytes, a broken one refused as the ingest would refuse it."""
    import dataclasses

    from minipacs.core.errors import BrokenDataset

    study, series = str(generate_uid()), str(generate_uid())
    sop = str(generate_uid())
    staged = stage_file(tmp_path, _save(rejection_note(study, [(series, sop)]), tmp_path / "n.dcm"), 1 << 20)
    data = staged.path.read_bytes()
    staged.path.unlink()
    in_memory = dataclasses.replace(staged, data=data)
    note = read_staged(in_memory, 64)
    assert note is not None and note.references == ((study, series, sop),)
    empty = stage_file(tmp_path, _save(rejection_note(study, []), tmp_path / "e.dcm"), 1 << 20)
    with pytest.raises(RejectionNoteError, match="lists no instance"):
        read_staged(dataclasses.replace(empty, data=empty.path.read_bytes()), 64)
    with pytest.raises(BrokenDataset):  # a length past the end: the structure walk refuses it first
        read_staged(dataclasses.replace(in_memory, data=data[:-7]), 64)
