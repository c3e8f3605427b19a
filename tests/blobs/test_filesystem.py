from __future__ import annotations

from pathlib import Path

import pytest

from minipacs.blobs.base import BlobNotFound, BlobStore, InvalidBlobKey
from minipacs.blobs.filesystem import FilesystemBlobStore


def test_is_a_blob_store(tmp_path: Path) -> None:
    assert isinstance(FilesystemBlobStore(tmp_path), BlobStore)


@pytest.mark.parametrize("fsync", [True, False])
def test_put_open_range_delete(tmp_path: Path, fsync: bool) -> None:
    store = FilesystemBlobStore(tmp_path / "storage", fsync=fsync)
    staged = tmp_path / "staged.part"
    staged.write_bytes(b"0123456789" * 1000)
    store.put_from_staging(staged, "1.2/1.3/1.4.dcm")
    store.sync()
    assert not staged.exists()
    with store.open("1.2/1.3/1.4.dcm") as fh:
        assert fh.read(4) == b"0123"
    assert b"".join(store.open_range("1.2/1.3/1.4.dcm", 5, 15)) == b"5678901234"
    assert b"".join(store.open_range("1.2/1.3/1.4.dcm", 9990, 20000)) == b"0123456789"
    assert store.path_of("1.2/1.3/1.4.dcm") == (tmp_path / "storage/1.2/1.3/1.4.dcm").resolve()
    store.delete("1.2/1.3/1.4.dcm")
    store.delete("1.2/1.3/1.4.dcm")
    with pytest.raises(BlobNotFound):
        store.open("1.2/1.3/1.4.dcm")


def test_put_replaces(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "storage")
    for content in (b"first", b"second"):
        staged = tmp_path / "s.part"
        staged.write_bytes(content)
        store.put_from_staging(staged, "a/b.dcm")
    store.sync()
    assert store.path_of("a/b.dcm").read_bytes() == b"second"


@pytest.mark.parametrize("key", ["../outside.dcm", "a/../../outside", "/etc/passwd", "", ".", "a\x00b", "a/../.."])
def test_keys_escaping_the_root_are_refused(tmp_path: Path, key: str) -> None:
    store = FilesystemBlobStore(tmp_path / "storage")
    with pytest.raises(InvalidBlobKey):
        store.path_of(key)


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "storage")
    (tmp_path / "storage" / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidBlobKey):
        store.path_of("link/x.dcm")


def test_keys_lists_every_file_without_following_symlinks(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "storage", fsync=False)
    for key in ("1.2/1.3/1.4_0123456789abcdef.dcm", "1.2/1.3/1.5.dcm", "9.9/x.dcm"):
        staged = tmp_path / "s.part"
        staged.write_bytes(b"x")
        store.put_from_staging(staged, key)
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.dcm").write_bytes(b"x")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    (store.root / "1.2" / "empty").mkdir()
    assert sorted(store.keys()) == ["1.2/1.3/1.4_0123456789abcdef.dcm", "1.2/1.3/1.5.dcm", "9.9/x.dcm", "link"]
    assert store.exists("1.2/1.3/1.5.dcm") and not store.exists("1.2/1.3/1.6.dcm") and not store.exists("1.2")
