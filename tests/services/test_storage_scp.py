"""The Storage SCP's refusals (PS3.4 B.2.3): each kind of mismatch gets its own status, and every
Error Comment fits its LO (64 characters) while saying what is wrong."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.presentation import ABSTRACT_SYNTAX_NOT_SUPPORTED, ACCEPTANCE
from minipacs.services.status import STORE_INSTANCE_UID_MISMATCH
from minipacs.services.storage import unknown_storage_class
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

pytestmark = pytest.mark.interop


@asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title="MINIPACS",
        fsync=False,
        acse_timeout=5.0,
        dimse_timeout=60.0,
        allow_unregistered=("echo", "store"),
        **overrides,
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


#: A private SOP class (Siemens CSA Non-Image Storage), one newer than our dictionary on the Storage
#: branch, and a standard UID of another branch (a Query/Retrieve model that does not exist).
PRIVATE = "1.3.12.2.1107.5.9.1"
NEWER_STORAGE = "1.2.840.10008.5.1.4.1.1.999.1"
OTHER_SERVICE = "1.2.840.10008.5.1.4.1.2.99.1"


@pytest.mark.parametrize(
    ("uid", "taken"),
    [
        (PRIVATE, True),
        (NEWER_STORAGE, True),
        (OTHER_SERVICE, False),
        ("1.2.840.10008.5.1.4.1.1.201.2", False),  # Inventory - FIND, on the Storage branch
        ("1.2.840.10008.5.1.4.1.1.200.4", False),  # Protocol Approval Information Model - FIND
        ("1.2.840.10008.5.1.4.1.1.201.1.1", False),  # Storage Management SOP Instance
        ("1.2.840.10008.1.1.1", False),
        ("1.2.840.10008.5.1.4.1.1", False),  # the branch itself is no SOP class... nor under it
        ("1.2.03.4", False),  # PS3.5 9.1: no leading zero
        ("1.2.3.", False),
        ("1.2.x", False),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),  # 65 characters
    ],
)
def test_which_unknown_sop_classes_may_be_taken(uid: str, taken: bool) -> None:
    assert unknown_storage_class(uid) is taken


async def propose_and_store(port: int, sop_class: str) -> tuple[dict[str, int], int | None, str]:
    """Propose CT and the three unknown classes; C-STORE an instance of ``sop_class`` when its context is
    accepted. (results by abstract syntax, the C-STORE status or None, the instance's UID)."""
    settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=5, idle=5))
    classes = [CT_IMAGE_STORAGE, PRIVATE, NEWER_STORAGE, OTHER_SERVICE]
    rq = build_rq("SCU", "MINIPACS", [(uid, [IMPLICIT_VR_LITTLE_ENDIAN]) for uid in classes], settings)
    assoc = await connect("127.0.0.1", port, rq, settings)
    try:
        assert assoc.ac is not None
        results = {classes[(ac.context_id - 1) // 2]: ac.result for ac in assoc.ac.presentation_contexts}
        context = assoc.context_for(sop_class)
        sop = generate_uid()
        if context is None:
            return results, None, sop
        data = encode_dataset(
            make_ct(generate_uid(), generate_uid(), sop, SOPClassUID=sop_class), IMPLICIT_VR_LITTLE_ENDIAN
        )
        command = Command.make(
            "C-STORE-RQ",
            has_dataset=True,
            MessageID=1,
            AffectedSOPClassUID=sop_class,
            AffectedSOPInstanceUID=sop,
            Priority=0,
        )
        final = [m async for m in assoc.request(context.context_id, command, data, timeout=10)][-1].command
        return results, int(final["Status"]), sop
    finally:
        await assoc.release()


def test_unknown_sop_classes_are_refused_by_default(tmp_path: Path) -> None:
    """As Orthanc (UnknownSopClassAccepted false) and dcm4che's storescp (without --all-storage):
    result 3, abstract syntax not supported (PS3.8 Table 9-18)."""

    async def main() -> tuple[dict[str, int], int | None, str]:
        async with serving(tmp_path) as app:
            return await propose_and_store(app.dicom.port, PRIVATE)

    results, status, _sop = asyncio.run(main())
    assert results == {
        CT_IMAGE_STORAGE: ACCEPTANCE,
        PRIVATE: ABSTRACT_SYNTAX_NOT_SUPPORTED,
        NEWER_STORAGE: ABSTRACT_SYNTAX_NOT_SUPPORTED,
        OTHER_SERVICE: ABSTRACT_SYNTAX_NOT_SUPPORTED,
    }
    assert status is None


@pytest.mark.parametrize("sop_class", [PRIVATE, NEWER_STORAGE])
def test_accept_unknown_sop_classes_stores_private_and_newer_classes(tmp_path: Path, sop_class: str) -> None:
    """accept_unknown_sop_classes: a private class and a Storage class newer than our dictionary are
    accepted and stored as any other; a standard UID of another branch stays refused."""

    async def main() -> tuple[dict[str, int], int | None, bytes]:
        async with serving(tmp_path, accept_unknown_sop_classes=True) as app:
            results, status, sop = await propose_and_store(app.dicom.port, sop_class)
            return results, status, await app.archive.get_instance_bytes(sop)

    results, status, stored = asyncio.run(main())
    assert results == {
        CT_IMAGE_STORAGE: ACCEPTANCE,
        PRIVATE: ACCEPTANCE,
        NEWER_STORAGE: ACCEPTANCE,
        OTHER_SERVICE: ABSTRACT_SYNTAX_NOT_SUPPORTED,
    }
    assert status == 0x0000
    assert pydicom.dcmread(io.BytesIO(stored)).SOPClassUID == sop_class
