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
  transcoded by the retrieve path, pixel-identical;
- end to end: `minipacs serve` with an ingest policy compresses what DCMTK storescu sent, and
  DCMTK movescu moves it to ``storescp +xt`` as JPEG-LS.
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


def test_minipacs_serve_compresses_on_ingest_and_moves_as_stored(tmp_path: Path) -> None:
    """End to end: `minipacs serve` with an ingest policy; DCMTK storescu sends, the instances are
    compressed shortly after (GET /api/storage), and DCMTK movescu moves them to storescp +xt as
    JPEG-LS, which dcmdjpls decompresses to the original pixels."""
    import time

    import httpx

    from tests.peers import start_server

    study, series = generate_uid(), generate_uid()
    originals = {}
    for n, kind in enumerate(("16signed", "multiframe", "rgb")):
        ds, arr = image(kind, study, series)
        ds.InstanceNumber = n + 1
        originals[str(ds.SOPInstanceUID)] = arr
        save(ds, tmp_path / "in" / f"{n}.dcm")
    http = free_port()
    with storescp(tmp_path / "out", "+xt") as scp_port:
        config = tmp_path / "minipacs.toml"
        config.write_text(
            'allow_unregistered = "echo,store,find,move"\nfsync = false\ncompression_ingest_delay_seconds = 0.2\n\n'
            f'[[nodes]]\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {scp_port}\n\n'
            '[[compression]]\nname = "ct"\nsyntax = "jpeg-ls-lossless"\nmatch = { Modality = "CT" }\nwhen = "ingest"\n'
        )
        server = start_server(tmp_path, "--config", str(config), env={"MINIPACS_HTTP_PORT": str(http)})
        try:
            wait_for_port("127.0.0.1", http, proc=server.proc)
            res = run(
                [dcmtk("storescu"), "+sd", "-aec", "MINIPACS", "127.0.0.1", str(server.port), str(tmp_path / "in")]
            )
            assert res.returncode == 0, res.stdout + res.stderr
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                storage = httpx.get(f"http://127.0.0.1:{http}/api/storage").json()
                if storage["compressed"] == len(originals):
                    break
                time.sleep(0.2)
            assert storage["compressed"] == len(originals) and storage["saved_bytes"] > 0, storage
            moved = run(
                [
                    dcmtk("movescu"),
                    "-S",
                    "-aet",
                    "MOVESCU",
                    "-aec",
                    "MINIPACS",
                    "-aem",
                    "STORESCP",
                    "-k",
                    "QueryRetrieveLevel=STUDY",
                    "-k",
                    f"StudyInstanceUID={study}",
                    "127.0.0.1",
                    str(server.port),
                ]
            )
            assert moved.returncode == 0, moved.stdout + moved.stderr
        finally:
            server.stop()
    got = received(tmp_path / "out")
    assert set(got) == set(originals)
    for uid, arr in originals.items():
        assert pydicom.dcmread(got[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID == JLS
        out = tmp_path / "plain" / f"{uid}.dcm"
        out.parent.mkdir(exist_ok=True)
        res = run([dcmtk("dcmdjpls"), str(got[uid]), str(out)])
        assert res.returncode == 0, res.stdout + res.stderr
        assert np.array_equal(pydicom.dcmread(out).pixel_array, arr)


JLS = SYNTAXES["jpeg-ls-lossless"].uid
