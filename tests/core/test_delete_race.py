"""Issue 10, "Never lose an acknowledged file": a study re-sent (reverse order, two associations)
while it is deleted, many times over.

Before per-copy blob keys, the deletion removed files by key after its commit while a copy
re-stored after that commit landed on the same key: instances answered Success ended with an
index row and no file. Each round here checks, after a restart of the archive:
  * zero index rows whose blob is missing and zero blobs no row names (core/storage_check.py);
  * the study's rows are exactly the instances whose store committed after the deletion (the
    changes journal orders commits: one writer), each retrievable with its own bytes; this
    includes every instance re-sent (its C-STORE request sent) after the deletion returned.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.core.changes import Change, ChangeType, read_changes
from minipacs.core.delete import delete_resource
from minipacs.core.model import DuplicatePolicy
from minipacs.core.retrieve import StoredInstance, select_instances
from minipacs.core.storage_check import check_storage
from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN
from minipacs.net.association import Association, AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

pytestmark = pytest.mark.interop

#: Rounds per duplicate policy, instances per study: ~10 s for both policies on 2 shared cores.
ROUNDS: Final = 12
INSTANCES: Final = 120
#: Associations re-sending the study at once.
SENDERS: Final = 2


@asynccontextmanager
async def serving(data_dir: Path, policy: DuplicatePolicy, fsync: bool) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        http_port=0,
        ae_title="MINIPACS",
        fsync=fsync,  # on: the intake log, and the small instances as pack entries (blobs/packs.py)
        duplicate_policy=policy,
        allow_unregistered=("echo", "store"),
    )
    app = await build_app(settings)
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


async def associate(port: int) -> Association:
    settings = AssociationSettings(ae_title="RESENDER", timeouts=Timeouts(acse=10, dimse=30, idle=30))
    rq = build_rq("RESENDER", "MINIPACS", [(CT_IMAGE_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN])], settings)
    return await connect("127.0.0.1", port, rq, settings)


async def c_store(assoc: Association, message_id: int, sop: str, payload: bytes) -> int:
    context = assoc.context_for(CT_IMAGE_STORAGE)
    assert context is not None
    command = Command.make(
        "C-STORE-RQ",
        has_dataset=True,
        MessageID=message_id,
        AffectedSOPClassUID=CT_IMAGE_STORAGE,
        AffectedSOPInstanceUID=sop,
        Priority=0,
    )
    final = [m async for m in assoc.request(context.context_id, command, payload, timeout=30)][-1].command
    return int(final["Status"])


@dataclass
class Round:
    study: str
    payloads: dict[str, bytes]  # SOP Instance UID -> dataset
    answered: list[str] = field(default_factory=list)  # re-sends answered Success, in order
    sent_after_delete: set[str] = field(default_factory=set)  # ... whose request went after the deletion returned


def make_study() -> Round:
    study = str(generate_uid())
    series = [str(generate_uid()), str(generate_uid())]
    payloads: dict[str, bytes] = {}
    for n in range(INSTANCES):
        sop = str(generate_uid())
        ds = make_ct(study, series[n % 2], sop, rows=8, cols=8, InstanceNumber=n + 1)
        payloads[sop] = encode_dataset(ds, IMPLICIT_VR_LITTLE_ENDIAN)
    return Round(study, payloads)


async def send(port: int, items: list[tuple[str, bytes]], on_success: list[str], deleted: asyncio.Event) -> set[str]:
    """C-STORE ``items`` in order over one association; the SOPs whose request went after ``deleted``
    (a Success read after it may still be that of a store committed before the deletion)."""
    assoc = await associate(port)
    late: set[str] = set()
    try:
        for message_id, (sop, payload) in enumerate(items, start=1):
            after = deleted.is_set()
            status = await c_store(assoc, message_id, sop, payload)
            assert status == 0x0000, f"C-STORE of {sop} answered 0x{status:04X}"
            on_success.append(sop)
            if after:
                late.add(sop)
    finally:
        await assoc.release()
    return late


async def race(app: App, rnd: Round, rng: random.Random) -> None:
    """Store the study, then re-send it in reverse order over SENDERS associations and delete it
    once a random share of the re-sends is answered."""
    sops = list(rnd.payloads)
    first: list[str] = []
    await send(app.dicom.port, [(sop, rnd.payloads[sop]) for sop in sops], first, asyncio.Event())
    assert len(first) == INSTANCES
    backwards = [(sop, rnd.payloads[sop]) for sop in reversed(sops)]
    deleted = asyncio.Event()
    senders = [
        asyncio.create_task(send(app.dicom.port, backwards[k::SENDERS], rnd.answered, deleted)) for k in range(SENDERS)
    ]
    threshold = int(INSTANCES * rng.uniform(0.1, 0.7))
    while len(rnd.answered) < threshold and not all(s.done() for s in senders):
        await asyncio.sleep(0.001)
    removed = await delete_resource(app.archive, "study", rnd.study)
    deleted.set()
    assert removed.instances > 0
    for late in await asyncio.gather(*senders):
        rnd.sent_after_delete |= late


async def committed_after_the_deletion(app: App, study: str) -> set[str]:
    """The study's instances whose (last) store committed after its "Deleted" row (one writer:
    the journal is in commit order)."""
    changes: list[Change] = []
    since, done = 0, False
    while not done:
        page, since, done = await app.archive.read(functools.partial(read_changes, since=since, limit=1000))
        changes += [c for c in page if c.study == study]
    deleted_at = max(c.seq for c in changes if c.type == ChangeType.DELETED.value and c.level == "study")
    return {c.uid for c in changes if c.type == ChangeType.NEW_INSTANCE.value and c.seq > deleted_at}


async def check_after_restart(app: App, rnd: Round) -> tuple[int, int]:
    found = await check_storage(app.archive)
    assert found.missing == [], f"{len(found.missing)} index row(s) without their file: {found.missing[:3]}"
    assert found.unindexed == [], f"{len(found.unindexed)} file(s) without a row: {found.unindexed[:3]}"
    survivors = await committed_after_the_deletion(app, rnd.study)
    assert rnd.sent_after_delete <= survivors  # sent after the deletion returned: committed after it
    instances = await select_instances(app.archive, "STUDY", {"StudyInstanceUID": rnd.study})
    assert {i.sop_instance_uid for i in instances} == survivors
    for instance in instances:  # what C-MOVE, C-GET and WADO would send: the right bytes
        assert not instance.problem, instance.problem
        assert _read(instance)[instance.dataset_offset :] == rnd.payloads[instance.sop_instance_uid]
    return len(survivors), len(rnd.answered) - len(survivors)


@pytest.mark.parametrize("fsync", [False, True], ids=["files", "packs"])
@pytest.mark.parametrize("policy", [DuplicatePolicy.KEEP, DuplicatePolicy.REPLACE])
def test_a_study_deleted_while_it_is_re_sent_loses_no_acknowledged_file(
    tmp_path: Path, policy: DuplicatePolicy, fsync: bool
) -> None:
    rng = random.Random(f"issue-10-{policy.value}")

    async def main() -> tuple[int, int]:
        stored_after = answered_before = 0
        for _ in range(ROUNDS):
            rnd = make_study()
            async with serving(tmp_path / "data", policy, fsync) as app:
                await race(app, rnd, rng)
            async with serving(tmp_path / "data", policy, fsync) as app:  # the restart
                after, before = await check_after_restart(app, rnd)
            stored_after += after
            answered_before += before
        return stored_after, answered_before

    stored_after, answered_before = asyncio.run(main())
    # the rounds raced: re-sends were answered on both sides of the deletion's commit
    assert stored_after > ROUNDS and answered_before > ROUNDS, (stored_after, answered_before)
    packs = list((tmp_path / "data" / "storage" / "packs").glob("*.pack"))
    assert bool(packs) == fsync, packs


def _read(instance: StoredInstance) -> bytes:
    with instance.open() as fh:
        return fh.read()
