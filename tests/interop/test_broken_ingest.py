"""Issue 10, "Never store a broken dataset", on the wire: C-STORE from our own SCU (raw bytes), from
pynetdicom and from DCMTK's storescu, and `minipacs import`.

A broken dataset is answered 0xC000 "Error: Cannot understand" (PS3.4 Table B.2-1) with an Error
Comment of at most 64 characters saying what is wrong and where; nothing is stored, a good stored
copy is not replaced. storescu parses a file before it sends it and will not send a broken one (it
says "Bad DICOM file"); it re-encodes what it sends, so through it we check the opposite: every
well-formed dataset of the corpus, re-encoded by DCMTK, is stored (no false refusals).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.core.model import DuplicatePolicy
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from tests.broken_corpus import DEFLATED, ENCAPSULATED, EXPLICIT, IMPLICIT, Case, case, cases, matches, part10
from tests.dicomgen import CT_IMAGE_STORAGE
from tests.peers import dcmtk, minipacs_cmd, run
from tests.stored_files import instance_path

pytestmark = pytest.mark.interop


@asynccontextmanager
async def serving(tmp_path: Path, **extra: Any) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title="MINIPACS",
        fsync=False,
        allow_unregistered=("echo", "store"),
        **extra,
    )
    app = await build_app(settings)
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


async def c_store(port: int, c: Case) -> tuple[int, str]:
    """C-STORE of the case's dataset bytes as they are, on a context of its transfer syntax."""
    settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=10, idle=10))
    rq = build_rq("SCU", "MINIPACS", [(CT_IMAGE_STORAGE, [c.syntax.uid])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings)
    try:
        context = assoc.context_for(CT_IMAGE_STORAGE)
        assert context is not None
        command = Command.make(
            "C-STORE-RQ",
            has_dataset=True,
            MessageID=1,
            AffectedSOPClassUID=CT_IMAGE_STORAGE,
            AffectedSOPInstanceUID=c.sop,
            Priority=0,
        )
        final = [m async for m in assoc.request(context.context_id, command, c.data, timeout=10)][-1].command
        return int(final["Status"]), str(final.get("ErrorComment", ""))
    finally:
        await assoc.release()


def test_c_store_refuses_every_broken_case_with_0xc000_and_says_where(tmp_path: Path) -> None:
    async def main() -> tuple[list[tuple[Case, int, str]], int]:
        async with serving(tmp_path) as app:
            answers = [(c, *await c_store(app.dicom.port, c)) for c in cases()]
            return answers, await app.archive.count_instances()

    answers, count = asyncio.run(main())
    for c, status, comment in answers:
        if c.broken:
            assert status == 0xC000, (c.id, hex(status), comment)
            assert matches(c, comment), (c.id, comment)
            assert len(comment) <= 64
        else:
            assert (status, comment) == (0x0000, ""), c.id
    assert count == len(cases(broken=False))


def test_a_broken_c_store_never_replaces_the_good_instance(tmp_path: Path) -> None:
    sop = "1.2.826.0.1.3680043.8.498.77001"

    async def main() -> list[tuple[int, str]]:
        async with serving(tmp_path, duplicate_policy=DuplicatePolicy.REPLACE) as app:
            answers = [await c_store(app.dicom.port, case("ok", IMPLICIT, sop))]
            path = await instance_path(app.archive, sop)
            kept = path.read_bytes()
            answers.append(await c_store(app.dicom.port, case("pixel-data-truncated", IMPLICIT, sop)))
            answers.append(await c_store(app.dicom.port, case("garbage-short", IMPLICIT, sop)))
            assert (await instance_path(app.archive, sop)).read_bytes() == kept
            answers.append(await c_store(app.dicom.port, case("ok-undefined-lengths", IMPLICIT, sop)))
            assert (await instance_path(app.archive, sop)).read_bytes() != kept  # a good copy does replace
            assert await app.archive.count_instances() == 1
            return answers

    answers = asyncio.run(main())
    assert [status for status, _ in answers] == [0x0000, 0xC000, 0xC000, 0x0000]
    assert re.match(r"^\(7FE0,0010\) at \d+: length 128 runs past the end at \d+$", answers[1][1]), answers[1]
    assert re.match(r"^6 bytes after the last element at \d+ are not an element$", answers[2][1]), answers[
        2
    ]  # 5 + the pad byte


def test_pynetdicom_c_store_of_broken_files_gets_0xc000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a Part 10 file's dataset as it is (send_c_store with a path and
    STORE_SEND_CHUNKED_DATASET; by default it decodes the file and sends pydicom's re-encoding)."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    chosen = [
        case("pixel-data-truncated", IMPLICIT),
        case("invalid-vr", EXPLICIT),
        case("item-past-sequence", EXPLICIT),
        case("garbage-not-an-element", DEFLATED),
        case("fragment-truncated", ENCAPSULATED),
        case("ok", EXPLICIT),
    ]
    files = []
    for c in chosen:
        files.append(tmp_path / f"{c.id}.dcm")
        files[-1].write_bytes(part10(c))

    def send(port: int) -> list[tuple[int, str]]:
        ae = AE(ae_title="PYNETDICOM")
        for c in chosen:
            ae.add_requested_context(CT_IMAGE_STORAGE, [c.syntax.uid])
        assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
        assert assoc.is_established
        try:
            out = []
            for path in files:
                status = assoc.send_c_store(path)
                out.append((int(status.Status), str(status.get("ErrorComment", ""))))
            return out
        finally:
            assoc.release()

    async def main() -> tuple[list[tuple[int, str]], int]:
        async with serving(tmp_path) as app:
            answers = await asyncio.to_thread(send, app.dicom.port)
            return answers, await app.archive.count_instances()

    answers, count = asyncio.run(main())
    for c, (status, comment) in zip(chosen, answers, strict=True):
        if c.broken:
            assert status == 0xC000 and matches(c, comment) and len(comment) <= 64, (c.id, hex(status), comment)
        else:
            assert status == 0x0000, (c.id, hex(status), comment)
    assert count == 1


def test_storescu_sends_the_good_corpus_and_all_of_it_is_stored(tmp_path: Path) -> None:
    """No false refusals: DCMTK reads each well-formed dataset of the corpus, re-encodes and sends
    it (storescu proposes explicit and implicit little endian); every one is stored. A broken file
    storescu will not send at all ("Bad DICOM file"): that is why the broken corpus goes through our
    own SCU and pynetdicom."""
    good = [c for c in cases(broken=False) if c.syntax is not ENCAPSULATED]
    for c in good:
        (tmp_path / f"{c.id}.dcm").write_bytes(part10(c))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(part10(case("pixel-data-truncated", EXPLICIT)))
    storescu = dcmtk("storescu")

    async def main() -> tuple[Any, int]:
        async with serving(tmp_path) as app:
            cmd = [storescu, "--no-halt", "-aec", "MINIPACS", "127.0.0.1", str(app.dicom.port), str(broken)]
            result = await asyncio.to_thread(run, cmd + [str(tmp_path / f"{c.id}.dcm") for c in good])
            return result, await app.archive.count_instances()

    result, count = asyncio.run(main())
    assert f"Bad DICOM file: {broken}" in result.stderr, result.stderr
    assert "Store Failed" not in result.stderr and "Status" not in result.stderr, result.stderr
    assert count == len(good)


def test_minipacs_import_rejects_a_broken_file_and_says_why(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good, broken = case("ok", EXPLICIT), case("item-past-sequence", EXPLICIT)
    (src / "good.dcm").write_bytes(part10(good))
    (src / "broken.dcm").write_bytes(part10(broken))
    res = run(minipacs_cmd("import", "--data", str(tmp_path / "data"), "--no-progress", str(src)))
    assert res.returncode == 1, res.stdout + res.stderr  # one file rejected
    assert "1 stored, 0 duplicate(s), 1 rejected" in res.stdout
    line = next(line for line in res.stderr.splitlines() if "broken.dcm" in line)
    assert re.search(r"\(FFFE,E000\) at \d+: length \d+ runs past its sequence", line), line


@pytest.mark.parametrize(
    "c",
    [
        *(case("undefined-length-ob-not-pixel-data", s) for s in (EXPLICIT, ENCAPSULATED)),
        *(case("encapsulated-in-native-syntax", s) for s in (EXPLICIT, IMPLICIT)),
    ],
    ids=lambda c: c.id,
)
def test_dcmtk_cannot_re_encode_what_the_walk_refuses_for_undefined_lengths(tmp_path: Path, c: Case) -> None:
    """Why the walk refuses these two (found by a differential fuzz of the walk against dcmdump):
    an OB of undefined length that is not Pixel Data has no encoding in the standard (PS3.5 A.4
    encapsulates Pixel Data only) and DCMTK refuses the whole file; encapsulated Pixel Data under a
    native syntax (A.1, A.2) DCMTK reads but cannot write in any syntax, so a retrieve that converts
    it fails. dcmconv stands in for that retrieve."""
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(part10(c))
    result = run([dcmtk("dcmconv"), "+te", str(source), str(target)])
    assert result.returncode != 0, result.stdout + result.stderr
    undefined_ob = c.name.startswith("undefined")
    said = "Illegal element with OB or OW" if undefined_ob else "Pixel representation cannot be changed"
    assert said in result.stderr, result.stderr
    # and the good neighbours: the same shape with Pixel Data under its encapsulated syntax re-encodes
    good = tmp_path / "good.dcm"
    good.write_bytes(part10(case("ok-encapsulated", ENCAPSULATED)))
    assert run([dcmtk("dcmconv"), str(good), str(target)]).returncode == 0
