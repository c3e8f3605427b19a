"""Issue 10, "Never store a broken dataset": ingest walks the whole dataset's element structure.

Every kind of tests/broken_corpus.py -- in explicit and implicit VR, big endian, defined and
undefined lengths, deflated -- is refused with BrokenDataset whose sentence (the C-STORE Error
Comment) fits 64 characters and names what and where; nothing is stored, nothing replaced. The
well-formed datasets of the corpus, pydicom's test files and the benchmark's instances are stored.
"""

from __future__ import annotations

import asyncio
import copy
import io
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError, BrokenDataset, InvalidInstance, UnreadableInstance
from minipacs.core.inflate import DatasetLimits, check_deflated
from minipacs.core.model import DuplicatePolicy, Origin, StagedPath, StoreStatus
from minipacs.core.stored import read_stored
from minipacs.core.structure import (
    ERROR_COMMENT_LENGTH,
    StructureWalk,
    _too_deep,
    check_structure,
    encapsulates,
    walk_file,
)
from minipacs.core.structure import walk_bytes as walk_in_memory
from minipacs.dicom.header import MalformedDataset, dataset_encoding
from minipacs.dicom.part10 import NotPart10, dataset_offset_of
from minipacs.index.schema import Instance
from tests.broken_corpus import (
    CONTENT_SEQUENCE,
    DEFLATED,
    ENCAPSULATED,
    EXPLICIT,
    IMPLICIT,
    SYNTAXES,
    Case,
    Encoder,
    case,
    cases,
    head,
    matches,
    pixels,
)
from tests.core.test_archive import rows
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, generate_uid, make_ct
from tests.stored_files import instance_path

IMPORT = Origin(kind="import")


def check_file_structure(path: Path) -> None:
    """The stored-file walk (core/structure.py check_structure) over a stored big-endian file."""
    offset = dataset_offset_of(path)
    with open(path, "rb") as fp:
        fp.seek(offset)
        check_structure(fp, path.stat().st_size, implicit=False, little_endian=False, max_depth=64)


def stage_raw(archive: Archive, c: Case) -> StagedPath:
    staging = archive.open_staging(CT_IMAGE_STORAGE, c.sop, c.syntax.uid, "MODALITY")
    staging.write(c.data)
    return staging.finish()


def walk_bytes(c: Case, *, chunk: int = 0, max_depth: int = 64) -> str:
    """The walk's sentence for a case ("" when it passes): whole, or fed ``chunk`` bytes at a time."""
    raw = zlib.decompress(c.data, -zlib.MAX_WBITS) if c.syntax.deflated else c.data
    enc = dataset_encoding(c.syntax.uid)
    try:
        if chunk:
            walk = StructureWalk(
                implicit=enc.implicit_vr,
                little_endian=enc.little_endian,
                max_depth=max_depth,
                encapsulated=encapsulates(c.syntax.uid),
            )
            for start in range(0, len(raw), chunk):
                walk.feed(raw[start : start + chunk])
            walk.finish()
        else:
            walk = StructureWalk(
                implicit=enc.implicit_vr,
                little_endian=enc.little_endian,
                max_depth=max_depth,
                size=len(raw),
                encapsulated=encapsulates(c.syntax.uid),
            )
            walk.walk(raw)
    except MalformedDataset as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------------------- the walk itself


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.id)
def test_the_walk_refuses_each_broken_kind_and_passes_each_good_one(c: Case) -> None:
    said = walk_bytes(c)
    if c.broken:
        assert matches(c, said), said
        assert len(said) <= ERROR_COMMENT_LENGTH
    else:
        assert said == ""


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_a_stream_fed_in_pieces_gives_the_same_verdict(chunk: int) -> None:
    """The deflate path feeds the walk as the stream inflates: every split point, same verdict."""
    for c in cases():
        said = walk_bytes(c, chunk=chunk)
        assert bool(said) == c.broken, (c.id, said)
        assert len(said) <= ERROR_COMMENT_LENGTH


@pytest.mark.parametrize("window", [1, 13, 100, 64 * 1024])  # 1: at least a 12-byte header is read
def test_a_file_read_in_windows_gives_the_same_sentence(tmp_path: Path, window: int) -> None:
    """walk_file reads from each header on; a window may end anywhere, even inside a header."""
    path = tmp_path / "ds"
    for c in cases():
        if c.syntax.deflated:
            continue
        path.write_bytes(b"PREFIX" + c.data)  # the dataset starts at offset 6, as after a File Meta
        enc = dataset_encoding(c.syntax.uid)
        try:
            walk_file(
                path,
                6,
                implicit=enc.implicit_vr,
                little_endian=enc.little_endian,
                max_depth=64,
                window=window,
                encapsulated=encapsulates(c.syntax.uid),
            )
            said = ""
        except MalformedDataset as exc:
            said = str(exc)
        assert said == walk_bytes(c), c.id


def test_a_file_already_in_memory_gives_the_same_sentence_as_read_from_disk(tmp_path: Path) -> None:
    """The writer walks a small staged file from the bytes it read once (walk_bytes): same verdicts."""
    path = tmp_path / "ds"
    checked = 0
    for c in cases():
        if c.syntax.deflated:
            continue
        data = b"PREFIX" + c.data
        path.write_bytes(data)
        enc = dataset_encoding(c.syntax.uid)
        options = {
            "implicit": enc.implicit_vr,
            "little_endian": enc.little_endian,
            "max_depth": 64,
            "encapsulated": encapsulates(c.syntax.uid),
        }
        try:
            walk_file(path, 6, **options)
            from_disk = ""
        except MalformedDataset as exc:
            from_disk = str(exc)
        try:
            walk_in_memory(data, 6, **options)
            from_memory = ""
        except MalformedDataset as exc:
            from_memory = str(exc)
        assert from_disk == from_memory == walk_bytes(c), c.id
        checked += bool(from_disk)
    assert checked >= 10, "the corpus has broken cases"


def test_every_sentence_fits_the_error_comment_even_with_large_numbers() -> None:
    """Tags, 10-digit offsets and lengths: the sentence drops its tail rather than pass 64 characters."""
    walk = StructureWalk(implicit=False, little_endian=True, max_depth=64, size=4_294_967_295, encapsulated=False)
    walk._stack.append((1, -1, 4_294_967_295, False, 0x0040A730, 4_000_000_000, 0xFFFFFFFF))
    sentences = [
        walk._past(0x7FE00010, 4_294_967_000, 4_294_967_294, 4_294_967_295),
        walk._short(4_294_967_290, 4_294_967_295),
    ]
    walk._stack.append((2, -1, 4_294_967_295, False, 0x7FE00010, 4_000_000_000, 0xFFFFFFFF))
    sentences.append(walk._past(0xFFFEE000, 4_294_967_000, 4_294_967_294, 4_294_967_295))
    sentences.append(_too_deep(128, 4_294_967_295))
    walk._stack.append((0, 4_294_967_295, 4_294_967_295, False, 0xFFFEE000, 4_000_000_000, 4_000_000_000))
    sentences.append(walk._short(4_294_967_290, 4_294_967_295))
    for text in sentences:
        assert 20 < len(text) <= ERROR_COMMENT_LENGTH, text


def test_nesting_is_refused_past_max_sequence_depth_and_accepted_at_it() -> None:
    def nested(depth: int, defined: bool) -> Case:
        e = Encoder(EXPLICIT)
        inner = e.text(0x0040A040, "CS", "TEXT")
        for _ in range(depth):
            inner = e.sq(CONTENT_SEQUENCE, [e.item(inner, defined=defined)], defined=defined)
        sop = generate_uid()
        return Case("nested", EXPLICIT, sop, head(e, sop) + inner + pixels(e), "")

    for defined in (True, False):
        assert walk_bytes(nested(5, defined), max_depth=5) == ""
        said = walk_bytes(nested(6, defined), max_depth=5)
        assert said.startswith("sequences nested over 5 deep at ") and said.endswith("(max_sequence_depth)")


def test_pydicoms_test_files_that_pydicom_reads_whole_pass_the_walk() -> None:
    """Real-world data: every Part 10 test file of pydicom whose dataset pydicom reads to its end
    without complaint passes. The ones refused are exactly the broken ones: truncated (MR_truncated,
    rtplan_truncated), a dataset in implicit VR under an explicit transfer syntax (SC_rgb_jpeg,
    meta_missing_tsyntax: their headers are refused today already), and DICOMDIR-nooffset, whose
    last directory record claims 248 bytes with 224 left in its sequence (not a storable instance)."""
    refused: dict[str, str] = {}
    walked = 0
    for name in get_testdata_files():
        path = Path(name)
        try:
            offset = dataset_offset_of(path)
            syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
        except (NotPart10, OSError, ValueError, AttributeError):
            continue
        enc = dataset_encoding(syntax)
        try:
            if enc.deflated:
                check_deflated(path, offset, DatasetLimits())
            else:
                walk_file(
                    path,
                    offset,
                    implicit=enc.implicit_vr,
                    little_endian=enc.little_endian,
                    max_depth=64,
                    encapsulated=encapsulates(syntax),
                )
            walked += 1
        except (MalformedDataset, ArchiveError) as exc:
            refused[path.name] = str(exc)
    assert walked > 100
    assert sorted(refused) == [
        "DICOMDIR-nooffset",
        "MR_truncated.dcm",
        "SC_rgb_jpeg.dcm",
        "meta_missing_tsyntax.dcm",
        "rtplan_truncated.dcm",
    ], refused
    assert refused["MR_truncated.dcm"].startswith("(7FE0,0010) at 1154: length 8192 runs past the end")


def _bench_instance(rows: int, cols: int) -> bytes:
    """An instance as bench/gen_data.py writes them (realistic header, OW pixels), as sent."""
    from bench.gen_data import base_dataset, pixel_bytes  # the benchmark's own generator

    ds = copy.copy(base_dataset("CT", CT_IMAGE_STORAGE, rows, cols, generate_uid(), generate_uid()))
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = pixel_bytes(rows, cols, 1)
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = EXPLICIT.uid
    ds.file_meta = meta
    return encode_dataset(ds, EXPLICIT.uid)


@pytest.mark.parametrize("shape", [(64, 64), (512, 512)], ids=["9.5 kB", "0.5 MB"])
def test_the_benchmarks_instances_pass(tmp_path: Path, shape: tuple[int, int]) -> None:
    data = _bench_instance(*shape)
    path = tmp_path / "ds"
    path.write_bytes(data)
    walk_file(path, 0, implicit=False, little_endian=True, max_depth=64, encapsulated=False)
    path.write_bytes(data[:-1])
    with pytest.raises(MalformedDataset, match=r"^\(7FE0,0010\) at \d+: length \d+ runs past the end"):
        walk_file(path, 0, implicit=False, little_endian=True, max_depth=64, encapsulated=False)


# ---------------------------------------------------------------------------- through the archive


def test_ingest_refuses_every_broken_case_and_stores_every_good_one(with_archive: Any) -> None:
    """The ONE ingest path (C-STORE, STOW-RS, uploads and import all end here), on SQLite and PostgreSQL."""

    async def body(archive: Archive) -> None:
        stored = 0
        for c in cases():
            staged = stage_raw(archive, c)
            if not c.broken:
                outcome = await archive.ingest(staged, IMPORT)
                assert outcome.status is StoreStatus.STORED, c.id
                stored += 1
                # what ingest accepts, the stored-file reader (its own walk, then pydicom) reads whole
                path = await instance_path(archive, c.sop)
                if c.id == "ok-un-undefined-length-big-endian":
                    # PS3.5 §6.2.2: implicit VR LITTLE endian inside, which pydicom 3.0 reads big endian
                    # (DCMTK reads it): stored as received, our walk passes it, pydicom's read says why not
                    await asyncio.to_thread(check_file_structure, path)
                    with pytest.raises(UnreadableInstance, match="pydicom cannot read it"):
                        await asyncio.to_thread(read_stored, path)
                    continue
                ds = await asyncio.to_thread(read_stored, path)
                assert ds.SOPInstanceUID == c.sop and "PixelData" in ds, c.id
                continue
            with pytest.raises(BrokenDataset) as caught:
                await archive.ingest(staged, IMPORT)
            assert matches(c, str(caught.value)), (c.id, str(caught.value))
            assert len(str(caught.value)) <= ERROR_COMMENT_LENGTH
            assert not staged.path.exists(), c.id  # the staged copy is gone, nothing moved into storage
        assert len(rows(archive, Instance)) == stored == len(cases(broken=False))
        root = archive.blobs.root  # type: ignore[attr-defined]  # the filesystem store
        assert sum(len(files) for _, _, files in os.walk(root)) == stored

    with_archive(body)


def test_a_broken_copy_never_replaces_a_good_stored_instance(with_archive: Any) -> None:
    """duplicate_policy=replace: a second copy replaces the first -- unless it is broken."""

    async def body(archive: Archive) -> None:
        sop = generate_uid()
        for syntax in SYNTAXES:
            good = case("ok", syntax, sop)
            await archive.ingest(stage_raw(archive, good), IMPORT)
            path = await instance_path(archive, sop)
            kept = path.read_bytes()
            for name in ("pixel-data-truncated", "garbage-short", "item-past-sequence", "element-past-end"):
                with pytest.raises(BrokenDataset):
                    await archive.ingest(stage_raw(archive, case(name, syntax, sop)), IMPORT)
                assert (await instance_path(archive, sop)).read_bytes() == kept, (name, syntax.name)
            assert len(rows(archive, Instance)) == 1

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_ingest_applies_max_sequence_depth(with_archive: Any) -> None:
    e = Encoder(IMPLICIT)

    def nested(depth: int) -> Case:
        inner = e.text(0x0040A040, "CS", "TEXT")
        for _ in range(depth):
            inner = e.sq(CONTENT_SEQUENCE, [e.item(inner)])
        sop = generate_uid()
        return Case("nested", IMPLICIT, sop, head(e, sop) + inner + pixels(e), "")

    async def body(archive: Archive) -> None:
        assert (await archive.ingest(stage_raw(archive, nested(3)), IMPORT)).status is StoreStatus.STORED
        with pytest.raises(BrokenDataset, match=r"sequences nested over 3 deep at \d+ \(max_sequence_depth\)"):
            await archive.ingest(stage_raw(archive, nested(4)), IMPORT)

    with_archive(body, max_sequence_depth=3)


def test_import_file_refuses_a_truncated_part10_file(with_archive: Any, tmp_path: Path) -> None:
    """`minipacs import` and the web uploads stage a file from disk: the same walk refuses it."""
    ds = make_ct(generate_uid(), generate_uid(), generate_uid())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(buffer.getvalue()[:-100])

    async def body(archive: Archive) -> None:
        with pytest.raises(BrokenDataset, match=r"^\(7FE0,0010\) at \d+: length 8192 runs past the end"):
            await archive.import_file(broken, IMPORT)
        assert rows(archive, Instance) == []

    with_archive(body)


def test_a_broken_deflated_dataset_is_refused_before_the_writer(tmp_path: Path) -> None:
    """check_deflated (a worker thread, before the job is queued) walks the inflated stream."""
    assert issubclass(BrokenDataset, InvalidInstance)  # C-STORE 0xC000, STOW-RS FailureReason 0xC000
    path = tmp_path / "deflated"
    for name in ("item-past-sequence", "pixel-data-truncated", "garbage-short", "invalid-vr"):
        c = case(name, DEFLATED)
        path.write_bytes(c.data)
        with pytest.raises(BrokenDataset, match=c.expected):
            check_deflated(path, 0, DatasetLimits())
    path.write_bytes(case("ok-undefined-lengths", DEFLATED).data)
    assert check_deflated(path, 0, DatasetLimits()) > 0


@pytest.mark.parametrize(
    ("kind", "encapsulated", "refused"),
    [
        ("ok", None, False),  # a private syntax may hold native pixels...
        ("ok-encapsulated", None, False),  # ... or fragments
        ("ok", True, True),  # a known encapsulating one may not hold native pixels (PS3.5 A.4)
        ("ok-encapsulated", False, True),  # nor a native one fragments
        ("ok", False, False),
        ("ok-encapsulated", True, False),
    ],
)
def test_pixel_data_encoding_is_checked_only_where_the_syntax_is_known(
    kind: str, encapsulated: bool | None, refused: bool
) -> None:
    raw = case(kind, ENCAPSULATED if kind == "ok-encapsulated" else EXPLICIT).data

    def walk() -> None:
        walk_in_memory(raw, 0, implicit=False, little_endian=True, max_depth=64, encapsulated=encapsulated)

    if refused:
        with pytest.raises(MalformedDataset, match=r"^\(7FE0,0010\) at \d+: "):
            walk()
    else:
        walk()
