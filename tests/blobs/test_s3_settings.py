"""The storage settings (config.py; docs/S3.md): from the file or MINIPACS_*, checked at their limits,
and bootstrap picking the store they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipacs.blobs.base import BlobError
from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.s3 import MIN_PART_BYTES, S3BlobStore
from minipacs.bootstrap import archive_settings, blob_store
from minipacs.config import ConfigError, Settings, load_settings
from tests.s3server import S3Server


def test_environment_names_the_s3_store() -> None:
    s = load_settings(
        None,
        env={
            "MINIPACS_STORAGE": "s3://bucket-a/site/one",
            "MINIPACS_S3_ENDPOINT": "http://127.0.0.1:9000",
            "MINIPACS_S3_REGION": "eu-central-1",
            "MINIPACS_S3_MULTIPART_BYTES": str(MIN_PART_BYTES),
        },
    )
    assert (s.storage, s.s3_endpoint, s.s3_region, s.s3_multipart_bytes) == (
        "s3://bucket-a/site/one",
        "http://127.0.0.1:9000",
        "eu-central-1",
        MIN_PART_BYTES,
    )
    assert archive_settings(s).intake_inline_max_bytes == 0, "S3: uploads on the critical path, no intake log"
    assert archive_settings(Settings()).intake_inline_max_bytes > 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"storage": "/mnt/elsewhere"}, "not an S3 location"),
        ({"storage": "s3://Bad_Bucket/x"}, "not an S3 location"),
        ({"storage": "s3://bucket/a/../b"}, "'.' or '..'"),
        ({"s3_endpoint": "127.0.0.1:9000"}, "http:// or https://"),
        ({"s3_multipart_bytes": MIN_PART_BYTES - 1}, "s3_multipart_bytes"),
        ({"s3_multipart_bytes": 5 * 1024**3 + 1}, "s3_multipart_bytes"),
        ({"s3_concurrency": 0}, "s3_concurrency"),
        ({"s3_concurrency": 65}, "s3_concurrency"),
    ],
)
def test_storage_settings_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**changes).validate()  # type: ignore[arg-type]


def test_storage_settings_at_their_limits_are_accepted() -> None:
    Settings(s3_multipart_bytes=MIN_PART_BYTES, s3_concurrency=1).validate()
    Settings(s3_multipart_bytes=5 * 1024**3, s3_concurrency=64, storage="s3://bucket").validate()


def test_bootstrap_picks_the_store(tmp_path: Path, s3_server: S3Server) -> None:
    assert isinstance(blob_store(Settings(data_dir=tmp_path)), FilesystemBlobStore)
    bucket = s3_server.new_bucket()
    store = blob_store(Settings(data_dir=tmp_path, storage=f"s3://{bucket}/p", s3_endpoint=s3_server.endpoint))
    try:
        assert isinstance(store, S3BlobStore) and store.bucket == bucket
    finally:
        store.close()
    with pytest.raises(BlobError, match="cannot be used"):  # no such bucket: refused at start, with what to do
        blob_store(Settings(data_dir=tmp_path, storage="s3://minipacs-missing/p", s3_endpoint=s3_server.endpoint))
