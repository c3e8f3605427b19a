"""Issue 8 item 10 (DICOM part): no server file paths in the Error Comment of a refused C-STORE.

A full disk while staging or while moving into storage is 0xA700 "Refused: Out of Resources"
(PS3.4 Table B.2-1); the comment says what happened, the server log keeps the path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.bootstrap import build_app
from minipacs.config import Settings
from minipacs.core import staging
from minipacs.core.staging import StagingPool
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

EXPLICIT = "1.2.840.10008.1.2.1"
SECRET = "/srv/secret-mount/minipacs-data"


def store_one(tmp_path: Path, **settings: Any) -> tuple[int, str, int]:
    """(status, error comment, instances stored) of one C-STORE over a real loopback association."""
    ds = make_ct(generate_uid(), generate_uid(), generate_uid(), rows=8, cols=8)

    async def main() -> tuple[int, str, int]:
        app = await build_app(
            Settings(
                **{
                    "data_dir": tmp_path / "data",
                    "host": "127.0.0.1",
                    "port": 0,
                    "fsync": False,
                    "http_port": 0,
                    **settings,
                }
            )
        )
        await app.dicom.start()
        try:
            scu = AssociationSettings(ae_title="MODALITY")
            assoc = await connect(
                "127.0.0.1",
                app.dicom.port,
                build_rq("MODALITY", "MINIPACS", [(CT_IMAGE_STORAGE, [EXPLICIT])], scu),
                scu,
            )
            ctx = assoc.context_for(CT_IMAGE_STORAGE, EXPLICIT)
            assert ctx is not None
            cmd = Command.make(
                "C-STORE-RQ",
                has_dataset=True,
                MessageID=1,
                Priority=0,
                AffectedSOPClassUID=CT_IMAGE_STORAGE,
                AffectedSOPInstanceUID=ds.SOPInstanceUID,
            )
            status, comment = -1, ""
            async for rsp in assoc.request(ctx.context_id, cmd, encode_dataset(ds, EXPLICIT)):
                status, comment = int(rsp.command["Status"]), str(rsp.command.get("ErrorComment", ""))
            await assoc.release()
            return status, comment, await app.archive.count_instances()
        finally:
            await app.close(grace=1.0)

    return asyncio.run(main())


class _FullDisk:
    """A staging file whose dataset writes fail with ENOSPC (its File Meta Information gets through)."""

    def __init__(self, real: Any, path: Path) -> None:
        self._real, self._path, self._writes = real, path, 0

    def write(self, data: Any) -> int:
        self._writes += 1
        if self._writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device", f"{SECRET}/staging/{self._path.name}")
        return int(self._real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_disk_full_while_staging_is_a700_without_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_create = staging._create
    monkeypatch.setattr(staging, "_create", lambda path: _FullDisk(real_create(path), path))
    status, comment, stored = store_one(tmp_path)
    assert (status, stored) == (0xA700, 0)
    assert comment == "Archive out of resources (disk full?); try again later"  # its kind's, not cut
    assert "/" not in comment
    assert SECRET in caplog.text  # the server log has the whole story


def test_disk_full_while_moving_into_storage_is_a700_without_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(self: FilesystemBlobStore, staged_path: Path, key: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", f"{SECRET}/storage/{key}")

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(FilesystemBlobStore, "put_from_staging", full)
    status, comment, stored = store_one(tmp_path)
    assert (status, stored) == (0xA700, 0)
    assert "/" not in comment and "full" in comment, comment
    assert SECRET in caplog.text


def test_other_write_errors_carry_no_path_either(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: FilesystemBlobStore, staged_path: Path, key: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", f"{SECRET}/storage/{key}")

    monkeypatch.setattr(FilesystemBlobStore, "put_from_staging", denied)
    status, comment, stored = store_one(tmp_path)
    assert (status, stored) == (0x0110, 0)
    assert "/" not in comment and "Permission denied" in comment, comment


class _FullFile:
    """A staging-pool file on a full disk: its write fails as a real one would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", f"{SECRET}/ready/{self.path.name}")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("pool", [True, False], ids=["via-a-pool-file", "no-pool-file-ready"])
def test_disk_full_writing_an_instance_received_into_memory_is_a700_without_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, pool: bool
) -> None:
    """With fsync on (the intake log), a small C-STORE is held in memory and the writer writes its file
    (core/staging.py): into an empty file the staging pool made ahead, renamed to its key, or, when the
    pool has none ready, at its key. A full disk there is answered as anywhere else; nothing is stored."""
    written: list[str] = []

    def full(self: FilesystemBlobStore, data: bytes, key: str) -> None:
        written.append(key)
        raise OSError(errno.ENOSPC, "No space left on device", f"{SECRET}/storage/{key}")

    def full_file(self: StagingPool) -> tuple[Path, Any] | None:
        path = self.staging_dir / "full.dcm"
        written.append(str(path))
        return (path, _FullFile(path)) if pool else None

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(FilesystemBlobStore, "put_bytes", full)
    monkeypatch.setattr(StagingPool, "take_ready", full_file)
    status, comment, stored = store_one(tmp_path, fsync=True)
    assert written, "the instance was not received into memory: the writer never wrote it"
    assert (status, stored) == (0xA700, 0)
    assert "/" not in comment and "full" in comment, comment
    assert SECRET in caplog.text
