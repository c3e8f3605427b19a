from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest

from minipacs import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.errors import DatasetTooLarge, InvalidIdentifier
from minipacs.core.staging import StagingFile, StagingPool
from tests.dicomgen import CT_IMAGE_STORAGE, ExplicitVRLittleEndian, encode_dataset, make_ct


def test_file_meta_is_written_first(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4.5")
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4.5\x00", ExplicitVRLittleEndian, "MODALITY1")
    data = encode_dataset(ds)
    staging.write(memoryview(data))
    assert staging.dataset_size == len(data)
    staged = staging.finish()
    raw = staged.path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    assert raw[staged.dataset_offset :] == data
    read = pydicom.dcmread(staged.path)
    meta = read.file_meta
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == "1.4.5"
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "MODALITY1"
    assert meta.FileMetaInformationGroupLength == staged.dataset_offset - 132 - 12
    assert read.PatientName == "Doe^John"
    assert staged.sop_instance_uid == "1.4.5"


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "aet", "attribute"),
    [
        ("1.2/../3", "1.4", ExplicitVRLittleEndian, "", "MediaStorageSOPClassUID"),
        (CT_IMAGE_STORAGE, "../../etc/passwd", ExplicitVRLittleEndian, "", "MediaStorageSOPInstanceUID"),
        (CT_IMAGE_STORAGE, "1.4", "1.2.840.10008.1.2\x01", "", "TransferSyntaxUID"),
        (CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, "BAD\\AE", "SourceApplicationEntityTitle"),
        (CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, "X" * 17, "SourceApplicationEntityTitle"),
        (CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, "é", "SourceApplicationEntityTitle"),
    ],
)
def test_junk_in_the_meta_header_is_refused(
    tmp_path: Path, sop_class: str, sop_instance: str, syntax: str, aet: str, attribute: str
) -> None:
    with pytest.raises(InvalidIdentifier, match=attribute):
        StagingFile(tmp_path, sop_class, sop_instance, syntax, aet)
    assert list(tmp_path.iterdir()) == []


def test_dataset_size_limit_is_inclusive(tmp_path: Path) -> None:
    exact = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, max_dataset_bytes=1024)
    exact.write(bytes(1000))
    exact.write(bytes(24))
    assert exact.finish().path.exists()

    over = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.5", ExplicitVRLittleEndian, max_dataset_bytes=1024)
    over.write(bytes(1000))
    with pytest.raises(DatasetTooLarge, match="1024"):
        over.write(bytes(25))
    assert not over.path.exists()
    over.discard()  # idempotent
    with pytest.raises(ValueError):
        over.write(b"x")


def test_discard_is_idempotent(tmp_path: Path) -> None:
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian)
    staging.write(b"abcd")
    staging.discard()
    staging.discard()
    assert not staging.path.exists()


def test_leftovers_in_staging_are_removed_on_open(tmp_path: Path) -> None:
    staging_dir = tmp_path / "data" / "staging"
    staging_dir.mkdir(parents=True)
    (staging_dir / "dead.part").write_bytes(b"never acknowledged")
    (staging_dir / "other").write_bytes(b"x")

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        await archive.close()

    asyncio.run(main())
    assert list(staging_dir.iterdir()) == []


def test_staging_pool_refills_in_bursts_and_cleans_up(tmp_path: Path) -> None:
    """Every take is a fresh empty file (from the pool or created on the spot, if it ran
    dry); the refiller tops the pool up; close deletes the files nobody took."""
    pool = StagingPool(tmp_path, size=4)
    try:
        taken = []
        for _ in range(25):
            path, fh = pool.take()
            fh.write(b"x")
            fh.close()
            taken.append(path)
        assert len(set(taken)) == 25
        assert all(p.stat().st_size == 1 for p in taken)
    finally:
        pool.close()
    assert sorted(tmp_path.iterdir()) == sorted(taken)


def _meta_file(path: Path, meta_body: bytes, dataset: bytes, group_length: int | None = None) -> Path:
    import struct

    from minipacs.dicom.part10 import GROUP_LENGTH_HEADER, PREAMBLE

    length = len(meta_body) if group_length is None else group_length
    path.write_bytes(PREAMBLE + GROUP_LENGTH_HEADER + struct.pack("<I", length) + meta_body + dataset)
    return path


def _ui(element: int, uid: str) -> bytes:
    import struct

    raw = uid.encode() + (b"\x00" if len(uid) % 2 else b"")
    return struct.pack("<HH2sH", 2, element, b"UI", len(raw)) + raw


def test_stage_file_walks_the_meta_group(tmp_path: Path) -> None:
    """PS3.10 §7.1: the dataset starts where the group 0002 elements end, whatever the Group
    Length says; a meta group over 64 KiB, cut short, or without a TransferSyntaxUID is refused."""
    import struct

    from minipacs.core.errors import InvalidInstance
    from minipacs.core.staging import stage_file

    ds = make_ct("1.2", "1.3", "1.4")
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    meta = _ui(0x0002, CT_IMAGE_STORAGE) + _ui(0x0003, "1.4") + _ui(0x0010, ExplicitVRLittleEndian)
    (tmp_path / "staging").mkdir()
    wrong = _meta_file(tmp_path / "wrong.dcm", meta, data, group_length=len(meta) + 10)
    staged = stage_file(tmp_path / "staging", wrong)
    assert staged.transfer_syntax_uid == ExplicitVRLittleEndian
    assert staged.path.read_bytes()[staged.dataset_offset :] == data

    padding = struct.pack("<HH2s2xI", 2, 0x0100, b"OB", 64 * 1024)
    big = _meta_file(tmp_path / "big.dcm", meta + padding + b"\x00" * 64 * 1024, data)
    with pytest.raises(InvalidInstance, match="over 65536 bytes"):
        stage_file(tmp_path / "staging", big)
    for size, ok in ((64 * 1024, True), (64 * 1024 + 2, False)):  # the whole meta group, at the limit
        value = size - 12 - len(meta) - 12  # (0002,0000), the UIDs, this element's header
        element = struct.pack("<HH2s2xI", 2, 0x0100, b"OB", value) + b"\x00" * value
        path = _meta_file(tmp_path / f"limit{size}.dcm", meta + element, data)
        if ok:
            assert stage_file(tmp_path / "staging", path).transfer_syntax_uid == ExplicitVRLittleEndian
        else:
            with pytest.raises(InvalidInstance, match="over 65536 bytes"):
                stage_file(tmp_path / "staging", path)
    cut = _meta_file(tmp_path / "cut.dcm", meta[:-4], b"")
    with pytest.raises(InvalidInstance, match="cut.dcm ends inside its File Meta Information"):
        stage_file(tmp_path / "staging", cut)
    no_ts = _meta_file(tmp_path / "nots.dcm", meta[: -len(_ui(0x0010, ExplicitVRLittleEndian))], data)
    with pytest.raises(InvalidInstance, match="no TransferSyntaxUID"):
        stage_file(tmp_path / "staging", no_ts)


def test_memory_mode_holds_a_small_file_and_creates_nothing(tmp_path: Path) -> None:
    """A file of at most ``memory_max_bytes`` (File Meta included) never touches the disk; its
    StagedPath carries the same Part 10 bytes the file would have had."""
    data = encode_dataset(make_ct("1.2", "1.3", "1.4.5"))
    (tmp_path / "disk").mkdir()
    on_disk = StagingFile(tmp_path / "disk", CT_IMAGE_STORAGE, "1.4.5", ExplicitVRLittleEndian, "AE1")
    (tmp_path / "mem").mkdir()
    in_memory = StagingFile(
        tmp_path / "mem", CT_IMAGE_STORAGE, "1.4.5", ExplicitVRLittleEndian, "AE1", memory_max_bytes=1 << 20
    )
    for staging in (on_disk, in_memory):
        staging.write(memoryview(data)[:100])
        staging.write(memoryview(data)[100:])
    file_staged, memory_staged = on_disk.finish(), in_memory.finish()
    assert file_staged.data is None
    assert memory_staged.data == file_staged.path.read_bytes()
    assert memory_staged.dataset_offset == file_staged.dataset_offset
    assert list((tmp_path / "mem").iterdir()) == [] and not memory_staged.path.exists()
    with pytest.raises(ValueError):
        in_memory.write(b"x")  # finished


def test_memory_mode_spills_to_disk_past_its_bound(tmp_path: Path) -> None:
    """At the bound it stays in memory; one byte more and everything so far goes to a staging file,
    and what follows is appended there."""
    probe = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, memory_max_bytes=1 << 20)
    meta = len(probe.finish().data or b"")
    bound = meta + 1000

    exact = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, memory_max_bytes=bound)
    exact.write(bytes(600))
    exact.write(bytes(400))
    staged = exact.finish()
    assert staged.data is not None and len(staged.data) == bound and list(tmp_path.iterdir()) == []

    over = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.5", ExplicitVRLittleEndian, memory_max_bytes=bound)
    over.write(b"a" * 600)
    over.write(b"b" * 401)
    over.write(b"c" * 10)
    spilled = over.finish()
    assert spilled.data is None
    raw = spilled.path.read_bytes()
    assert len(raw) == meta + 1011 and raw[meta:] == b"a" * 600 + b"b" * 401 + b"c" * 10


def test_memory_mode_keeps_the_dataset_limit_and_discards(tmp_path: Path) -> None:
    staging = StagingFile(
        tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian, max_dataset_bytes=1024, memory_max_bytes=1 << 20
    )
    staging.write(bytes(1024))
    with pytest.raises(DatasetTooLarge, match="1024"):
        staging.write(b"x")
    with pytest.raises(ValueError):
        staging.finish()
    staging.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,syntax",
    [
        ("ExplVR_LitEndNoMeta.dcm", "1.2.840.10008.1.2.1"),
        ("ExplVR_BigEndNoMeta.dcm", "1.2.840.10008.1.2.2"),
    ],
)
def test_stage_file_takes_a_raw_dataset_in_either_byte_order(tmp_path: Path, name: str, syntax: str) -> None:
    """A dataset without File Meta Information (PS3.10 §7.1 absent; DCMTK and pydicom read both of pydicom's
    test files): its encoding told by its first element, big endian included (the first group, 0008,
    reads 00 08), as stored bytes unchanged under our File Meta Information."""
    import pydicom.data

    from minipacs.core.staging import stage_file

    path = Path(pydicom.data.get_testdata_file(name))
    (tmp_path / "staging").mkdir()
    staged = stage_file(tmp_path / "staging", path)
    assert staged.transfer_syntax_uid == syntax
    assert staged.path.read_bytes()[staged.dataset_offset :] == path.read_bytes()
