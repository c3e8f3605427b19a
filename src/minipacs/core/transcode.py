"""Transcoding a stored instance for a peer that does not accept its transfer syntax.

Used only when the stored bytes cannot be sent as they are (ARCHITECTURE:
"transcode only when it does not"): C-MOVE/C-GET sub-operations, WADO-RS
retrieval with a ``transfer-syntax`` the instance is not stored in, and WADO-RS
frames asked for uncompressed. Native syntaxes are re-encoded by pydicom;
compressed ones are decompressed first by pydicom's decoder plugins, backed by the
permissively licensed libraries listed in :mod:`minipacs.core.decoders` (GDCM for JPEG
including 12-bit JPEG Extended, OpenJPEG for JPEG 2000 and HTJ2K, GDCM or CharLS for
JPEG-LS; RLE is decoded by pydicom itself). Compressed frames can also be
handed out as they are stored (PS3.5 A.4 fragments, no decoding). Files are read by
core/stored.py within the archive's limits (a deflated dataset inflates only that far).
Blocking: call it off the loop.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

from pydicom.dataelem import RawDataElement

from minipacs.core import decoders
from minipacs.core.errors import ArchiveError, NotFound, UnreadableInstance
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits
from minipacs.core.stored import quiet_pydicom, read_open_header, read_stored
from minipacs.dicom.identifier import deflate
from minipacs.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN as DEFLATED
from minipacs.dicom.uids import TransferSyntax, transfer_syntax
from minipacs.dicom.vr import WORD_VR_FORMATS

_CODECS_HINT: Final = (
    "(the decoders are python-gdcm, pylibjpeg-openjpeg with pylibjpeg, and pyjpegls: check that they are installed)"
)


class TranscodeError(ArchiveError):
    """The stored instance cannot be converted to the transfer syntax the peer accepts."""


class NoSuchFrame(NotFound):
    """The instance has no pixel data, or not the frame asked for."""


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """Whether :func:`transcode` may succeed: the target must be native (uncompressed)."""
    source, target = transfer_syntax(source_ts), transfer_syntax(target_ts)
    return source is not None and target is not None and not target.encapsulated and not target.deflated


def can_decode(ts_uid: str) -> bool:
    """Whether this installation can decode pixel data stored in ``ts_uid``: native and deflated
    syntaxes have nothing to decode; an encapsulated one needs a pydicom decoder with its plugin
    (none exists for the MPEG/HEVC video syntaxes or JPIP)."""
    ts = transfer_syntax(ts_uid)
    if ts is None:
        return False
    if not ts.encapsulated:
        return True
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(ts_uid).is_available)
    except NotImplementedError:
        return False


#: Extended Offset Table, Extended Offset Table Lengths (PS3.3 C.7.6.3, Table C.7-11c).
_ENCAPSULATED_ONLY: Final = (0x7FE00001, 0x7FE00002)


def _swap_words(ds: Any) -> None:
    """Byte-swap every OW, OL, OF, OD and OV value of ``ds``, nested ones included (PS3.5 §7.3): what
    changing between Explicit VR Big Endian and a little-endian syntax takes. pydicom decodes and
    re-encodes numbers (US, FL, ...) itself but writes these values as it read them, so a big-endian
    instance came out with its pixels byte-swapped. Elements are looked at raw (``get_item``): the
    others are not converted, so their values are not validated here."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag)
        value = element.value
        if str(element.VR) == "SQ" and value:
            for item in ds[tag].value:  # a raw sequence is parsed into items of raw elements
                _swap_words(item)
            continue
        code = WORD_VR_FORMATS.get(str(element.VR))
        if code is None or not isinstance(value, bytes | bytearray) or not value:
            continue
        words = array.array(code)
        whole = len(value) - len(value) % words.itemsize
        words.frombytes(value[:whole])
        words.byteswap()
        swapped = words.tobytes() + bytes(value[whole:])
        if isinstance(element, RawDataElement):
            ds[tag] = element._replace(value=swapped)
        else:
            element.value = swapped


def _decoded(
    path: Path, target_ts: str, limits: DatasetLimits, *, deflate_ok: bool = False
) -> tuple[Any, TransferSyntax]:
    """The dataset of ``path`` read within ``limits``, its pixel data decompressed when it is encapsulated;
    the target syntax."""
    target = transfer_syntax(target_ts)
    if target is None or target.encapsulated or (target.deflated and not (deflate_ok and target_ts == DEFLATED)):
        raise TranscodeError(f"cannot encode into transfer syntax {target_ts}: only native syntaxes are produced")
    decoders.register()
    try:
        ds = read_stored(path, limits)
        source = transfer_syntax(str(ds.file_meta.TransferSyntaxUID))
        if source is not None and source.encapsulated and "PixelData" in ds:
            with quiet_pydicom():  # each decoder that fails logs its traceback; the error says what matters
                ds.decompress(generate_instance_uid=False)  # same instance, another encoding: keep its UID
            # PS3.3 C.7.6.3: the Extended Offset Table and its Lengths go with encapsulated pixel data
            # only; pydicom's decompress keeps them
            for tag in _ENCAPSULATED_ONLY:
                if tag in ds:
                    del ds[tag]
        elif source is not None and source.little_endian != target.little_endian:
            _swap_words(ds)
    except UnreadableInstance as exc:
        raise TranscodeError(f"cannot convert {path.name} to {target_ts}: {exc}") from exc
    except Exception as exc:
        raise TranscodeError(
            f"cannot convert {path.name} to {target_ts}: {type(exc).__name__}: {exc} {_CODECS_HINT}"
        ) from exc
    return ds, target


def _write_dataset(ds: Any, target: TransferSyntax, out: Any) -> None:
    from pydicom.filewriter import write_dataset

    out.is_little_endian = target.little_endian
    out.is_implicit_VR = target.implicit_vr
    write_dataset(out, ds)


def transcode(path: Path, target_ts: str, limits: DatasetLimits = DEFAULT_LIMITS) -> bytes:
    """The dataset of the Part 10 file ``path`` encoded in ``target_ts`` (a native syntax, or Deflated
    Explicit VR Little Endian: explicit VR little endian, then deflated as PS3.5 A.5 says), read within
    ``limits``."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    ds, target = _decoded(path, target_ts, limits, deflate_ok=True)
    buf = DicomBytesIO()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    _write_dataset(ds, target, buf)
    data = bytes(buf.getvalue())
    return deflate(data) if target.deflated else data


def transcode_part10(path: Path, target_ts: str, limits: DatasetLimits = DEFAULT_LIMITS) -> bytes:
    """The Part 10 file ``path`` re-encoded in ``target_ts`` (native only): preamble, File Meta, dataset."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ds, target = _decoded(path, target_ts, limits)
    meta = ds.file_meta
    meta.TransferSyntaxUID = target_ts
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # written anew with the right length
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    ds.file_meta = type(meta)()
    _write_dataset(ds, target, buf)
    return bytes(buf.getvalue())


def frame_count(ds: Any) -> int:
    """Number of Frames (0028,0008; 1 when absent or empty); UnreadableInstance when the stored
    value is no whole number (an Integer String such as '1A' was stored, as pydicom's badVR.dcm has;
    pydicom may warn of it first, which is an exception where warnings are errors)."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, UserWarning):
        found = ds.get_item(0x00280008)
        value = getattr(found, "value", None)
        text = value.decode("latin-1").strip(" \0") if isinstance(value, bytes) else str(value)
        raise UnreadableInstance(f"its Number of Frames (0028,0008) is {text[:16]!r}, not a whole number") from None


def pixel_frames(
    path: Path, numbers: Sequence[int], *, decode: bool, limits: DatasetLimits = DEFAULT_LIMITS
) -> list[bytes]:
    """Frames ``numbers`` (1-based) of the stored instance ``path``.

    ``decode=False``: as stored -- for an encapsulated syntax the compressed bitstream of each
    frame, its fragments joined (PS3.5 A.4; PS3.18 §8.7.3.3.2), for a native little-endian one
    the frame's bytes. ``decode=True``: native little-endian pixels (PS3.18 Table 8.7.3-4),
    decompressed by pydicom (colour as pydicom's ``decompress`` leaves it, e.g. YBR -> RGB).
    Raises NoSuchFrame (no pixel data, frame out of range), TranscodeError (cannot decode) or
    UnreadableInstance (the file cannot be read within ``limits``).
    """
    import numpy as np
    from pydicom.encaps import generate_frames, get_frame
    from pydicom.pixels.utils import pixel_array

    decoders.register()
    ds = read_stored(path, limits)
    if "PixelData" not in ds:
        raise NoSuchFrame("this instance has no pixel data, so it has no frames")
    count = frame_count(ds)
    for number in numbers:
        if not 1 <= number <= count:
            raise NoSuchFrame(f"frame {number} does not exist; the instance has {count}")
    stored = transfer_syntax(str(ds.file_meta.TransferSyntaxUID))
    if stored is None:
        raise TranscodeError(
            f"the instance is stored in transfer syntax {ds.file_meta.TransferSyntaxUID}, "
            "which this server does not know"
        )
    if stored.encapsulated and not decode:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        if len(numbers) == 1:
            return [get_frame(ds.PixelData, numbers[0] - 1, number_of_frames=count, extended_offsets=offsets)]
        frames = list(generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets))
        return [frames[number - 1] for number in numbers]
    bits = int(ds.get("BitsAllocated", 8))
    if not stored.encapsulated and stored.little_endian and bits % 8 == 0:
        size = ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        data = ds.PixelData
        return [bytes(data[(number - 1) * size : number * size]) for number in numbers]
    try:  # compressed (or big endian, or 1-bit) -> decode (each decoder that fails logs a traceback)
        with quiet_pydicom():
            if len(numbers) <= 4 or count == 1:
                arrays = [pixel_array(ds, index=number - 1 if count > 1 else None) for number in numbers]
            else:
                everything = ds.pixel_array
                arrays = [everything[number - 1] for number in numbers]
    except Exception as exc:
        raise TranscodeError(
            f"the pixel data ({stored.uid}) cannot be decompressed: {type(exc).__name__}: {exc} {_CODECS_HINT}"
        ) from exc
    return [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]


#: (7FE0,0010) Pixel Data's tag as it is written in a little-endian dataset
_PIXEL_DATA_TAG: Final = b"\xe0\x7f\x10\x00"


def _header_before_pixels(fp: BinaryIO, limits: DatasetLimits, *, encapsulated: bool) -> tuple[int, Any, Any] | None:
    """For the frame-range readers: (file size, transfer syntax, the dataset read up to Pixel Data)
    of the stored file ``fp``, read by :func:`read_open_header` and left at the Pixel Data element's
    header; None unless its transfer syntax is little endian, not deflated, and encapsulated or
    native as asked. Raises whatever a malformed file raises."""
    size = fp.seek(0, 2)  # before any read: on S3 a seek after one starts another GET
    fp.seek(0)
    with quiet_pydicom():
        ds = read_open_header(fp, limits)
    if ds is None:  # deflated
        return None
    ts = transfer_syntax(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if ts is None or ts.encapsulated != encapsulated or not ts.little_endian:
        return None
    return size, ts, ds


def native_frame_ranges(
    fp: BinaryIO, numbers: Sequence[int], limits: DatasetLimits = DEFAULT_LIMITS
) -> list[tuple[int, int]] | None:
    """Where frames ``numbers`` (1-based) lie in the stored file ``fp`` (seekable, from its start), read
    from the header alone: [start, end) byte ranges of the Pixel Data value, or None when the frames
    are not plain byte ranges or anything looks wrong -- then :func:`pixel_frames` reads the whole
    file and says what is wrong. Plain: a native, little-endian, not deflated transfer syntax and whole
    bytes per sample, where frame n is bytes (n-1)*F to n*F of Pixel Data (PS3.5 8.1.1, 8.2), as
    :func:`pixel_frames` cuts them. The header is walked (core/structure.py) before pydicom reads it.
    """
    try:
        header = _header_before_pixels(fp, limits, encapsulated=False)
        if header is None:
            return None
        size, ts, ds = header
        head = fp.read(8 if ts.implicit_vr else 12)  # pydicom stops at the Pixel Data element's header
        if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
            return None
        length = int.from_bytes(head[4:8] if ts.implicit_vr else head[8:12], "little")
        value = fp.tell()
        bits = int(ds.get("BitsAllocated", 0) or 0)
        frame = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - anything odd: the whole-file path reads it and says what is wrong
        return None
    if bits == 0 or bits % 8 or frame <= 0 or length == 0xFFFFFFFF or count * frame > min(length, size - value):
        return None
    if not all(1 <= number <= count for number in numbers):
        return None  # pixel_frames says NoSuchFrame
    return [(value + (number - 1) * frame, value + number * frame) for number in numbers]


#: (FFFE,E000) Item and (FFFE,E0DD) Sequence Delimitation Item tags as written little endian (PS3.5 7.5, A.4)
_ITEM_TAG: Final = b"\xfe\xff\x00\xe0"
_SEQUENCE_END_TAG: Final = b"\xfe\xff\xdd\xe0"
#: Most item headers one request walks: beyond it (a Basic Offset Table per fragment of a huge file,
#: or a fragment table that never ends) the whole-file path reads the instance.
MAX_FRAGMENT_ITEMS: Final = 100_000
#: An item shorter than this is skipped by reading on, not by seeking: on S3 a seek starts a new GET
#: and its read fills a buffer of 1 MiB anyway (blobs/s3.py), so reading on is no dearer.
_READ_THROUGH: Final = 1024 * 1024


def _item_header(fp: BinaryIO, pos: int, size: int) -> tuple[bytes, int] | None:
    """The tag and length of the item header at ``pos`` (8 bytes), or None when it is cut short or
    its value runs past ``size``."""
    here = fp.tell()
    if pos != here:
        if 0 < pos - here <= _READ_THROUGH:
            fp.read(pos - here)
        else:
            fp.seek(pos)
    head = fp.read(8)
    if len(head) < 8:
        return None
    length = int.from_bytes(head[4:8], "little")
    if pos + 8 + length > size:
        return None
    return head[:4], length


def _fragments(fp: BinaryIO, pos: int, end: int | None, size: int, limit: int) -> list[tuple[int, int]] | None:
    """The values of the fragment items from ``pos`` on, as [start, end) ranges: up to ``end`` (a frame
    boundary of the offset table), or to the Sequence Delimitation Item when ``end`` is None. None when
    an item is not one (PS3.5 A.4), runs past the file or past ``end``, or there are over ``limit``."""
    found: list[tuple[int, int]] = []
    while end is None or pos < end:
        if len(found) >= limit:
            return None
        head = _item_header(fp, pos, size)
        if head is None:
            return None
        tag, length = head
        if tag == _SEQUENCE_END_TAG and end is None:
            return found if length == 0 else None
        if tag != _ITEM_TAG or length == 0xFFFFFFFF:
            return None
        found.append((pos + 8, pos + 8 + length))
        pos += 8 + length
    return found if pos == end else None


def encapsulated_frame_ranges(
    fp: BinaryIO, numbers: Sequence[int], limits: DatasetLimits = DEFAULT_LIMITS
) -> list[list[tuple[int, int]]] | None:
    """Where frames ``numbers`` (1-based) of an encapsulated instance lie in the stored file ``fp``
    (seekable, from its start): for each frame the [start, end) byte ranges of its fragments' values,
    which joined are the frame as stored (PS3.18 §8.7.3.3.2, §10.4.1.1.3), the bytes
    :func:`pixel_frames` gives with ``decode=False``. None when the pixel data is not plainly
    encapsulated, a frame's fragments cannot be told without reading them, or anything looks wrong --
    then :func:`pixel_frames` reads the whole file and says what is wrong.

    Encapsulated Pixel Data (PS3.5 A.4): an undefined-length (7FE0,0010) of items, the Basic Offset
    Table item first, then one item (FFFE,E000) per fragment, each with its 4-byte length, then the
    Sequence Delimitation Item (FFFE,E0DD). Frames are found as pydicom's ``get_frame`` and
    ``generate_frames`` find them: by the Extended Offset Table (7FE0,0001)/(7FE0,0002) when present
    (one fragment per frame, PS3.3 C.7.6.3.1.8, item header skipped); else by a non-empty Basic Offset
    Table (offsets from the first byte of the first fragment item; the fragments between two offsets
    are a frame, the last frame runs to the delimiter); else, with an empty one, all fragments are the
    frame of a single-frame instance, and each fragment is a frame when there are as many as
    NumberOfFrames. Otherwise (an empty table and neither case: only the JPEG markers inside the
    fragments would tell) None. The header is walked (core/structure.py) before pydicom reads it, and
    the item walk stops after :data:`MAX_FRAGMENT_ITEMS` items (or NumberOfFrames + 1 with an empty
    table) and at any length running past the file's size.

    Reads on S3 (``fp`` an ``open`` file: one GET while reading forward, one more per seek, each
    filling a 1 MiB buffer): the header (one GET, as :func:`native_frame_ranges`); with an Extended
    Offset Table nothing more; with a Basic Offset Table the item headers of the frames asked for
    only: fragments under 1 MiB are read on (no new GET), larger ones are skipped by a seek, so one
    GET per item header of a fragment of 1 MiB or more; with an empty table the item headers of all
    fragments alike. The caller then reads each fragment's value by one ranged GET. Typical: one frame
    of a multi-frame JPEG 2000 instance with a filled Basic Offset Table and one fragment per frame,
    at most 3 GETs (header, item header, fragment), at most 2 MiB read beyond the frame.
    """
    try:
        header = _header_before_pixels(fp, limits, encapsulated=True)
        if header is None:
            return None
        size, _ts, ds = header
        head = fp.read(12)  # explicit VR: tag, OB, 2 reserved bytes, the undefined length
        if len(head) < 12 or head[:4] != _PIXEL_DATA_TAG or head[8:12] != b"\xff\xff\xff\xff":
            return None
        count = int(ds.get("NumberOfFrames", 1) or 1)
        extended: tuple[list[int], list[int]] | None = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            table, lengths = bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths)
            extended = (
                [int.from_bytes(table[i : i + 8], "little") for i in range(0, len(table) - 7, 8)],
                [int.from_bytes(lengths[i : i + 8], "little") for i in range(0, len(lengths) - 7, 8)],
            )
        table_pos = fp.tell()
        table_head = _item_header(fp, table_pos, size)
        if table_head is None or table_head[0] != _ITEM_TAG or table_head[1] % 4:
            return None
        first = table_pos + 8 + table_head[1]  # the first fragment item's first byte
        if not 0 < count <= MAX_FRAGMENT_ITEMS or not all(1 <= number <= count for number in numbers):
            return None  # pixel_frames says NoSuchFrame
        if extended is not None:
            offsets, lengths_ = extended
            if len(offsets) != len(lengths_) or max(numbers) > len(offsets):
                return None
            ranges = [[(first + offsets[n - 1] + 8, first + offsets[n - 1] + 8 + lengths_[n - 1])] for n in numbers]
            return ranges if all(end <= size for [(_, end)] in ranges) else None
        if table_head[1]:
            if table_head[1] // 4 > MAX_FRAGMENT_ITEMS:
                return None
            raw = fp.read(table_head[1])
            bot = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]
            if len(bot) < count or bot[0] != 0 or any(a >= b for a, b in zip(bot, bot[1:], strict=False)):
                return None
            found: list[list[tuple[int, int]]] = []
            for number in numbers:
                end = first + bot[number] if number < len(bot) else None
                parts = _fragments(fp, first + bot[number - 1], end, size, MAX_FRAGMENT_ITEMS)
                if not parts:
                    return None
                found.append(parts)
            return found
        every = _fragments(fp, first, None, size, count + 1 if count > 1 else MAX_FRAGMENT_ITEMS)
    except Exception:  # noqa: BLE001 - anything odd: the whole-file path reads it and says what is wrong
        return None
    if not every:
        return None
    if count == 1:
        return [every for _ in numbers]
    if len(every) == count:
        return [[every[number - 1]] for number in numbers]
    return None  # frames != fragments with an empty table: only the JPEG markers would tell


__all__ = [
    "NoSuchFrame",
    "TranscodeError",
    "can_decode",
    "can_transcode",
    "encapsulated_frame_ranges",
    "frame_count",
    "native_frame_ranges",
    "pixel_frames",
    "transcode",
    "transcode_part10",
]
