"""A C-GET or C-MOVE of a study goes on while its instances are replaced (duplicate_policy "replace").

The retrieve lists its instances first and opens their files one by one, minutes later on a large
study; each replaced copy's file stays ``keep_replaced_seconds`` (core/blob_removals.py), so every
sub-operation still reads the copy it chose. Before, the replaced files went right after the
replacement's commit and those sub-operations failed with "its file ... is missing from storage".

Staged deterministically: the receiver of the first sub-operation re-sends every instance of the
study (new copies, new blob keys) before it answers, so all the other sub-operations run after the
replacement. In process, over real loopback associations: pynetdicom as the C-GET SCU, our own SCU
for the C-MOVE (tests/services/test_move_get.py).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from minipacs.core.model import DuplicatePolicy, Origin, StoreStatus
from minipacs.index.repository import blob_keys
from minipacs.net.association import Association, Message
from minipacs.services.retrieve_scu import FolderStorage
from tests.dicomgen import write_ct
from tests.services.test_move_get import Env, archive_env, received, study_key

COUNT = 6
#: Instance Number of the re-sent copies (the stored ones are 1..COUNT).
RESENT = 100


async def _resend_all(env: Env) -> None:
    """Send every instance of the study again, changed: each replaces the stored copy."""
    series = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in env.files.values()}
    assert len(series) == len(env.series_uids)
    for number, (sop, path) in enumerate(sorted(env.files.items()), RESENT):
        stored = pydicom.dcmread(path, stop_before_pixels=True)
        again = write_ct(
            env.tmp / "resent" / f"{sop}.dcm",
            study_uid=env.study_uid,
            series_uid=str(stored.SeriesInstanceUID),
            sop_uid=sop,
            InstanceNumber=number,
        )
        outcome = await env.archive.import_file(again, Origin("dicom"))
        assert outcome.status is StoreStatus.REPLACED


async def _replaced_everything(env: Env, keys_before: dict[str, str]) -> None:
    """The index names the re-sent copies now; the copies the retrieve read wait out their grace period."""
    after = dict(await env.archive.read(blob_keys))
    assert set(after) == set(env.files)
    assert all(after[sop] != keys_before[sop] for sop in env.files)
    assert all(env.archive.blobs.exists(keys_before[sop]) for sop in env.files)


def test_a_c_get_reads_the_copies_it_chose_while_they_are_replaced(tmp_path: Path) -> None:
    got: dict[str, Dataset] = {}
    lock = threading.Lock()

    def c_get(env: Env, loop: asyncio.AbstractEventLoop) -> list[Any]:
        def store(event: evt.Event) -> int:
            with lock:
                first = not got
                ds = event.dataset
                got[str(ds.SOPInstanceUID)] = ds
            if first:  # the archive replaces the whole study while this sub-operation waits for us
                asyncio.run_coroutine_threadsafe(_resend_all(env), loop).result(timeout=60)
            return 0x0000

        ae = AE(ae_title="GETSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(
            "127.0.0.1",
            env.server.port,
            ae_title="MINIPACS",
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, store)],
        )
        assert assoc.is_established
        try:
            return [status for status, _ in assoc.send_c_get(study_key(env), StudyRootQueryRetrieveInformationModelGet)]
        finally:
            assoc.release()
            ae.shutdown()

    async def main() -> None:
        async with archive_env(tmp_path, count=COUNT, duplicate_policy=DuplicatePolicy.REPLACE) as env:
            before = dict(await env.archive.read(blob_keys))
            statuses = await asyncio.to_thread(c_get, env, asyncio.get_running_loop())
            final = statuses[-1]
            assert int(final.Status) == 0x0000, [hex(int(s.Status)) for s in statuses if s]
            assert (final.NumberOfCompletedSuboperations, final.get("NumberOfFailedSuboperations", 0)) == (COUNT, 0)
            assert set(got) == set(env.files)
            # every sub-operation sent the copy the C-GET chose: the one stored before the re-send
            assert sorted(int(ds.InstanceNumber) for ds in got.values()) == list(range(1, COUNT + 1))
            await _replaced_everything(env, before)

    asyncio.run(main())


class ReplacingStorage(FolderStorage):
    """A C-MOVE destination that, on the first sub-operation, has the archive replace the study."""

    def __init__(self, folder: Path, env: Env) -> None:
        super().__init__(folder)
        self.env = env
        self.replaced = False

    async def c_store(self, assoc: Association, message: Message) -> None:
        if not self.replaced:
            self.replaced = True
            await _resend_all(self.env)
        await super().c_store(assoc, message)


def test_a_c_move_sends_the_copies_it_chose_while_they_are_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        async with archive_env(tmp_path, count=COUNT, duplicate_policy=DuplicatePolicy.REPLACE) as env:
            before = dict(await env.archive.read(blob_keys))
            sink = ReplacingStorage(tmp_path / "dest", env)
            async with env.destination(service=sink):
                result = await env.move(study_key(env))
            assert (result.status, result.completed, result.failed) == (0, COUNT, 0), result.failed_uids
            assert sink.replaced
            got = received(sink.folder)
            assert set(got) == set(env.files)
            numbers = sorted(int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in got.values())
            assert numbers == list(range(1, COUNT + 1))
            await _replaced_everything(env, before)

    asyncio.run(main())
