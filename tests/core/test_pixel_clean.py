"""Clean Pixel Data (PS3.15 E.3.1; core/pixel_clean.py): burned-in text blanked by ``[[pixel_regions]]``.

Each case compares every pixel with the original: inside the regions 0, outside unchanged, in every
frame and sample; for grey 16-bit, RGB with both Planar Configurations, and compressed originals
(RLE with two frames, JPEG baseline), decompressed into Explicit VR Little Endian. The config's
tables are refused with a sentence at each bound; an image that says it carries burned-in text and
matches no entry is not de-identified. End to end: a study anonymized into the archive, and a routing
copy, whose copy's transfer syntax is the one it was written in.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.core.anonymize import Anonymizer, AnonymizeRequest
from minipacs.core.deid import Mapping, Pseudonyms, deidentify
from minipacs.core.model import Origin
from minipacs.core.pixel_clean import InvalidPixelRegions, PixelCleanError, clean_pixels, regions_from_tables
from minipacs.core.retrieve import select_instances
from tests.compressed import fresh_copy
from tests.dicomgen import make_ct
from tests.peers import dcmtk

KEY = b"pixel-clean-test-key-0123456789"
US = {"name": "ACME US", "match": {"Modality": "US", "Manufacturer": "ACME*"}, "regions": [[0, 0, 20, 5]]}


def _us(rows: int = 24, cols: int = 32, samples: int = 1, planar: int = 0, frames: int = 1, bits: int = 8) -> Any:
    """An ultrasound-like image, every pixel a different non-zero value, with burned-in text declared."""
    ds = make_ct(generate_uid(), generate_uid(), generate_uid(), rows=rows, cols=cols)
    ds.Modality, ds.Manufacturer, ds.BurnedInAnnotation = "US", "ACME Medical", "YES"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = samples, bits, bits, bits - 1
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
    count = rows * cols * samples * frames
    ds.PixelData = (np.arange(count, dtype=np.uint64) % 250 + 1).astype(dtype).tobytes()
    return ds


def _expected(original: np.ndarray, regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    """``original`` (frames, rows, cols, samples) with each region set to 0."""
    out = original.copy()
    for x, y, w, h in regions:
        out[:, y : y + h, x : x + w, :] = 0
    return out


def _pixels(ds: Any, rows: int, cols: int, samples: int, planar: int, frames: int, dtype: Any) -> np.ndarray:
    """Pixel Data as (frames, rows, cols, samples), read from the bytes by the layout of PS3.3 C.7.6.3.1.3."""
    flat = np.frombuffer(ds.PixelData, dtype=dtype)[: frames * rows * cols * samples]
    if samples == 3 and planar == 1:
        return flat.reshape(frames, samples, rows, cols).transpose(0, 2, 3, 1)
    return flat.reshape(frames, rows, cols, samples)


@pytest.mark.parametrize(
    ("samples", "planar", "frames", "bits"),
    [(1, 0, 1, 8), (1, 0, 3, 16), (1, 0, 2, 32), (3, 0, 2, 8), (3, 1, 2, 8), (3, 1, 1, 16)],
    ids=["grey8", "grey16-3frames", "grey32-2frames", "rgb-interleaved", "rgb-planar", "rgb16-planar"],
)
def test_the_regions_are_0_in_every_frame_and_sample_and_nothing_else_changes(
    samples: int, planar: int, frames: int, bits: int
) -> None:
    rows, cols = 24, 32
    regions = [(0, 0, 20, 5), (30, 20, 10, 10), (5, 30, 4, 4)]  # the 2nd clipped at the edge, the 3rd outside
    entry = regions_from_tables([{**US, "regions": [list(r) for r in regions]}])
    ds = _us(rows, cols, samples, planar, frames, bits)
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
    before = _pixels(ds, rows, cols, samples, planar, frames, dtype)
    assert (before != 0).all()
    assert clean_pixels(ds, entry) is entry[0]
    after = _pixels(ds, rows, cols, samples, planar, frames, dtype)
    assert (after == _expected(before, regions)).all()
    assert (after == 0).sum() == frames * samples * (20 * 5 + 2 * 4)  # 30..31 x 20..23: clipped to 2 x 4
    assert ds.BurnedInAnnotation == "NO"


_BLACK = [
    ("MONOCHROME2", 16, 12, 0, 1, [0]),
    ("MONOCHROME2", 16, 12, 1, 1, [-2048]),  # the least a signed 12-bit pixel holds, sign-extended
    ("MONOCHROME2", 16, 16, 1, 1, [-32768]),
    ("MONOCHROME1", 8, 8, 0, 1, [255]),  # shown inverted: the greatest value is black
    ("MONOCHROME1", 16, 12, 0, 1, [4095]),
    ("MONOCHROME1", 16, 12, 1, 1, [2047]),
    ("RGB", 8, 8, 0, 3, [0, 0, 0]),
    ("YBR_FULL", 8, 8, 0, 3, [0, 128, 128]),  # Y 0, chroma at the middle (0 would be green)
]


@pytest.mark.parametrize(
    ("photometric", "bits", "stored", "signed", "samples", "black", "planar"),
    [(*case, planar) for case in _BLACK for planar in ((0, 1) if case[4] == 3 else (0,))],
)
def test_regions_are_black_for_the_photometric_interpretation(
    photometric: str, bits: int, stored: int, signed: int, samples: int, black: list[int], planar: int
) -> None:
    """PS3.3 C.7.6.3.1.1-2: black is 0 only in MONOCHROME2 unsigned and RGB; a MONOCHROME1 image filled
    with 0 shows a white box, a signed one a mid-grey box, YBR_FULL a green one."""
    rows, cols = 24, 32
    entry = regions_from_tables([{**US, "regions": [[2, 3, 10, 4]]}])
    ds = _us(rows, cols, samples, planar, 1, bits)
    ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit = photometric, stored, stored - 1
    ds.PixelRepresentation = signed
    dtype = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}[(bits, signed)]
    before = _pixels(ds, rows, cols, samples, planar, 1, dtype).copy()
    assert clean_pixels(ds, entry) is entry[0]
    after = _pixels(ds, rows, cols, samples, planar, 1, dtype)
    region = after[0, 3:7, 2:12, :]
    for s in range(samples):
        assert (region[:, :, s] == black[s]).all(), (photometric, s, region[:, :, s])
    outside = np.ones(after.shape, dtype=bool)
    outside[0, 3:7, 2:12, :] = False
    assert (after[outside] == before[outside]).all()


def test_matching_is_c_finds_and_the_first_entry_that_matches_wins() -> None:
    entries = regions_from_tables(
        [
            {"name": "other maker", "match": {"Manufacturer": "OTHER"}, "regions": [[0, 0, 1, 1]]},
            {
                "name": "by size",
                "match": {"Modality": ["MR", "US"], "Rows": "24", "Columns": 32},
                "regions": [[0, 0, 2, 2]],
            },
            {"name": "any US", "match": {"Modality": "U?"}, "regions": [[0, 0, 3, 3]]},
            {"name": "model known", "match": {"ManufacturerModelName": "*"}, "regions": [[0, 0, 4, 4]]},
        ]
    )
    assert clean_pixels(_us(), entries) is entries[1]
    assert clean_pixels(_us(rows=25), entries) is entries[2]  # Rows "25": not "by size"
    assert entries[3].matches(_us())  # '*' matches an attribute the image does not have
    assert not regions_from_tables([{**US, "match": {"ManufacturerModelName": "L*"}}])[0].matches(_us())


def test_an_image_with_burned_in_text_and_no_entry_is_refused_one_without_is_left_alone() -> None:
    entries = regions_from_tables([{**US, "match": {"Manufacturer": "OTHER*"}}])
    with pytest.raises(PixelCleanError, match=r"Burned In Annotation is YES and no \[\[pixel_regions\]\] entry "):
        clean_pixels(_us(), entries)
    with pytest.raises(PixelCleanError, match=r"Modality 'US', Manufacturer 'ACME Medical', .* 32 x 24"):
        clean_pixels(_us(), ())
    quiet = _us()
    del quiet.BurnedInAnnotation
    pixels = quiet.PixelData
    assert clean_pixels(quiet, entries) is None and quiet.PixelData == pixels and "BurnedInAnnotation" not in quiet


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"BitsAllocated": 1}, "pixels of 1 bits"),
        ({"PhotometricInterpretation": "YBR_FULL_422", "SamplesPerPixel": 3}, "native YBR_FULL_422"),
        ({"NumberOfFrames": 2}, "less than its 2 frame"),
        ({"NumberOfFrames": 0}, "0 frame"),
        ({"SamplesPerPixel": 2}, "2 samples"),
    ],
)
def test_pixels_it_cannot_clean_are_refused_with_words(change: dict[str, Any], words: str) -> None:
    ds = _us()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    with pytest.raises(PixelCleanError, match=words):
        clean_pixels(ds, regions_from_tables([US]))


@pytest.mark.parametrize(("name", "lossless"), [("rle_2frames", True), ("jpeg_baseline", False)])
def test_compressed_pixels_are_decompressed_cleaned_and_written_natively(
    tmp_path: Path, name: str, lossless: bool
) -> None:
    path, original = fresh_copy(name, tmp_path)
    rows, cols, samples = original.Rows, original.Columns, original.SamplesPerPixel
    frames = int(original.get("NumberOfFrames", 1) or 1)
    decoded = original.pixel_array.reshape(frames, rows, cols, samples)
    entry = regions_from_tables([{"name": "all SC", "match": {"Modality": "*"}, "regions": [[2, 3, 40, 7]]}])
    ds = pydicom.dcmread(path)
    clean_pixels(ds, entry)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and "PixelData" in ds
    planar = int(ds.get("PlanarConfiguration", 0) or 0)
    after = _pixels(ds, rows, cols, samples, planar, frames, np.uint8)
    assert (after == _expected(decoded, [(2, 3, 40, 7)])).all()
    out = tmp_path / "out.dcm"
    ds.save_as(out, enforce_file_format=True)
    dumped = subprocess.run([dcmtk("dcmdump"), "+P", "0002,0010", str(out)], capture_output=True, text=True, timeout=60)
    assert "=LittleEndianExplicit" in dumped.stdout, dumped.stdout + dumped.stderr
    assert lossless == (original.file_meta.TransferSyntaxUID == RLELossless)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({**US, "name": ""}, "name must be 1 to 64"),
        ({**US, "name": "n" * 65}, "name must be 1 to 64"),
        ({**US, "match": {"Modality": "U" * 1025}}, "1 to 1024 printable characters"),
        ({**US, "match": {}}, "match must name at least one attribute"),
        ({**US, "match": {"NoSuchKeyword": "x"}}, "is not a DICOM keyword of a text or number attribute"),
        ({**US, "match": {"ReferencedImageSequence": "x"}}, "is not a DICOM keyword of a text or number"),
        ({**US, "match": {"Modality": "U\\S"}}, "without a backslash"),
        ({**US, "match": {"Modality": "U\nS"}}, "printable"),
        ({**US, "match": {"Modality": []}}, "must be text or a list of text"),
        ({**US, "regions": []}, "give 1 to 64 regions"),
        ({**US, "regions": [[0, 0, 1, 1]] * 65}, "give 1 to 64 regions"),
        ({**US, "regions": [[0, 0, 1]]}, "is not four whole numbers"),
        ({**US, "regions": [[0, 0, 1.5, 1]]}, "is not four whole numbers"),
        ({**US, "regions": [[-1, 0, 1, 1]]}, "x and y 0 to 65535"),
        ({**US, "regions": [[0, 0, 0, 1]]}, "width and height 1 to 65535"),
        ({**US, "regions": [[0, 0, 1, 65536]]}, "width and height 1 to 65535"),
        ({**US, "colour": "black"}, "unknown key 'colour'"),
    ],
)
def test_a_bad_table_is_refused_naming_it(table: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidPixelRegions, match=words):
        regions_from_tables([table])


def test_the_config_file_reads_the_tables_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[pixel_regions]]\nname = "ACME US"\nmatch = { Modality = "US", Rows = 600 }\n'
        "regions = [[0, 0, 65535, 1], [0, 0, 1, 65535]]\n"
    )
    (entry,) = load_settings(good, env={}).pixel_regions
    assert entry.to_dict() == {
        "name": "ACME US",
        "match": {"Modality": "US", "Rows": "600"},
        "regions": [[0, 0, 65535, 1], [0, 0, 1, 65535]],
    }
    twice = tmp_path / "twice.toml"
    twice.write_text(good.read_text() * 2)
    with pytest.raises(ConfigError, match="name 'ACME US' is used twice"):
        load_settings(twice, env={})


def test_deidentify_cleans_on_the_original_header_and_says_so_with_113101() -> None:
    ds = _us()
    ds.Manufacturer = "ACME Medical"
    out = deidentify(ds, frozenset({"clean-pixel-data"}), Pseudonyms(KEY), Mapping(), regions_from_tables([US]))
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"] and out.BurnedInAnnotation == "NO"
    assert (_pixels(out, 24, 32, 1, 0, 1, np.uint8)[0, :5, :20] == 0).all()
    untouched = _us()
    pixels = untouched.PixelData
    deidentify(untouched, frozenset(), Pseudonyms(KEY), Mapping(), regions_from_tables([US]))
    assert untouched.PixelData == pixels  # without the option, no pixel is touched


def test_a_study_anonymized_with_clean_pixel_data_and_a_routing_copy(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            study = generate_uid()
            cleanable, refused = _us(), _us()
            refused.Manufacturer = "OTHER"
            path, rle = fresh_copy("rle_2frames", tmp_path / "src", study_uid=study)
            for n, ds in enumerate((cleanable, refused)):
                ds.StudyInstanceUID = study
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
                await archive.import_file(tmp_path / f"{n}.dcm", Origin("import"))
            await archive.import_file(path, Origin("import"))
            entries = regions_from_tables([US, {"name": "SC", "match": {"Modality": "OT"}, "regions": [[0, 0, 5, 5]]}])
            anonymizer = Anonymizer(archive, KEY, entries)
            result = await anonymizer.run(AnonymizeRequest("study", study, frozenset({"clean-pixel-data"})))
            assert result.instances == 2, result.failures
            (failure,) = result.failures
            assert failure["uid"] == refused.SOPInstanceUID and "Manufacturer 'OTHER'" in failure["reason"]
            stored = await select_instances(archive, "STUDY", {"StudyInstanceUID": result.studies[0]})
            by_syntax = {i.transfer_syntax_uid: i for i in stored}
            assert set(by_syntax) == {ExplicitVRLittleEndian}
            for instance in stored:
                with instance.open() as fh:
                    out = pydicom.dcmread(io.BytesIO(fh.read()))
                assert out.BurnedInAnnotation == "NO" and "113101" in [
                    c.CodeValue for c in out.DeidentificationMethodCodeSequence
                ]
            originals = await select_instances(archive, "STUDY", {"StudyInstanceUID": study})
            copies, failed = await anonymizer.copies(originals, frozenset({"clean-pixel-data"}))
            assert set(failed) == {refused.SOPInstanceUID}
            syntaxes = {uid: copy.transfer_syntax_uid for uid, copy in copies}
            assert syntaxes[rle.SOPInstanceUID] == ExplicitVRLittleEndian  # what the copy is written in
            for _, copy in copies:
                with copy.open() as fh:
                    assert pydicom.dcmread(fh).file_meta.TransferSyntaxUID == copy.transfer_syntax_uid
                copy.blobs.delete(copy.blob_key)
        finally:
            await archive.close()

    asyncio.run(main())


def test_names_and_values_at_their_limits_and_max_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    from minipacs.core import pixel_clean

    (entry,) = regions_from_tables([{**US, "name": "n" * 64, "match": {"Modality": "U" * 1024}}])
    assert entry.name == "n" * 64
    monkeypatch.setattr(pixel_clean, "MAX_ENTRIES", 2)
    assert len(regions_from_tables([{**US, "name": "a"}, {**US, "name": "b"}])) == 2
    with pytest.raises(InvalidPixelRegions, match="at most 2 \\[\\[pixel_regions\\]\\] tables"):
        regions_from_tables([{**US, "name": n} for n in "abc"])
