"""core/dicomdir.py and core/media.py without an archive: several patients, the offsets, what is left out."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.core.media import MediaError, build_media, write_media
from minipacs.core.retrieve import StoredInstance
from tests.cli.test_export_cli import check_offsets
from tests.dicomgen import write_ct

SR = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: an SR DOCUMENT record needs keys a CT lacks


def _item(path: Path) -> StoredInstance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return StoredInstance(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID),
        path.name, FilesystemBlobStore(path.parent), -1,
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
    )  # fmt: skip


def test_two_patients_linked_by_offsets_and_an_unrecordable_instance_named(tmp_path: Path) -> None:
    items = []
    for patient in ("P1", "P2"):
        for study in range(2):
            study_uid, series_uid = generate_uid(), generate_uid()
            for n in range(2):
                path = tmp_path / "src" / f"{patient}-{study}-{n}.dcm"
                items.append(_item(write_ct(path, study_uid=study_uid, series_uid=series_uid, patient_id=patient)))
    odd = write_ct(tmp_path / "src" / "sr.dcm", patient_id="P2", SOPClassUID=SR, StudyID="")
    items.append(_item(odd))
    media = build_media(items, "test")
    ds = pydicom.dcmread(io.BytesIO(media.dicomdir))
    check_offsets(ds)
    kinds = [str(r.DirectoryRecordType) for r in ds.DirectoryRecordSequence]
    assert kinds.count("PATIENT") == 2 and kinds.count("STUDY") == 4 and kinds.count("IMAGE") == 8
    assert [uid for uid, _ in media.left_out] == [items[-1].sop_instance_uid]
    assert items[-1].sop_instance_uid.encode() in media.readme
    assert [f for f, _ in media.files][:2] == ["DICOM/P0000001/S0000001/SE000001/I0000001",
                                               "DICOM/P0000001/S0000001/SE000001/I0000002"]  # fmt: skip
    assert media.files[-1][0] == "DICOM/P0000002/S0000002/SE000001/I0000002"
    out = tmp_path / "out"
    assert write_media(media, out) == 8
    dump = subprocess.run(["/usr/bin/dcmdump", "+M", str(out / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr


def test_a_wrong_offset_is_caught(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "a.dcm")
    ds = pydicom.dcmread(io.BytesIO(build_media([_item(path)]).dicomdir))
    ds.DirectoryRecordSequence[1].OffsetOfReferencedLowerLevelDirectoryEntity += 2
    with pytest.raises(KeyError):
        check_offsets(ds)


def test_nothing_recordable_is_an_error(tmp_path: Path) -> None:
    odd = write_ct(tmp_path / "sr.dcm", SOPClassUID=SR)
    with pytest.raises(MediaError, match="none of the 1 instance"):
        build_media([_item(odd)])


def test_type1_keys_a_file_lacks_get_stand_ins_in_the_record_only(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "a.dcm", patient_id="", StudyID="", InstanceNumber=None)
    media = build_media([_item(path)])
    records = pydicom.dcmread(io.BytesIO(media.dicomdir)).DirectoryRecordSequence
    assert records[0].PatientID == "UNKNOWN" and records[1].StudyID == "1" and records[3].InstanceNumber == 1
    assert pydicom.dcmread(path).PatientID == ""  # the file is not touched


@pytest.mark.parametrize(
    ("flag", "syntax"),
    [("+ti", ImplicitVRLittleEndian), ("+tb", ExplicitVRBigEndian), ("+td", DeflatedExplicitVRLittleEndian)],
)
def test_a_file_in_a_syntax_no_media_profile_allows_is_written_explicit_little(
    tmp_path: Path, flag: str, syntax: str
) -> None:
    """PS3.11 Annex D (STD-GEN-CD/USB): Explicit VR Little Endian; the JPEG/J2K profiles add only
    compressed syntaxes. A file stored Implicit VR / Big Endian / Deflated is re-encoded on the media,
    and its IMAGE record says so; DCMTK's profile check (dcmmkdir -Pgp) accepts the File-set."""
    source = pydicom.dcmread(write_ct(tmp_path / "src" / "a.dcm"))
    stored = tmp_path / "src" / "b.dcm"
    subprocess.run(["/usr/bin/dcmconv", flag, str(tmp_path / "src" / "a.dcm"), str(stored)], check=True)
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == syntax
    (tmp_path / "src" / "a.dcm").unlink()
    out = tmp_path / "out"
    write_media(build_media([_item(stored)]), out)
    (record,) = [r for r in pydicom.dcmread(out / "DICOMDIR").DirectoryRecordSequence if "ReferencedFileID" in r]
    assert record.ReferencedTransferSyntaxUIDInFile == ExplicitVRLittleEndian
    on_media = pydicom.dcmread(out.joinpath(*record.ReferencedFileID))
    assert on_media.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert on_media.SOPInstanceUID == source.SOPInstanceUID and on_media.PixelData == source.PixelData
    check = subprocess.run(
        ["/usr/bin/dcmmkdir", "-w", "-Pgp", "+r", "+p", "I0*", "+id", str(out)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "E:" not in check.stderr, check.stderr


def test_a_file_in_explicit_little_or_compressed_goes_on_the_media_byte_for_byte(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "src" / "a.dcm")
    out = tmp_path / "out"
    write_media(build_media([_item(path)]), out)
    assert (out / "DICOM/P0000001/S0000001/SE000001/I0000001").read_bytes() == path.read_bytes()
