"""The BlobStore contract (blobs/base.py), run against both stores: the filesystem one and the S3 one
on a real S3 server (moto on loopback, tests/s3server.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from minipacs.blobs.base import BlobError, BlobNotFound, BlobStore, InvalidBlobKey
from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.s3 import MIN_PART_BYTES, S3BlobStore, S3Location, parse_s3_url
from tests.s3server import S3Server

KEY = "1.2/1.3/1.4.dcm"
DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def s3_store(server: S3Server, tmp: Path, bucket: str | None = None, **kwargs: int) -> S3BlobStore:
    location = S3Location(bucket or server.new_bucket(), "site/a")
    return S3BlobStore(location, tmp / "s3tmp", endpoint=server.endpoint, region="us-east-1", **kwargs)


@pytest.fixture
def make_s3(s3_server: S3Server, tmp_path: Path) -> Iterator[Callable[..., S3BlobStore]]:
    """S3 stores on the test server, closed after the test (no connection left to the GC)."""
    made: list[S3BlobStore] = []

    def make(bucket: str | None = None, **kwargs: int) -> S3BlobStore:
        made.append(s3_store(s3_server, tmp_path, bucket, **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "storage")
        return
    s3 = s3_store(request.getfixturevalue("s3_server"), tmp_path)
    s3.check()
    yield s3
    s3.close()


def put(store: BlobStore, tmp: Path, key: str, data: bytes) -> Path:
    staged = tmp / f"staged-{hashlib.sha1(key.encode()).hexdigest()}.part"
    staged.write_bytes(data)
    store.put_from_staging(staged, key)
    store.sync()
    return staged


def test_is_a_blob_store(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_put_open_read_seek(store: BlobStore, tmp_path: Path) -> None:
    staged = put(store, tmp_path, KEY, DATA)
    assert not staged.exists(), "a synced put consumes its staged file"
    assert store.exists(KEY) and store.size(KEY) == len(DATA)
    with store.open(KEY) as fh:
        assert fh.read(4) == DATA[:4]
        fh.seek(5000)
        assert fh.read(10) == DATA[5000:5010]
        fh.seek(100)  # backwards
        assert fh.read(3) == DATA[100:103]
        assert fh.seek(0, os.SEEK_END) == len(DATA)
        assert fh.read() == b""
        fh.seek(0)
        assert fh.read() == DATA


def test_put_replaces(store: BlobStore, tmp_path: Path) -> None:
    put(store, tmp_path, KEY, b"first")
    put(store, tmp_path, KEY, b"second")
    with store.open(KEY) as fh:
        assert fh.read() == b"second"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 144, DATA[:144]),
        (5, 15, DATA[5:15]),
        (10_000, 20_000, DATA[10_000:]),  # past the end: what there is
        (7, 7, b""),
        (20_000, 30_000, b""),  # wholly past the end: nothing
    ],
)
def test_open_range(store: BlobStore, tmp_path: Path, start: int, end: int, expected: bytes) -> None:
    put(store, tmp_path, KEY, DATA)
    assert b"".join(store.open_range(KEY, start, end)) == expected


def test_open_range_refuses_a_reversed_range(store: BlobStore, tmp_path: Path) -> None:
    put(store, tmp_path, KEY, DATA)
    with pytest.raises(ValueError, match="not a valid range"):
        store.open_range(KEY, 10, 5)


def test_local_file(store: BlobStore, tmp_path: Path) -> None:
    put(store, tmp_path, KEY, DATA)
    with store.local_file(KEY) as path:
        assert path.read_bytes() == DATA
    if isinstance(store, S3BlobStore):
        assert not path.exists(), "the temporary copy outlives its block"
        assert list(store.temp_dir.iterdir()) == []


def test_missing_blob_is_blob_not_found_everywhere(store: BlobStore, tmp_path: Path) -> None:
    missing = "9.9/9.9/9.9.dcm"
    with pytest.raises(BlobNotFound):
        store.open(missing)
    with pytest.raises(BlobNotFound):
        store.open_range(missing, 0, 144)
    with pytest.raises(BlobNotFound):
        store.open_range(missing, 0, 0)
    with pytest.raises(BlobNotFound):
        store.size(missing)
    with pytest.raises(FileNotFoundError):  # BlobNotFound is one: readers treat it as a missing file
        with store.local_file(missing) as path:
            path.read_bytes()
    assert not store.exists(missing)
    store.delete(missing)  # not an error


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.dcm", "a/../../x.dcm", "a/\x00.dcm"])
def test_invalid_keys_are_refused(store: BlobStore, tmp_path: Path, key: str) -> None:
    staged = tmp_path / "x.part"
    staged.write_bytes(b"x")
    with pytest.raises(InvalidBlobKey):
        store.put_from_staging(staged, key)
    with pytest.raises(InvalidBlobKey):
        store.open(key)
    with pytest.raises(InvalidBlobKey):
        store.delete(key)
    assert staged.read_bytes() == b"x"


def test_delete_keys_exists(store: BlobStore, tmp_path: Path) -> None:
    names = ["1.2/1.3/a.dcm", "1.2/1.3/b.dcm", "1.2/1.5/c.dcm"]
    for name in names:
        put(store, tmp_path, name, name.encode())
    assert sorted(store.keys()) == names
    store.delete(names[1])
    assert not store.exists(names[1]) and store.exists(names[0])
    assert sorted(store.keys()) == [names[0], names[2]]


def test_take_back_returns_an_unsynced_put_to_staging(store: BlobStore, tmp_path: Path) -> None:
    staged = tmp_path / "s.part"
    staged.write_bytes(DATA)
    store.put_from_staging(staged, KEY)
    store.take_back(KEY, staged)
    store.sync()
    assert staged.read_bytes() == DATA
    assert not store.exists(KEY)


# ------------------------------------------------------------------ S3 only


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket-1/site/a/") == S3Location("bucket-1", "site/a")
    assert parse_s3_url("s3://my.bucket") == S3Location("my.bucket", "")
    for bad in ("s3://", "s3://B/x", "http://bucket/x", "s3://bucket/a/../b", "s3://bucket/a//b"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_s3_objects_live_under_the_prefix(
    s3_server: S3Server, tmp_path: Path, make_s3: Callable[..., S3BlobStore]
) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="other/1.dcm", Body=b"not ours")
    store = make_s3(bucket)
    put(store, tmp_path, KEY, DATA)
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["other/1.dcm", "site/a/" + KEY]
    assert list(store.keys()) == [KEY]


def test_s3_multipart_at_the_threshold(
    s3_server: S3Server, tmp_path: Path, make_s3: Callable[..., S3BlobStore]
) -> None:
    """A file of exactly s3_multipart_bytes goes up in parts, one byte less in one PUT (S3's ETag of a
    multipart upload ends in -<parts>); the bytes read back are the bytes put."""
    store = make_s3(multipart_bytes=MIN_PART_BYTES)
    client = s3_server.client()
    cases = {"below.dcm": MIN_PART_BYTES - 1, "at.dcm": MIN_PART_BYTES, "three.dcm": 2 * MIN_PART_BYTES + 7}
    blobs = {name: os.urandom(size) for name, size in cases.items()}
    for name, data in blobs.items():
        staged = tmp_path / f"{name}.part"
        staged.write_bytes(data)
        store.put_from_staging(staged, name)
    store.sync()  # the three uploads went out together
    etags = {name: client.head_object(Bucket=store.bucket, Key="site/a/" + name)["ETag"] for name in cases}
    assert "-" not in etags["below.dcm"], etags
    assert etags["at.dcm"].endswith('-1"'), etags
    assert etags["three.dcm"].endswith('-3"'), etags
    for name, data in blobs.items():
        with store.open(name) as fh:
            assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()
    assert (
        b"".join(store.open_range("three.dcm", MIN_PART_BYTES - 3, MIN_PART_BYTES + 3))
        == blobs["three.dcm"][MIN_PART_BYTES - 3 : MIN_PART_BYTES + 3]
    )
    with pytest.raises(ValueError, match="at least 5242880"):
        s3_store(s3_server, tmp_path, multipart_bytes=MIN_PART_BYTES - 1)


def test_s3_failed_upload_keeps_the_staged_file(tmp_path: Path, make_s3: Callable[..., S3BlobStore]) -> None:
    """sync() raises when an upload fails (here: no such bucket) and leaves every staged file in
    staging, so the archive can roll the batch back and answer a failure."""
    store = make_s3("minipacs-no-such-bucket")
    with pytest.raises(BlobError, match="cannot be used"):
        store.check()
    staged = tmp_path / "s.part"
    staged.write_bytes(DATA)
    store.put_from_staging(staged, KEY)
    with pytest.raises(BlobError, match="1 of 1 upload"):
        store.sync()
    assert staged.read_bytes() == DATA
