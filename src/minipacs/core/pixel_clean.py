"""Clean Pixel Data (PS3.15 E.3.1): burned-in text blanked out of the pixels, by configured regions.

Ultrasound, secondary captures, scanned documents and some screen captures carry the patient's name,
ID or birth date in their pixels, where the header profile (core/deid.py) cannot reach. A machine
draws its text in the same places every time, so a site (as with RSNA CTP's pixel anonymizer) lists
those places per kind of image in ``[[pixel_regions]]`` tables of the config file::

    [[pixel_regions]]
    name = "GE LOGIQ E9, 1024 x 768"
    match = { Modality = "US", Manufacturer = "GE*", ManufacturerModelName = "LOGIQ*", Columns = "1024" }
    regions = [[0, 0, 1024, 60], [0, 700, 300, 68]]   # x, y, width, height, in pixels from the top left

With the ``clean-pixel-data`` option (CID 7050 113101) each instance is matched, before anything of
its header is changed, against the entries in their order; the first that matches has every region
set to black in every frame and every sample (PS3.5 8.1: a rectangle of whole pixels; :func:`black`),
and its Burned In Annotation (0028,0301) becomes NO. Matching is C-FIND's: ``*`` and ``?`` wildcards (PS3.4 C.2.2.2.4),
a list is any of its values, the value is the attribute's text at the top level (a number as written
in the header: Rows = "768"); an attribute that is absent or empty matches only ``*``.

An instance no entry matches is left as it is, unless it says Burned In Annotation YES: then it is
not de-identified at all (a failure naming what to match), since its pixels are known to carry text
and nothing would remove it. Pixel data that is compressed is decompressed first and the copy is
written in Explicit VR Little Endian (so a lossy original's copy is larger, not worse). Refused with
a reason: 1-bit pixels, native YBR_FULL_422 (subsampled chroma: no pixel is a whole rectangle of
bytes), float pixel data, and pixel data shorter than its frames.

Not done: recognising text in pixels (OCR); Recognizable Visual Features (E.3.2, faces in photos or
3D reconstructions); overlays burned in later by a viewer are the same pixels and are blanked only
where a region says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.uid import UID

from minipacs.core import decoders
from minipacs.core.errors import ArchiveError
from minipacs.core.stored import quiet_pydicom
from minipacs.core.transcode import can_decode
from minipacs.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, transfer_syntax
from minipacs.index.matching import wildcard_match

#: An entry's name: 1 to 64 characters; at most this many regions per entry, and entries in all.
MAX_NAME: Final = 64
MAX_REGIONS: Final = 64
MAX_ENTRIES: Final = 1000
#: A coordinate or size: PS3.3 Rows and Columns are US (at most 65535).
MAX_COORDINATE: Final = 65535
#: VRs a ``match`` key may name: text and numbers, not sequences or bytes.
_MATCHABLE_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "US", "SS", "UL", "SL", "FL", "FD"}
)


class InvalidPixelRegions(ArchiveError, ValueError):
    """A ``[[pixel_regions]]`` table that cannot be used (the config refuses to load, naming it)."""


class PixelCleanError(ArchiveError):
    """One instance's pixels cannot be cleaned: it is not de-identified (the reason is its failure)."""


@dataclass(frozen=True)
class PixelRegions:
    """One ``[[pixel_regions]]`` entry: which images (``match``) and where their text is (``regions``)."""

    name: str
    #: (keyword, pattern) pairs; a pattern with ``\\`` is a list of patterns, any of which matches.
    match: tuple[tuple[str, str], ...]
    #: (x, y, width, height) rectangles, in pixels, x along a row (columns), y down the rows.
    regions: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        for keyword, pattern in self.match:
            value = _text_of(ds, keyword)
            if not any(_one_matches(p, value) for p in pattern.split("\\")):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "match": {k: (v.split("\\") if "\\" in v else v) for k, v in self.match},
            "regions": [list(r) for r in self.regions],
        }


def _one_matches(pattern: str, value: str) -> bool:
    if pattern.strip("*") == "":
        return True  # universal, also for an attribute that is absent or empty
    return bool(value) and wildcard_match(pattern, value)


def _text_of(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _entry_name(raw: Mapping[str, Any], number: int) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise InvalidPixelRegions(
            f"[[pixel_regions]] number {number}: name must be 1 to {MAX_NAME} printable characters"
        )
    return name


def _match(name: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidPixelRegions(
            f'[[pixel_regions]] {name!r}: match must name at least one attribute, e.g. match = {{ Modality = "US" }}'
        )
    out: list[tuple[str, str]] = []
    for keyword, value in raw.items():
        tag = keyword_dict.get(str(keyword))
        if tag is None or dictionary_VR(tag) not in _MATCHABLE_VRS:
            raise InvalidPixelRegions(
                f"[[pixel_regions]] {name!r}: match key {str(keyword)[:64]!r} is not a DICOM keyword of a text or "
                "number attribute (e.g. Modality, Manufacturer, ManufacturerModelName, Rows, Columns)"
            )
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise InvalidPixelRegions(f"[[pixel_regions]] {name!r}: match.{keyword} must be text or a list of text")
        texts = [str(v) for v in values]
        if not all(1 <= len(t) <= 1024 and t.isprintable() and "\\" not in t for t in texts):
            raise InvalidPixelRegions(
                f"[[pixel_regions]] {name!r}: match.{keyword} must be 1 to 1024 printable characters without a "
                "backslash (give a list for several values; '*' for any)"
            )
        out.append((str(keyword), "\\".join(texts)))
    return tuple(out)


def _regions(name: str, raw: Any) -> tuple[tuple[int, int, int, int], ...]:
    shape = "regions = [[x, y, width, height], ...] in pixels from the top left"
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_REGIONS:
        raise InvalidPixelRegions(f"[[pixel_regions]] {name!r}: give 1 to {MAX_REGIONS} regions: {shape}")
    out: list[tuple[int, int, int, int]] = []
    for region in raw:
        if (
            not isinstance(region, list)
            or len(region) != 4
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in region)
        ):
            raise InvalidPixelRegions(
                f"[[pixel_regions]] {name!r}: region {region!r} is not four whole numbers: {shape}"
            )
        x, y, width, height = region
        if (
            not (0 <= min(x, y) and max(x, y) <= MAX_COORDINATE and 1 <= min(width, height))
            or max(width, height) > MAX_COORDINATE
        ):
            raise InvalidPixelRegions(
                f"[[pixel_regions]] {name!r}: region {region!r}: x and y 0 to {MAX_COORDINATE}, width and height "
                f"1 to {MAX_COORDINATE}"
            )
        out.append((x, y, width, height))
    return tuple(out)


def regions_from_tables(tables: Any) -> tuple[PixelRegions, ...]:
    """``[[pixel_regions]]`` tables -> entries, in their order; InvalidPixelRegions naming the bad one."""
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise InvalidPixelRegions("'pixel_regions' must be [[pixel_regions]] tables (name, match, regions)")
    if len(tables) > MAX_ENTRIES:
        raise InvalidPixelRegions(f"at most {MAX_ENTRIES} [[pixel_regions]] tables")
    entries: list[PixelRegions] = []
    for number, raw in enumerate(tables, 1):
        name = _entry_name(raw, number)
        unknown = sorted(set(raw) - {"name", "match", "regions"})
        if unknown:
            raise InvalidPixelRegions(f"[[pixel_regions]] {name!r}: unknown key {unknown[0]!r} (name, match, regions)")
        entries.append(PixelRegions(name, _match(name, raw.get("match")), _regions(name, raw.get("regions"))))
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidPixelRegions(f"[[pixel_regions]] name {twice[0]!r} is used twice; each entry needs its own name")
    return tuple(entries)


def _describe(ds: Dataset) -> str:
    """What an entry would have to match, for the failure of an image none matched."""
    parts = [f"{k} {_text_of(ds, k)!r}" for k in ("Modality", "Manufacturer", "ManufacturerModelName")]
    return ", ".join(parts) + f", {_text_of(ds, 'Columns') or '?'} x {_text_of(ds, 'Rows') or '?'}"


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PixelCleanError(f"{keyword} {value!r} is not a number; its pixels cannot be cleaned") from None


def clean_pixels(ds: Dataset, entries: Sequence[PixelRegions]) -> PixelRegions | None:
    """Blank the regions of the first entry matching ``ds`` in its Pixel Data (in place), before any
    de-identification of its header; the entry, or None when none matches and the image does not say
    it carries burned-in text. PixelCleanError when it cannot be cleaned (the module docstring)."""
    burned_in = _text_of(ds, "BurnedInAnnotation").upper() == "YES"
    entry = next((e for e in entries if e.matches(ds)), None)
    if entry is None:
        if burned_in:
            raise PixelCleanError(
                f"Burned In Annotation is YES and no [[pixel_regions]] entry matches it ({_describe(ds)}): "
                "add one for this kind of image, or de-identify without clean-pixel-data"
            )
        return None
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise PixelCleanError(f"[[pixel_regions]] {entry.name!r} matches float pixel data, which is not cleaned")
        return entry  # nothing drawn, nothing to blank
    _decompress(ds)
    rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    samples, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated", 0)
    planar, frames = _int(ds, "PlanarConfiguration", 0), _int(ds, "NumberOfFrames", 1)
    photometric = _text_of(ds, "PhotometricInterpretation").upper()
    if bits not in (8, 16, 32) or samples not in (1, 3) or rows < 1 or columns < 1 or frames < 1:
        raise PixelCleanError(
            f"pixels of {bits} bits, {samples} samples, {columns} x {rows}, {frames} frame(s) are not cleaned "
            "(8, 16 or 32 bits, 1 or 3 samples)"
        )
    if photometric.startswith("YBR_FULL_422") or photometric.startswith("YBR_PARTIAL"):
        raise PixelCleanError(f"native {photometric} pixels (subsampled chroma) are not cleaned")
    width = bits // 8
    frame = rows * columns * samples * width
    data = ds.PixelData
    if len(data) < frame * frames:
        raise PixelCleanError(f"the pixel data holds {len(data)} bytes, less than its {frames} frame(s) need")
    fill = black(ds, photometric, samples, bits)
    pixels = bytearray(data)
    for x, y, w, h in entry.regions:
        if x >= columns or y >= rows:
            continue  # outside this image
        w, h = min(w, columns - x), min(h, rows - y)
        for f in range(frames):
            _blank(pixels, f * frame, rows, columns, planar, fill, (x, y, w, h))
    ds.PixelData = bytes(pixels)
    ds.BurnedInAnnotation = "NO"
    return entry


def black(ds: Dataset, photometric: str, samples: int, bits: int) -> list[bytes]:
    """Each sample's value of a black pixel, as stored (``bits`` wide, in the data set's byte order).

    The darkest value the pixel can hold: MONOCHROME2 its least (0, or -2^(BitsStored-1) for signed
    pixels, PS3.3 C.7.6.3.1.1-2), MONOCHROME1 its greatest (the image is shown inverted: 0 would be
    white), RGB 0 in each sample, YBR_FULL luminance 0 and both chroma samples at their middle,
    2^(bits-1) (PS3.3 C.7.6.3.1.2: 0 there would be a saturated green). A PALETTE COLOR index 0 is
    whatever colour its palette gives index 0 (not looked up). Signed values are sign-extended to the
    allocated width."""
    stored = max(1, min(_int(ds, "BitsStored", bits), bits))
    signed = _int(ds, "PixelRepresentation", 0) == 1
    if photometric == "MONOCHROME1":
        values = [(1 << (stored - 1)) - 1 if signed else (1 << stored) - 1]
    elif photometric.startswith("YBR"):
        values = [0, 1 << (bits - 1), 1 << (bits - 1)]
    elif samples == 1 and signed:
        values = [-(1 << (stored - 1))]
    else:
        values = [0] * samples
    values = (values * samples)[:samples] if len(values) != samples else values
    meta = getattr(ds, "file_meta", None)
    big = meta is not None and str(meta.get("TransferSyntaxUID", "")) == EXPLICIT_VR_BIG_ENDIAN  # retired
    return [(v % (1 << bits)).to_bytes(bits // 8, "big" if big else "little") for v in values]


def _blank(
    pixels: bytearray,
    base: int,
    rows: int,
    columns: int,
    planar: int,
    fill: list[bytes],
    region: tuple[int, int, int, int],
) -> None:
    """Set the rectangle ``region`` of the frame at ``base`` to ``fill`` (one value per sample; PS3.3
    C.7.6.3.1.3: samples interleaved pixel by pixel with Planar Configuration 0, plane after plane with 1)."""
    x, y, w, h = region
    samples, width = len(fill), len(fill[0])
    if samples == 1 or planar == 0:
        step = samples * width
        run = b"".join(fill) * w
        for r in range(y, y + h):
            start = base + (r * columns + x) * step
            pixels[start : start + len(run)] = run
        return
    for s in range(samples):
        run = fill[s] * w
        plane = base + s * rows * columns * width
        for r in range(y, y + h):
            start = plane + (r * columns + x) * width
            pixels[start : start + len(run)] = run


def _decompress(ds: Dataset) -> None:
    """Compressed pixel data decoded in place, the dataset then in Explicit VR Little Endian."""
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
    syntax = transfer_syntax(uid)
    if syntax is None or not syntax.encapsulated:
        return
    if not can_decode(uid):
        raise PixelCleanError(f"pixel data in transfer syntax {uid} cannot be decoded here, so it is not cleaned")
    decoders.register()
    try:
        with quiet_pydicom():
            ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # a codec's own error: the instance's failure says it
        raise PixelCleanError(f"its compressed pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    for tag in (0x7FE00001, 0x7FE00002):  # Extended Offset Table (Lengths): encapsulated only
        if tag in ds:
            del ds[tag]
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)


__all__ = [
    "InvalidPixelRegions",
    "black",
    "PixelCleanError",
    "PixelRegions",
    "clean_pixels",
    "regions_from_tables",
]
