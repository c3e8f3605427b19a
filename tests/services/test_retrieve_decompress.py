"""C-GET and C-MOVE of compressed instances to a peer that only accepts Explicit VR Little Endian.

pynetdicom is the peer (our SCU is not involved): as C-GET SCU with storage contexts offering
only Explicit VR Little Endian, and as the C-MOVE destination's storage SCP accepting only it.
The archive must decompress (core/transcode.py) and the peer must get an uncompressed file
whose pixels equal pydicom's decode of the original, under the original SOP Instance UID.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.errors import UnknownDestination
from minipacs.core.model import Origin
from minipacs.net.dul import Timeouts
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from minipacs.services.verification import VerificationSCP
from tests.compressed import COMPRESSED, fresh_copy
from tests.peers import free_port

TIMEOUTS = Timeouts(acse=5.0, dimse=20.0, idle=30.0)
# JPEG (baseline, 12-bit extended and lossless), JPEG 2000 (lossless and lossy), and JPEG-LS and RLE for good measure
NAMES = [
    "jpeg_baseline",
    "jpeg_extended_12bit",
    "jpeg_lossless",
    "jpeg2000_lossless",
    "jpeg2000",
    "jpeg_ls",
    "rle_2frames",
]


@dataclass(frozen=True)
class Node:
    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass
class Registry:
    """The AE registry as MoveSCP sees it: one destination."""

    node: Node

    async def resolve_move_destination(self, ae_title: str, requester_host: str) -> Node:
        if ae_title != self.node.ae_title:
            raise UnknownDestination(f"C-MOVE destination {ae_title!r} is not a registered node")
        return self.node


@dataclass
class Env:
    server: DicomServer
    originals: dict[str, Dataset]  # SOP Instance UID -> the dataset as stored


@asynccontextmanager
async def archive_with_compressed(tmp_path: Path, destination: Node) -> AsyncIterator[Env]:
    archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
    originals: dict[str, Dataset] = {}
    study = pydicom.uid.generate_uid()
    for name in NAMES:
        path, ds = fresh_copy(name, tmp_path / "src" / name, study_uid=study)
        assert ds.file_meta.TransferSyntaxUID == COMPRESSED[name][1]
        await archive.import_file(path, Origin("import"))
        originals[str(ds.SOPInstanceUID)] = ds
    server = DicomServer(
        "MINIPACS",
        [
            VerificationSCP(),
            StorageSCP(archive, scu_role=True),
            MoveSCP(archive, Registry(destination)),
            GetSCP(archive),
        ],
        host="127.0.0.1",
        port=0,
        timeouts=TIMEOUTS,
    )
    await server.start()
    try:
        yield Env(server, originals)
    finally:
        await server.close(grace=2.0)
        await archive.close()


def _study_identifier(env: Env) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = next(iter(env.originals.values())).StudyInstanceUID
    return ds


def _sop_classes(env: Env) -> set[str]:
    return {str(ds.SOPClassUID) for ds in env.originals.values()}


def _check(received: dict[str, Dataset], env: Env, syntax: str = ExplicitVRLittleEndian) -> None:
    assert set(received) == set(env.originals)
    for sop, got in received.items():
        original = env.originals[sop]
        assert got.file_meta.TransferSyntaxUID == syntax, sop
        assert got.SOPInstanceUID == sop  # decompressing keeps the instance's identity
        assert "PixelData" in got and not got["PixelData"].is_undefined_length
        assert np.array_equal(got.pixel_array, original.pixel_array), sop


def _keep(event: evt.Event, received: dict[str, Dataset], lock: threading.Lock) -> int:
    ds = event.dataset
    ds.file_meta = event.file_meta
    with lock:
        received[str(ds.SOPInstanceUID)] = ds
    return 0x0000


def _c_get(env: Env, syntaxes: list[str], received: dict[str, Dataset]) -> list[int]:
    """A pynetdicom C-GET of the study proposing ``syntaxes`` in one context per stored class, with
    the SCP role (PS3.7 D.3.3.4); the instances it receives go into ``received``; the statuses."""
    lock = threading.Lock()
    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in sorted(_sop_classes(env)):
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1",
        env.server.port,
        ae_title="MINIPACS",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, _keep, [received, lock])],
    )
    assert assoc.is_established
    try:
        return [
            int(status.Status)
            for status, _ in assoc.send_c_get(_study_identifier(env), StudyRootQueryRetrieveInformationModelGet)
            if status
        ]
    finally:
        assoc.release()
        ae.shutdown()


def test_c_get_to_a_peer_that_only_accepts_explicit_vr_little_endian(tmp_path: Path) -> None:
    received: dict[str, Dataset] = {}

    async def main() -> None:
        async with archive_with_compressed(tmp_path, Node("NOBODY", "127.0.0.1", 1)) as env:
            statuses = await asyncio.to_thread(_c_get, env, [ExplicitVRLittleEndian], received)
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            _check(received, env)

    asyncio.run(main())


def test_c_get_proposing_a_compressed_syntax_first_in_one_context(tmp_path: Path) -> None:
    """getscu +xs proposes ONE context per storage class, [JPEG Lossless, Explicit VR LE, ...]. The
    acceptor picks one (PS3.8 9.3.2.2); picking the first, JPEG Lossless, made every instance not stored
    in it fail (nothing is compressed on the way out). For a context on which the requestor takes the
    SCP role (C-GET, PS3.7 D.3.3.4), a native syntax is chosen: every stored instance can be sent in it."""
    received: dict[str, Dataset] = {}

    async def main() -> None:
        async with archive_with_compressed(tmp_path, Node("NOBODY", "127.0.0.1", 1)) as env:
            statuses = await asyncio.to_thread(
                _c_get, env, [JPEGLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian], received
            )
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            _check(received, env)

    asyncio.run(main())


def test_c_get_to_a_peer_that_only_accepts_deflated(tmp_path: Path) -> None:
    """PS3.4 C.4.3.3.1: an instance goes in a syntax the requester accepted when we can convert to one;
    Deflated Explicit VR Little Endian (PS3.5 A.5) is one we can make (decompressed, explicit VR LE,
    deflated). Before, only the native syntaxes were tried and every sub-operation failed."""
    received: dict[str, Dataset] = {}

    async def main() -> None:
        async with archive_with_compressed(tmp_path, Node("NOBODY", "127.0.0.1", 1)) as env:
            statuses = await asyncio.to_thread(_c_get, env, [DeflatedExplicitVRLittleEndian], received)
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            assert set(received) == set(env.originals)
            for sop, got in received.items():
                assert got.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian, sop
                assert np.array_equal(got.pixel_array, env.originals[sop].pixel_array), sop

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("jpeg_baseline", ExplicitVRLittleEndian),
        ("jpeg_extended_12bit", ExplicitVRLittleEndian),
        ("jpeg2000_lossless", ExplicitVRLittleEndian),
        # PS3.4 C.4.2.3.1 / PS3.5 A.5: a destination that accepts only Deflated gets it too; the C-MOVE
        # proposal used to offer the native syntaxes alone, and every sub-operation failed
        ("jpeg_baseline", DeflatedExplicitVRLittleEndian),
    ],
    ids=["jpeg_baseline", "jpeg_extended_12bit", "jpeg2000_lossless", "jpeg_baseline-deflated-only"],
)
def test_c_move_to_a_storage_scp_that_only_accepts_explicit_vr_little_endian(
    tmp_path: Path, name: str, syntax: str
) -> None:
    received: dict[str, Dataset] = {}
    lock = threading.Lock()
    dest_port = free_port()

    async def main() -> None:
        async with archive_with_compressed(tmp_path, Node("EXPLICITONLY", "127.0.0.1", dest_port)) as env:
            scp_ae = AE(ae_title="EXPLICITONLY")
            for sop_class in _sop_classes(env):
                scp_ae.add_supported_context(sop_class, [syntax])
            scp = scp_ae.start_server(
                ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, _keep, [received, lock])]
            )
            sop = next(
                uid for uid, ds in env.originals.items() if ds.file_meta.TransferSyntaxUID == COMPRESSED[name][1]
            )

            def move() -> list[int]:
                ae = AE(ae_title="MOVESCU")
                ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
                ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
                assoc = ae.associate("127.0.0.1", env.server.port, ae_title="MINIPACS")
                assert assoc.is_established
                identifier = _study_identifier(env)
                identifier.QueryRetrieveLevel = "IMAGE"
                identifier.SOPInstanceUID = sop
                try:
                    return [
                        int(status.Status)
                        for status, _ in assoc.send_c_move(
                            identifier, "EXPLICITONLY", StudyRootQueryRetrieveInformationModelMove
                        )
                        if status
                    ]
                finally:
                    assoc.release()
                    ae.shutdown()

            try:
                statuses = await asyncio.to_thread(move)
            finally:
                scp.shutdown()
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            _check(received, Env(env.server, {sop: env.originals[sop]}), syntax)

    asyncio.run(main())
