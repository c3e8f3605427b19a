"""Pack entries in the filesystem blob store (blobs/packs.py): small instances inside larger files."""

from __future__ import annotations

import errno
import os
import struct
import time
from pathlib import Path

import pydicom
import pytest

from minipacs.blobs import packs as packs_module
from minipacs.blobs.base import BlobNotFound
from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.packs import ALIGN, HEADER_BYTES, PACKS_DIR, slot_of
from tests.dicomgen import write_ct

MiB = 1 << 20


def _store(tmp_path: Path, pack_bytes: int = MiB) -> FilesystemBlobStore:
    store = FilesystemBlobStore(tmp_path / "storage", pack_bytes=pack_bytes)
    assert store.packs.writing, "this test's filesystem must punch holes (ext4, XFS, Btrfs, tmpfs)"
    return store


def _put(store: FilesystemBlobStore, data: bytes) -> str:
    key = store.pack_key(len(data))
    assert key is not None
    store.put_bytes(data, key)
    return key


def _pack_file(store: FilesystemBlobStore, key: str) -> Path:
    slot = slot_of(key)
    assert slot is not None
    return store.packs.path(slot.pack)


def test_entries_read_back_as_files_of_their_own(tmp_path: Path) -> None:
    store = _store(tmp_path)
    contents = [bytes([n]) * (9000 + n) + b"end" for n in range(5)] + [b"", b"x"]
    keys = [_put(store, data) for data in contents]
    assert len({_pack_file(store, key) for key in keys}) == 1, "all in one pack"
    assert len(set(keys)) == len(keys)
    for key, data in zip(keys, contents, strict=True):
        assert key.startswith(f"{PACKS_DIR}/") and key.endswith(".dcm")
        slot = slot_of(key)
        assert slot is not None and slot.entry % ALIGN == 0 and slot.length == len(data)
        assert store.size(key) == len(data) and store.exists(key)
        with store.open(key) as fh:
            assert fh.name == key  # pydicom names what it reads
            assert fh.read() == data
            assert fh.read() == b""  # never past the entry, into the next one
            assert fh.seek(0, os.SEEK_END) == len(data)
            fh.seek(-min(3, len(data)), os.SEEK_END)
            assert fh.read(10) == data[-3:]
            fh.seek(1)
            assert fh.tell() == 1 and fh.read(2) == data[1:3]
        assert b"".join(store.open_range(key, 2, 7)) == data[2:7]
        assert b"".join(store.open_range(key, 0, 10**9)) == data
        with store.local_file(key) as path:
            assert path.read_bytes() == data
        assert not path.exists(), "local_file's copy is removed after the block"
    assert sorted(store.keys()) == sorted(keys), "the walk lists each entry, not the pack file"


def test_pydicom_reads_an_entry_as_a_file(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "ct.dcm", study_uid="1.2.826.7", series_uid="1.2.826.7.1", sop_uid="1.2.826.7.1.1")
    data = path.read_bytes()
    store = _store(tmp_path)
    keys = [_put(store, b"before" * 999), _put(store, data), _put(store, b"after" * 999)]
    with store.open(keys[1]) as fh:
        read = pydicom.dcmread(fh)
    assert read.SOPInstanceUID == "1.2.826.7.1.1" and read.PixelData == pydicom.dcmread(path).PixelData


def test_a_deleted_entry_frees_its_blocks_and_is_gone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    keys = [_put(store, bytes([n + 1]) * 20000) for n in range(3)]
    pack = _pack_file(store, keys[0])
    fd = os.open(pack, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    before = pack.stat().st_blocks
    store.delete(keys[1])
    after = pack.stat().st_blocks
    assert before - after >= 20480 // 512, (before, after)  # 5 blocks of 4 KiB given back, not just zeroed
    assert pack.stat().st_size >= slot_of(keys[2]).end  # type: ignore[union-attr]
    assert not store.exists(keys[1])
    with pytest.raises(BlobNotFound):
        store.open(keys[1])
    with pytest.raises(BlobNotFound):
        store.size(keys[1])
    store.delete(keys[1])  # a missing blob is not an error
    assert sorted(store.keys()) == sorted([keys[0], keys[2]])
    for key, n in ((keys[0], 1), (keys[2], 3)):  # the neighbours are untouched
        with store.open(key) as fh:
            assert fh.read() == bytes([n]) * 20000


def test_a_full_pack_is_followed_by_a_new_one(tmp_path: Path) -> None:
    store = _store(tmp_path, pack_bytes=MiB)
    size = 300 * 1024  # three entries fit in 1 MiB, with their headers and alignment
    keys = [_put(store, bytes(size)) for _ in range(7)]
    packs = [_pack_file(store, key) for key in keys]
    assert packs[0] == packs[1] == packs[2] != packs[3] == packs[4] == packs[5] != packs[6]
    assert all(path.stat().st_size <= MiB for path in set(packs))
    big = _put(store, bytes(2 * MiB))  # larger than a pack: a pack of its own
    assert slot_of(big).entry == 0  # type: ignore[union-attr]
    assert store.size(big) == 2 * MiB


def test_an_old_pack_takes_no_new_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    first = _put(store, b"a" * 100)
    real = time.time
    monkeypatch.setattr(packs_module.time, "time", lambda: real() + packs_module.WRITE_SECONDS + 1)
    second = _put(store, b"b" * 100)
    assert _pack_file(store, first) != _pack_file(store, second)


def test_an_emptied_pack_is_removed_only_when_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    real = time.time
    monkeypatch.setattr(packs_module.time, "time", lambda: real() - packs_module.RETIRE_SECONDS - 60)
    old = [_put(store, b"o" * 5000) for _ in range(2)]
    monkeypatch.setattr(packs_module.time, "time", real)
    young = [_put(store, b"y" * 5000) for _ in range(2)]  # the old pack is too old to write into: a new one
    old_pack, young_pack = _pack_file(store, old[0]), _pack_file(store, young[0])
    assert old_pack != young_pack
    store.delete(old[0])
    assert old_pack.exists(), "an entry is left in it"
    store.delete(old[1])
    assert not old_pack.exists(), "nothing left in an old pack: removed"
    for key in young:
        store.delete(key)
    assert young_pack.exists(), "the pack being written is kept, however empty"
    assert list(store.keys()) == []


def test_no_packs_where_holes_cannot_be_punched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(packs_module, "punch_hole", refuse)
    store = FilesystemBlobStore(tmp_path / "storage", pack_bytes=MiB)
    assert not store.packs.writing
    assert store.pack_key(100) is None
    assert not list((tmp_path / "storage" / PACKS_DIR).iterdir()), "the probe file is removed"


def test_pack_bytes_zero_makes_no_packs(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "storage", pack_bytes=0)
    assert store.pack_key(100) is None
    assert not (tmp_path / "storage" / PACKS_DIR).exists()


def test_reading_packs_needs_no_writing(tmp_path: Path) -> None:
    """An archive with packs whose pack_bytes is now 0 still reads and deletes its entries."""
    key = _put(_store(tmp_path), b"kept" * 1000)
    reader = FilesystemBlobStore(tmp_path / "storage", pack_bytes=0)
    with reader.open(key) as fh:
        assert fh.read() == b"kept" * 1000
    assert list(reader.keys()) == [key]
    reader.delete(key)
    assert not reader.exists(key)


def test_an_entry_without_its_pack_is_read_from_a_file_at_its_key(tmp_path: Path) -> None:
    """A backup (core/backup.py) copies each pack entry to a file at its key's path."""
    key = _put(_store(tmp_path), b"pack" * 100)
    copy = FilesystemBlobStore(tmp_path / "copy", pack_bytes=0)
    target = copy.root / key
    target.parent.mkdir(parents=True)
    target.write_bytes(b"pack" * 100)
    assert copy.exists(key) and copy.size(key) == 400
    with copy.open(key) as fh:
        assert fh.read() == b"pack" * 100
    assert list(copy.keys()) == [key]
    copy.delete(key)
    assert not target.exists() and not copy.exists(key)
    with pytest.raises(BlobNotFound):
        copy.open(key)


def test_an_entry_whose_header_does_not_match_is_not_found(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = _put(store, b"z" * 1000)
    slot = slot_of(key)
    assert slot is not None
    fd = os.open(_pack_file(store, key), os.O_WRONLY)
    try:
        os.pwrite(fd, struct.pack("<4sIB3xI", b"MPK1", 1000, 12, 7), slot.entry)  # another entry's offset
    finally:
        os.close(fd)
    assert not store.exists(key)
    with pytest.raises(BlobNotFound):
        store.open(key)
    store.delete(key)  # nothing punched: the header is not this entry's
    assert os.path.getsize(_pack_file(store, key)) == slot.end


def test_the_walk_skips_holes_and_unwritten_entries(tmp_path: Path) -> None:
    store = _store(tmp_path)
    kept = _put(store, b"1" * 6000)
    reserved = store.pack_key(6000)  # reserved, never written (a refused ingest): a hole
    assert reserved is not None
    deleted = _put(store, b"3" * 6000)
    last = _put(store, b"4" * 6000)
    store.delete(deleted)
    assert sorted(store.keys()) == sorted([kept, last])
    assert not store.exists(reserved)


def test_an_entry_of_an_older_pack_is_rewritten_in_place(tmp_path: Path) -> None:
    """The intake log's replay rewrites an entry whose unflushed bytes a power cut lost."""
    store = _store(tmp_path)
    key = _put(store, b"first" * 1000)
    store.close()
    pack = _pack_file(store, key)
    fd = os.open(pack, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(HEADER_BYTES + 5000), slot_of(key).entry)  # type: ignore[union-attr]
    finally:
        os.close(fd)
    again = _store(tmp_path)
    assert not again.exists(key)
    again.put_bytes(b"first" * 1000, key)
    with again.open(key) as fh:
        assert fh.read() == b"first" * 1000
    with pytest.raises(ValueError):
        again.put_bytes(b"short", key)


@pytest.mark.parametrize(
    "key",
    [
        "packs/6b16f21f-46e99e28/100-10.dcm",  # not at a 4 KiB boundary
        "packs/6b16f21f-46e99e28/04096-10.dcm",  # a leading zero
        "packs/6b16f21f-46e99e2/0-10.dcm",
        "packs/6b16f21f-46e99e28/0-10",
        "packs/6b16f21f-46e99e28/0-10.dcm/x",
        "1.2/1.3/1.4_0123456789abcdef.dcm",
    ],
)
def test_other_keys_are_not_pack_keys(key: str) -> None:
    assert slot_of(key) is None


def test_a_pack_key_names_its_entry() -> None:
    slot = slot_of("packs/6b16f21f-46e99e28/8192-9728.dcm")
    assert slot is not None
    assert (slot.pack, slot.entry, slot.length) == ("6b16f21f-46e99e28", 8192, 9728)
    assert slot.span() == 3 * ALIGN and slot.span(1 << 16) == 1 << 16 and slot.end == 8192 + HEADER_BYTES + 9728


def test_where_holes_can_no_longer_be_punched_a_deleted_entry_is_still_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Packs made on ext4, then the storage copied to a filesystem that cannot punch holes."""
    store = _store(tmp_path)
    keys = [_put(store, b"d" * 5000) for _ in range(3)]

    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(packs_module, "punch_hole", refuse)
    size = _pack_file(store, keys[0]).stat().st_size
    with caplog.at_level("WARNING", logger="minipacs.blobs.packs"):
        store.delete(keys[0])
        store.delete(keys[1])
    assert not store.exists(keys[0]) and not store.exists(keys[1])
    with pytest.raises(BlobNotFound):
        store.open(keys[0])
    assert list(store.keys()) == [keys[2]]
    assert _pack_file(store, keys[0]).stat().st_size == size
    warnings = [r for r in caplog.records if "cannot free the space" in r.getMessage()]
    assert len(warnings) == 1, "said once"


def test_old_packs_emptied_while_young_are_removed_by_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    real = time.time
    monkeypatch.setattr(packs_module.time, "time", lambda: real() - packs_module.RETIRE_SECONDS + 60)
    emptied = [_put(store, b"e" * 3000) for _ in range(2)]  # a pack a minute short of retirement
    monkeypatch.setattr(packs_module.time, "time", real)
    kept = _put(store, b"k" * 3000)  # the pack being written (the other is too old to write into)
    for key in emptied:
        store.delete(key)  # emptied while young: kept, however empty
    emptied_pack, current = _pack_file(store, emptied[0]), _pack_file(store, kept)
    assert emptied_pack.exists() and emptied_pack != current
    assert store.remove_empty_packs() == 0, "not old enough yet"
    monkeypatch.setattr(packs_module.time, "time", lambda: real() + 120)
    assert store.remove_empty_packs() == 1
    assert not emptied_pack.exists() and current.exists()
    store.delete(kept)  # now empty, but the pack new entries go into
    monkeypatch.setattr(packs_module.time, "time", lambda: real() + packs_module.RETIRE_SECONDS + 60)
    assert store.remove_empty_packs() == 0 and current.exists()


def test_entries_align_to_a_filesystem_block_larger_than_4_kib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hole frees whole blocks only: on a filesystem of 64 KiB blocks, each entry starts on one, and
    its header says so, so that deleting it frees every block it took and nothing of the next entry."""
    monkeypatch.setattr(packs_module, "block_size", lambda directory: 1 << 16)
    store = _store(tmp_path)
    assert store.packs.align == 1 << 16
    keys = [_put(store, bytes([n + 1]) * 9000) for n in range(3)]
    assert [slot_of(key).entry for key in keys] == [0, 1 << 16, 2 << 16]  # type: ignore[union-attr]
    pack = _pack_file(store, keys[0])
    os.sync()
    before = pack.stat().st_blocks
    store.delete(keys[1])
    assert before - pack.stat().st_blocks >= 12288 // 512  # all the entry's blocks (4 KiB ones here)
    assert not store.exists(keys[1])
    with store.open(keys[2]) as fh:
        assert fh.read() == bytes([3]) * 9000
    assert sorted(store.keys()) == sorted([keys[0], keys[2]])


def test_block_size_is_a_power_of_two_from_4_kib_to_1_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs(tmp_path).f_frsize
    assert packs_module.block_size(tmp_path) == (real if ALIGN <= real <= 1 << 20 else ALIGN)

    class Fake:
        def __init__(self, size: int) -> None:
            self.f_frsize = size

    for size, expected in ((512, ALIGN), (8192, 8192), (1 << 20, 1 << 20), (2 << 20, ALIGN), (12288, ALIGN)):
        monkeypatch.setattr(packs_module.os, "statvfs", lambda _d, size=size: Fake(size))
        assert packs_module.block_size(tmp_path) == expected, size


def test_the_probe_runs_once_per_process_and_folder_and_only_for_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each store that opened (every command) used to create, punch and remove a probe file."""
    probed: list[Path] = []
    real = packs_module.can_punch_holes

    def counted(directory: Path) -> bool:
        probed.append(directory)
        return real(directory)

    monkeypatch.setattr(packs_module, "_probed", {})
    monkeypatch.setattr(packs_module, "can_punch_holes", counted)
    reader = FilesystemBlobStore(tmp_path / "storage", pack_bytes=MiB)
    assert list(reader.keys()) == [] and not reader.exists("packs/6b16f21f-46e99e28/0-10.dcm")
    assert probed == [] and not (tmp_path / "storage" / PACKS_DIR).exists(), "a store that only reads never probes"
    first = _put(reader, b"a" * 100)
    assert len(probed) == 1
    for _ in range(3):  # the archive, then a command's store, then another, on the same folder
        again = FilesystemBlobStore(tmp_path / "storage", pack_bytes=MiB)
        assert slot_of(_put(again, b"b" * 100)) != slot_of(first)
    assert len(probed) == 1, "once per process for a folder"
    _put(_store(tmp_path / "other"), b"c" * 100)
    assert len(probed) == 2 and probed[1] != probed[0]


def _entry_at(store: FilesystemBlobStore, key: str) -> int:
    slot = slot_of(key)
    assert slot is not None
    return slot.entry


def test_the_walk_says_where_a_pack_is_damaged_and_goes_on(tmp_path: Path) -> None:
    store = _store(tmp_path)
    keys = [_put(store, bytes([n + 1]) * 9000) for n in range(8)]
    pack = _pack_file(store, keys[0])
    entries = [_entry_at(store, key) for key in keys]
    fd = os.open(pack, os.O_WRONLY)
    try:
        os.pwrite(fd, b"GARBAGE!" * 2, entries[1])  # no header where one should be
        os.pwrite(fd, struct.pack("<4sIB3xI", b"MPK1", 9000, 12, 99), entries[3])  # another place's header
        os.pwrite(fd, bytes(HEADER_BYTES), entries[5])  # deleted where holes cannot be punched: not damage
    finally:
        os.close(fd)
    store.delete(keys[6])  # a hole: not damage
    os.truncate(pack, entries[7] + HEADER_BYTES + 100)  # the last entry cut short
    found = list(packs_module.walk(pack))
    assert [(type(f).__name__, f.offset if isinstance(f, packs_module.PackDamage) else f.entry) for f in found] == [
        ("PackSlot", entries[0]),
        ("PackDamage", entries[1]),
        ("PackSlot", entries[2]),
        ("PackDamage", entries[3]),
        ("PackSlot", entries[4]),
        ("PackDamage", entries[7]),
    ]
    reasons = [f.reason for f in found if isinstance(f, packs_module.PackDamage)]
    assert reasons[0] == "no entry header here (b'GARB' where b'MPK1' is expected)"
    assert reasons[1] == f"an entry header that is not this place's (it says byte {99 * ALIGN})"
    assert reasons[2] == (
        "its header says 9000 bytes, but the pack ends 100 bytes after it (a copy cut short, or a damaged header)"
    )
    assert sorted(store.keys()) == sorted(keys[n] for n in (0, 2, 4)), "the store's walk skips what is damaged"
    for n in (0, 2, 4):
        with packs_module.open_entry(pack, found[n]) as fh:  # type: ignore[arg-type,union-attr]
            assert fh.read() == bytes([n + 1]) * 9000


def test_the_walk_goes_on_after_a_damaged_length_and_says_where_a_header_is_cut_short(tmp_path: Path) -> None:
    store = _store(tmp_path)
    keys = [_put(store, bytes([n + 1]) * 5000) for n in range(3)]
    pack = _pack_file(store, keys[0])
    entries = [_entry_at(store, key) for key in keys]
    fd = os.open(pack, os.O_WRONLY)
    try:
        os.pwrite(fd, struct.pack("<I", 1 << 30), entries[0] + 4)  # its length, damaged: past the end
    finally:
        os.close(fd)
    os.truncate(pack, entries[2] + 10)  # ten bytes of the last header left
    found = list(packs_module.walk(pack))
    assert [(type(f).__name__, f.offset if isinstance(f, packs_module.PackDamage) else f.entry) for f in found] == [
        ("PackDamage", entries[0]),
        ("PackSlot", entries[1]),
        ("PackDamage", entries[2]),
    ]
    assert found[2].reason == "the pack ends 10 bytes into an entry's header"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        list(packs_module.walk(tmp_path / "not-a-pack.pack"))
