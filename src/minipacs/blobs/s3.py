"""BlobStore on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto), through boto3.

Chosen by ``storage = "s3://BUCKET/PREFIX"`` (docs/S3.md). Each key is one object,
``PREFIX/<key>``. Why boto3: the AWS SDK for Python, Apache-2.0, maintained by AWS, the
reference client every S3-compatible server tests against; its transfer manager
(s3transfer) uploads large files in parts, in parallel, and retries. It is blocking, which
fits the archive: puts run in the writer thread's batch and reads in worker threads, never
on the event loop.

Durability: ``put_from_staging`` starts the upload (in a pool, so the puts of one writer
batch go out concurrently) and ``sync`` waits for them all: once it returns, S3 has
answered 200 to every PUT (or CompleteMultipartUpload), i.e. the objects are durable
in the store. The archive commits the index rows, and answers success, only after
``sync``. A file of ``multipart_bytes`` or more goes up in parts of that size.

Reads: ``open`` gives a seekable file reading the object through ranged GETs (one GET while
reading forward; a seek elsewhere starts a new one); ``open_range`` is one ranged GET;
``local_file`` downloads the object to a temporary file for readers that need a file name.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from minipacs.blobs.base import BlobError, BlobNotFound, checked_key

log = logging.getLogger(__name__)

_MiB: Final = 1024 * 1024
#: S3's smallest part (every part but the last must be at least 5 MiB).
MIN_PART_BYTES: Final = 5 * _MiB
#: Bytes read from a GET per read call of ``open``'s file, and per chunk of ``open_range``.
_CHUNK: Final = 1 * _MiB
#: Prefix of the temporary files of ``local_file`` (removed at start if a crash left them).
_TEMP_PREFIX: Final = "s3-blob-"
_NOT_FOUND: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_URL: Final = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?\Z")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root


def parse_s3_url(url: str) -> S3Location:
    """``s3://BUCKET/PREFIX`` -> its bucket and prefix; ValueError saying what is wrong."""
    match = _URL.match(url.strip())
    if match is None:
        raise ValueError(
            f"{url[:100]!r} is not an S3 location; write s3://BUCKET or s3://BUCKET/PREFIX "
            "(bucket: 3-63 lower-case letters, digits, dots and hyphens)"
        )
    prefix = (match.group(2) or "").strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"the prefix {prefix[:80]!r} of {url[:100]!r} has an empty, '.' or '..' part")
    return S3Location(match.group(1), prefix)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class _ObjectReader(io.RawIOBase):
    """A seekable, read-only file over one object: a ranged GET from the position, read on while
    reads go forward; a seek elsewhere drops it and the next read starts a new one."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._pos = 0
        self._body: Any = None
        self._body_pos = -1
        self._body, self.size = store._get(key, 0)  # raises BlobNotFound now, not at the first read
        self._body_pos = 0
        self.name = key

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset} before the start of blob {self._key}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self._pos)
        if want <= 0:
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._drop_body()
            self._body, _ = self._store._get(self._key, self._pos)
            self._body_pos = self._pos
        data = self._body.read(want)
        if not data:
            raise BlobError(f"blob {self._key} ended at byte {self._pos} of {self.size} while being read")
        view[: len(data)] = data
        self._pos += len(data)
        self._body_pos += len(data)
        return len(data)

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


class S3BlobStore:
    """Blobs as objects ``PREFIX/<key>`` in one bucket of an S3-compatible store.

    ``multipart_bytes``: files of this size or more are uploaded in parts of this size (at
    least 5 MiB, S3's smallest part). ``concurrency``: uploads in flight at once (a writer
    batch's puts go out together). ``temp_dir``: where ``local_file`` puts its copies.
    ``client``: a boto3 S3 client (built from ``endpoint``/``region`` and the usual AWS
    credentials -- AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws -- when None).
    """

    def __init__(
        self,
        location: S3Location,
        temp_dir: Path,
        *,
        endpoint: str = "",
        region: str = "",
        multipart_bytes: int = 64 * _MiB,
        concurrency: int = 8,
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if multipart_bytes < MIN_PART_BYTES:
            raise ValueError(f"multipart_bytes must be at least {MIN_PART_BYTES} (5 MiB, S3's smallest part)")
        self.location = location
        self.bucket = location.bucket
        self._prefix = location.prefix + "/" if location.prefix else ""
        self.where = f"s3://{location.bucket}/{location.prefix}" + (f" at {endpoint}" if endpoint else "")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=max(10, 2 * concurrency),
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_bytes,
            multipart_chunksize=multipart_bytes,
            max_concurrency=4,
            use_threads=True,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-put")
        self._local = threading.local()  # per thread: the puts not yet synced
        self.temp_dir = temp_dir
        temp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in temp_dir.glob(_TEMP_PREFIX + "*"):  # a crash's copies: never anyone's data
            leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ helpers

    def _object(self, key: str) -> str:
        return self._prefix + checked_key(key)

    def _failure(self, exc: Exception, what: str, key: str) -> BlobError:
        if _code(exc) in _NOT_FOUND:
            return BlobNotFound(f"blob {key} is not in the store ({self.where})")
        return BlobError(f"{what} blob {key} in {self.where} failed: {type(exc).__name__}: {str(exc)[:300]}")

    def _get(self, key: str, start: int, end: int = -1) -> tuple[Any, int]:
        """(streaming body from ``start``, the object's whole size); raises BlobNotFound."""
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {"Range": f"bytes={start}-" + (str(end - 1) if end >= 0 else "")} if start or end >= 0 else {}
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._object(key), **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "reading", key) from exc
        size = int(answer["ContentLength"])
        content_range = answer.get("ContentRange") or ""
        if "/" in content_range:  # "bytes 0-99/1234"
            size = int(content_range.rsplit("/", 1)[1])
        return answer["Body"], size

    def check(self) -> None:
        """Refuse to start when the bucket cannot be reached, with what to do."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise BlobError(
                f"the S3 bucket {self.bucket!r} ({self.where}) cannot be used: {type(exc).__name__}: "
                f"{str(exc)[:200]}; create the bucket, or check s3_endpoint, s3_region and the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws)"
            ) from exc

    # ------------------------------------------------------------------ writes

    def _pending(self) -> list[tuple[str, Path, Future[None]]]:
        pending: list[tuple[str, Path, Future[None]]] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def _upload(self, staged_path: Path, key: str) -> None:
        self.client.upload_file(str(staged_path), self.bucket, self._object(key), Config=self._transfer)

    def put_from_staging(self, staged_path: Path, key: str) -> None:
        """Start uploading ``staged_path`` to ``key``; ``sync`` waits for it and removes the staged file."""
        self._object(key)  # refuse a bad key now
        self._pending().append((key, staged_path, self._pool.submit(self._upload, staged_path, key)))

    def sync(self, *, durable: bool = True) -> None:
        """Wait for this thread's uploads; each done one is durable in S3 (``durable`` changes nothing).
        If any failed: BlobError, every staged file kept, the uploads that did succeed removed."""
        pending, self._local.pending = self._pending(), []
        if not pending:
            return
        wait([future for _, _, future in pending])
        failed = [(key, future.exception()) for key, _, future in pending if future.exception() is not None]
        if failed:
            for key, _, future in pending:
                if future.exception() is None:
                    self._forget(key)
            key, exc = failed[0]
            assert exc is not None
            raise BlobError(
                f"{len(failed)} of {len(pending)} upload(s) to {self.where} failed; the first, {key}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        for _, staged_path, _ in pending:
            staged_path.unlink(missing_ok=True)

    def take_back(self, key: str, staged_path: Path) -> None:
        pending = self._pending()
        for entry in [e for e in pending if e[0] == key]:
            pending.remove(entry)
            wait([entry[2]])
        self._forget(key)  # the staged file was never removed: it is still in staging

    def _forget(self, key: str) -> None:
        try:
            self.delete(key)
        except BlobError as exc:
            log.error("could not remove %s after a failed batch (it stays as a blob without a row): %s", key, exc)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) not in _NOT_FOUND:
                raise self._failure(exc, "removing", key) from exc

    # ------------------------------------------------------------------ reads

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, key), buffer_size=_CHUNK)

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        if start < 0 or end < start:
            raise ValueError(f"byte range {start}-{end} is not a valid range")
        if end == start:
            self.size(key)  # BlobNotFound, as the filesystem store would say
            return iter(())
        try:
            body, _ = self._get(key, start, end)
        except BlobError as exc:
            if isinstance(exc.__cause__, Exception) and _code(exc.__cause__) == "InvalidRange":
                return iter(())  # starts at or past the end: nothing, as a file would give
            raise

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()

        return chunks()

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """The object downloaded to a temporary file, removed after the block."""
        from botocore.exceptions import BotoCoreError, ClientError

        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".dcm", dir=self.temp_dir)
        os.close(fd)
        path = Path(name)
        try:
            try:
                self.client.download_file(self.bucket, self._object(key), name, Config=self._transfer)
            except (ClientError, BotoCoreError) as exc:
                raise self._failure(exc, "downloading", key) from exc
            yield path
        finally:
            path.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._object(key))["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "reading", key) from exc

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except BlobNotFound:
            return False
        return True

    def keys(self) -> Iterator[str]:
        """Every object under the prefix, as a key (one LIST request per 1,000)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._prefix):
                for item in page.get("Contents", []):
                    yield str(item["Key"])[len(self._prefix) :]
        except (ClientError, BotoCoreError) as exc:
            raise BlobError(f"listing {self.where} failed: {type(exc).__name__}: {str(exc)[:300]}") from exc

    def close(self) -> None:
        """Wait for uploads in flight, stop the upload threads, close the client's connections."""
        self._pool.shutdown(wait=True)
        self.client.close()


__all__ = ["MIN_PART_BYTES", "S3BlobStore", "S3Location", "parse_s3_url"]
