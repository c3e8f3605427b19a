"""What a peer gets when a data set cannot be held in memory (net/memory.py): each service's
out-of-resources status with an Error Comment, the association going on; and a C-STORE, which is
never refused for it, received into a staging file instead of memory once the budget is spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import ConfigError, Settings
from minipacs.dicom.identifier import encode_identifier
from minipacs.dicom.uids import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    transfer_syntax,
)
from minipacs.net.association import Association, AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.services.status import OUT_OF_MEMORY
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

pytestmark = pytest.mark.interop

TIMEOUTS = Timeouts(acse=5, dimse=10, idle=10)


@asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[App]:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "host": "127.0.0.1",
        "port": 0,
        "ae_title": "MINIPACS",
        "fsync": False,
        "allow_unregistered": ("echo", "store", "find", "get", "move"),
    }
    settings = Settings(**(values | options))
    app = await build_app(settings)
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


async def associate(port: int, classes: list[str]) -> Association:
    settings = AssociationSettings(ae_title="SCU", timeouts=TIMEOUTS)
    rq = build_rq("SCU", "MINIPACS", [(c, [IMPLICIT_VR_LITTLE_ENDIAN]) for c in classes], settings)
    return await connect("127.0.0.1", port, rq, settings)


async def final(assoc: Association, name: str, sop_class: str, data: bytes, **fields: Any) -> Command:
    ctx = assoc.context_for(sop_class)
    assert ctx is not None
    rq = Command.make(
        name, has_dataset=True, MessageID=assoc.next_message_id(), AffectedSOPClassUID=sop_class, **fields
    )
    return [m async for m in assoc.request(ctx.context_id, rq, data)][-1].command


def identifier() -> bytes:
    uids = [f"1.2.826.0.1.3680043.10.9.{n}.{'1' * 30}" for n in range(30)]  # a UID list (PS3.4 C.2.2.2.2)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uids
    return encode_identifier(ds, transfer_syntax(IMPLICIT_VR_LITTLE_ENDIAN))


def test_a_c_find_identifier_past_memory_dataset_max_bytes_gets_a700(tmp_path: Path) -> None:
    """PS3.4 C.4.1.1.4: 0xA700 Refused: Out of Resources, with an Error Comment; exactly at the
    limit the query is answered; the association goes on after the refusal."""

    async def run() -> None:
        async with serving(tmp_path, memory_dataset_max_bytes=1024) as app:
            data = identifier()
            assert len(data) > 1024
            assoc = await associate(app.dicom.port, [STUDY_ROOT_FIND])
            try:
                refused = await final(assoc, "C-FIND-RQ", STUDY_ROOT_FIND, data, Priority=0)
                assert refused.status == 0xA700
                assert "memory" in refused.error_comment and len(refused.error_comment) <= 64
                app.dicom.assoc_settings.max_memory_dataset = len(data)  # exactly at the limit
                answered = await final(assoc, "C-FIND-RQ", STUDY_ROOT_FIND, data, Priority=0)
                assert answered.status == 0x0000
                app.dicom.assoc_settings.max_memory_dataset = len(data) - 1
                again = await final(assoc, "C-FIND-RQ", STUDY_ROOT_FIND, data, Priority=0)
                assert again.status == 0xA700
            finally:
                await assoc.release()
            assert app.dicom.memory_budget.held == 0

    asyncio.run(run())


@pytest.mark.parametrize(("model", "name"), [(STUDY_ROOT_GET, "C-GET-RQ"), (STUDY_ROOT_MOVE, "C-MOVE-RQ")])
def test_a_c_get_or_c_move_identifier_past_the_limit_gets_a701(tmp_path: Path, model: str, name: str) -> None:
    """PS3.4 C.4.2.1.5 / C.4.3.1.4: 0xA701 Out of Resources - Unable to calculate number of matches."""

    async def run() -> None:
        async with serving(tmp_path, memory_dataset_max_bytes=1024) as app:
            assoc = await associate(app.dicom.port, [model])
            try:
                fields: dict[str, Any] = {"Priority": 0}
                if name == "C-MOVE-RQ":
                    fields["MoveDestination"] = "SCU"
                refused = await final(assoc, name, model, identifier(), **fields)
                assert refused.status == 0xA701
                assert refused.error_comment
            finally:
                await assoc.release()

    asyncio.run(run())


def test_a_c_store_goes_to_a_staging_file_when_the_budget_cannot_take_it(tmp_path: Path) -> None:
    """A C-STORE received into memory takes receive_in_memory_max_bytes of memory_datasets_budget_bytes
    while it is received and ingested; with exactly that much left it is received into memory, with one
    byte less into a staging file -- stored either way (0x0000), never refused for it."""

    async def run() -> None:
        async with serving(
            tmp_path,
            fsync=True,  # the intake log, which takes C-STOREs received into memory, is on with fsync only
            receive_in_memory_max_bytes=4096,
            memory_dataset_max_bytes=1024,
            memory_datasets_budget_bytes=4096,
        ) as app:
            budget = app.dicom.memory_budget
            assoc = await associate(app.dicom.port, [CT_IMAGE_STORAGE])
            try:
                for room, in_memory in ((4096, True), (4095, False)):
                    budget.limit = room
                    budget.most_held = 0
                    sop = generate_uid()
                    data = encode_dataset(
                        make_ct(generate_uid(), generate_uid(), sop, rows=8, cols=8), IMPLICIT_VR_LITTLE_ENDIAN
                    )
                    stored = await final(
                        assoc, "C-STORE-RQ", CT_IMAGE_STORAGE, data, AffectedSOPInstanceUID=sop, Priority=0
                    )
                    assert stored.status == 0x0000
                    assert budget.most_held == (4096 if in_memory else 0)
                    assert budget.held == 0
            finally:
                await assoc.release()

    asyncio.run(run())


def test_every_request_with_a_data_set_has_an_out_of_memory_status() -> None:
    assert OUT_OF_MEMORY["C-FIND-RQ"] == 0xA700
    assert OUT_OF_MEMORY["C-STORE-RQ"] == 0xA700
    assert OUT_OF_MEMORY["C-GET-RQ"] == OUT_OF_MEMORY["C-MOVE-RQ"] == 0xA701
    assert OUT_OF_MEMORY["default"] == 0x0213  # PS3.7 C.5: every DIMSE-N request


@pytest.mark.parametrize(
    ("options", "valid"),
    [
        ({"memory_dataset_max_bytes": 1024}, True),
        ({"memory_dataset_max_bytes": 1023}, False),
        ({"memory_dataset_max_bytes": 1 << 30, "memory_datasets_budget_bytes": 1 << 30}, True),
        ({"memory_dataset_max_bytes": (1 << 30) + 1, "memory_datasets_budget_bytes": 1 << 31}, False),
        ({"memory_dataset_max_bytes": 4096, "memory_datasets_budget_bytes": 4096}, True),
        ({"memory_dataset_max_bytes": 4096, "memory_datasets_budget_bytes": 4095}, False),
    ],
)
def test_the_memory_settings_are_validated(tmp_path: Path, options: dict[str, int], valid: bool) -> None:
    if valid:
        Settings(data_dir=tmp_path, **options).validate()
    else:
        with pytest.raises(ConfigError, match="memory_dataset"):
            Settings(data_dir=tmp_path, **options).validate()
