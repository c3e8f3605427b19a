"""Compressed instances against DCMTK: sent as stored to a peer that accepts the syntax, decompressed
by DCMTK to the original pixels; transcoded for a peer that accepts only uncompressed syntaxes.

The archive compresses 8-bit, 16-bit unsigned and signed, multi-frame and RGB images (core/compression.py),
then our C-STORE SCU (services/outbound.py) sends the study to /usr/bin/storescp:

- JPEG-LS lossless to ``storescp +xt``: the received files are JPEG-LS, and ``dcmdjpls`` decompresses
  them to the original pixels;
- RLE Lossless to ``storescp +xr``: received as RLE, decompressed by ``dcmdrle``;
- JPEG 2000 lossless to ``storescp +xv``: received as JPEG 2000 (DCMTK has no JPEG 2000 codec: the
  received files are decoded by pydicom's OpenJPEG plugin);
- any of them to a default ``storescp`` (uncompressed syntaxes only): received uncompressed,
  transcoded by the retrieve path, pixel-identical.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.compression import SYNTAXES, CompressionSettings, Compressor
from minipacs.core.model import Origin
from minipacs.core.nodes import Node
from minipacs.core.retrieve import select_instances
from minipacs.net.association import AssociationSettings
from minipacs.net.dul import Timeouts
from minipacs.services.outbound import Outbound, OutboundSettings
from tests.core.test_compression import KINDS, image, save
from tests.peers import dcmtk, free_port, run, wait_for_port

pytestmark = [pytest.mark.interop]

TIMEOUTS = Timeouts(acse=30.0, dimse=60.0, idle=60.0)
UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
# syntax -> (storescp option that accepts it, DCMTK decompressor or None: pydicom decodes)
PEERS: dict[str, tuple[str, str | None]] = {
    "jpeg-ls-lossless": ("+xt", "dcmdjpls"),
    "rle": ("+xr", "dcmdrle"),
    "jpeg2000-lossless": ("+xv", None),
}


@contextmanager
def storescp(folder: Path, *options: str) -> Iterator[int]:
    folder.mkdir(parents=True)
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-od", str(folder), "-aet", "STORESCP", *options, str(port)])
    try:
        wait_for_port("127.0.0.1", port, proc=scp)
        yield port
    finally:
        scp.terminate()
        scp.wait(10)


def received(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


@pytest.mark.parametrize("syntax", list(PEERS))
def test_compressed_instances_reach_dcmtk_pixel_identical(tmp_path: Path, syntax: str) -> None:
    import asyncio

    study = generate_uid()
    originals = {str(ds.SOPInstanceUID): (ds, arr) for ds, arr in (image(kind, study) for kind in KINDS)}
    option, decompressor = PEERS[syntax]
    target = SYNTAXES[syntax]

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            for uid, (ds, _) in originals.items():
                await archive.import_file(save(ds, tmp_path / "in" / f"{uid}.dcm"), _origin())
            compressor = Compressor(archive, CompressionSettings(fsync=False))
            outcomes = [await compressor.compress(c, target) async for p in compressor.candidates() for c in p]
            assert [o.status for o in outcomes] == ["compressed"] * len(KINDS), outcomes
            instances = await select_instances(archive, "STUDY", {"StudyInstanceUID": study})
            assert {i.transfer_syntax_uid for i in instances} == {target.uid}
            outbound = Outbound(OutboundSettings(AssociationSettings("MINIPACS", timeouts=TIMEOUTS)), archive)
            for folder, options in (("as-stored", (option,)), ("uncompressed", ())):
                with storescp(tmp_path / folder, *options) as port:
                    result = await outbound.send(Node("STORESCP", "127.0.0.1", port), instances)
                    assert result.sent == len(KINDS) and not result.failed, [f.reason for f in result.failed]
        finally:
            await archive.close()

    asyncio.run(main())
    as_stored, plain = received(tmp_path / "as-stored"), received(tmp_path / "uncompressed")
    assert set(as_stored) == set(plain) == set(originals)
    for uid, (_, arr) in originals.items():
        got = pydicom.dcmread(as_stored[uid], stop_before_pixels=True)
        assert got.file_meta.TransferSyntaxUID == target.uid  # sent as stored
        if decompressor is not None:
            out = tmp_path / "decompressed" / f"{uid}.dcm"
            out.parent.mkdir(exist_ok=True)
            res = run([dcmtk(decompressor), str(as_stored[uid]), str(out)])
            assert res.returncode == 0, res.stdout + res.stderr
            decoded = pydicom.dcmread(out)
            assert decoded.file_meta.TransferSyntaxUID in UNCOMPRESSED
        else:
            decoded = pydicom.dcmread(as_stored[uid])
        assert decoded.SOPInstanceUID == uid
        assert np.array_equal(decoded.pixel_array, arr), f"{uid}: {decompressor or 'pydicom'} differs"
        transcoded = pydicom.dcmread(plain[uid])
        assert transcoded.file_meta.TransferSyntaxUID in UNCOMPRESSED
        assert np.array_equal(transcoded.pixel_array, arr)


def _origin() -> Origin:
    return Origin("test")
