"""The Storage SCP's refusals (PS3.4 B.2.3): each kind of mismatch gets its own status, and every
Error Comment fits its LO (64 characters) while saying what is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.services.status import STORE_INSTANCE_UID_MISMATCH
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

pytestmark = pytest.mark.interop


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title="MINIPACS",
        fsync=False,
        acse_timeout=5.0,
        dimse_timeout=60.0,
        allow_unregistered=("echo", "store"),
    )
    app = await build_app(settings)
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


async def store(port: int, sop_class: str, announced_instance: str, dataset: bytes) -> tuple[int, str]:
    settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=5, idle=5))
    rq = build_rq("SCU", "MINIPACS", [(CT_IMAGE_STORAGE, [IMPLICIT_VR_LITTLE_ENDIAN])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings)
    try:
        context = assoc.context_for(CT_IMAGE_STORAGE)
        assert context is not None
        command = Command.make(
            "C-STORE-RQ",
            has_dataset=True,
            MessageID=1,
            AffectedSOPClassUID=sop_class,
            AffectedSOPInstanceUID=announced_instance,
            Priority=0,
        )
        final = [m async for m in assoc.request(context.context_id, command, dataset, timeout=10)][-1].command
        return int(final["Status"]), str(final.get("ErrorComment", ""))
    finally:
        await assoc.release()


def ct_bytes(sop: str) -> bytes:
    return encode_dataset(make_ct(generate_uid(), generate_uid(), sop), IMPLICIT_VR_LITTLE_ENDIAN)


def test_an_instance_uid_mismatch_is_not_a_sop_class_mismatch(tmp_path: Path) -> None:
    """PS3.4 B.2.3: 0xA900 is for a dataset not matching the SOP class; a dataset whose SOP Instance
    UID differs from the command's Affected SOP Instance UID gets a Cxxx status and its own comment."""

    async def main() -> tuple[int, str]:
        async with serving(tmp_path) as app:
            return await store(app.dicom.port, CT_IMAGE_STORAGE, generate_uid(), ct_bytes(generate_uid()))

    status, comment = asyncio.run(main())
    assert status == STORE_INSTANCE_UID_MISMATCH == 0xC001
    assert comment == "Dataset SOPInstanceUID differs from Affected SOP Instance UID"
    assert len(comment) <= 64
