"""Reading a stored Part 10 file with pydicom, within the archive's limits.

Every full read of a stored dataset (PS3.18 metadata, transcoding, frames, query return
keys) goes through :func:`read_stored`: a deflated dataset (PS3.5 A.5) is inflated by
core/inflate.py within ``max_dataset_bytes`` and ``max_inflate_ratio`` -- never by pydicom,
which inflates all of it in one ``zlib.decompress`` call -- and only after core/structure.py
walked the whole structure, so a broken file is refused with one sentence rather than a
RecursionError or dozens of pydicom log lines. Blocking: call it off the event loop.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.tag import Tag

from minipacs.blobs.base import BlobStore
from minipacs.core.errors import (
    InflateLimitExceeded,
    InvalidInstance,
    UnreadableInstance,
)
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits, inflate, inflated
from minipacs.core.structure import PIXEL_TAGS, check_structure
from minipacs.dicom.header import MalformedDataset, dataset_encoding
from minipacs.dicom.part10 import (
    NotPart10,
    dataset_offset_from,
    dataset_offset_of,
    uid_value,
    walk_file_meta,
)
from minipacs.dicom.uids import TransferSyntax

D = TypeVar("D", bound=Dataset)
_MAX_META = 64 * 1024  # a File Meta Information group longer than this is not read


def _tags(specific: list[Any] | None) -> list[Any] | None:
    """Keywords or tags as pydicom's ``read_dataset`` wants them (``dcmread`` converts them itself)."""
    return None if specific is None else [Tag(item) for item in specific]


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def read_part10_bytes(
    data: bytes, limits: DatasetLimits, *, stop_before_pixels: bool = False, specific_tags: list[Any] | None = None
) -> Dataset:
    """A Part 10 file received as bytes (a STOW-RS part), read by pydicom; a deflated dataset is
    inflated within ``limits`` (UnreadableInstance past them). Other errors are pydicom's."""
    if data[128:132] == b"DICM":
        end, values = walk_file_meta(data[132 : 132 + _MAX_META])
        if dataset_encoding(uid_value(values.get(0x0010, b""))).deflated:
            out = bytearray()
            try:
                inflate(io.BytesIO(data[132 + end :]), len(data) - 132 - end, limits, out.extend)
            except (InflateLimitExceeded, InvalidInstance) as exc:
                raise UnreadableInstance(str(exc)) from exc
            return read_dataset(
                io.BytesIO(out),
                False,
                True,
                stop_when=_at_pixel_data if stop_before_pixels else None,
                specific_tags=_tags(specific_tags),
            )
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)


class _QuietFilter(logging.Filter):
    """Drops (and keeps aside) what pydicom logs in a thread inside :func:`quiet_pydicom`."""

    def filter(self, record: logging.LogRecord) -> bool:
        captured: list[str] | None = getattr(_QUIET, "captured", None)
        if captured is None:
            return True
        captured.append(record.getMessage())
        return False


_QUIET = threading.local()
_FILTER: Final = _QuietFilter()


_FILTERED_LOGGERS = [0]  # how many loggers existed at the last scan


def _filter_pydicom_loggers() -> None:
    """Put the filter on "pydicom" and each of its child loggers ("pydicom.pixels.decoders.base"
    logs a decoder's failure with its traceback at ERROR): a logger's filter sees only the
    records logged on that logger, not those its children pass up."""
    loggers = logging.Logger.manager.loggerDict
    if len(loggers) == _FILTERED_LOGGERS[0]:
        return
    for name in ["pydicom", *[n for n in list(loggers) if n.startswith("pydicom.")]]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)  # idempotent: addFilter ignores a filter already there
    _FILTERED_LOGGERS[0] = len(loggers)


@contextmanager
def quiet_pydicom() -> Iterator[list[str]]:
    """Within the block, what pydicom logs in THIS thread is not logged but collected in the list
    yielded (a broken file made it log ~80 ERROR lines per read); other threads log as usual."""
    _filter_pydicom_loggers()
    previous = getattr(_QUIET, "captured", None)
    captured: list[str] = []
    _QUIET.captured = captured
    try:
        yield captured
    finally:
        _QUIET.captured = previous


def read_stored(
    path: Path,
    limits: DatasetLimits = DEFAULT_LIMITS,
    *,
    stop_before_pixels: bool = False,
    specific_tags: list[Any] | None = None,
) -> FileDataset:
    """The stored file ``path`` read by pydicom (``pydicom.dcmread`` arguments of the same names).

    The whole structure is walked first (core/structure.py: truncation, lying lengths, nesting
    deeper than ``limits.max_sequence_depth``), a deflated dataset inflated within ``limits``;
    pydicom's log lines are kept out of the server log. Raises UnreadableInstance with one
    sentence saying what is wrong with the file.
    """
    with quiet_pydicom() as captured:
        try:
            return _read(path, limits, stop_before_pixels, specific_tags)
        except Exception as exc:
            raise _unreadable(exc, captured) from exc


def _unreadable(exc: Exception, captured: list[str]) -> UnreadableInstance:
    """What a failed read of a stored file says (one sentence)."""
    if isinstance(exc, UnreadableInstance):
        return exc
    if isinstance(exc, FileNotFoundError):  # BlobNotFound too
        return UnreadableInstance("its file is missing from storage")
    if isinstance(exc, (MalformedDataset, InflateLimitExceeded, InvalidInstance, NotPart10)):
        return UnreadableInstance(str(exc))
    said = f" ({captured[0][:200]})" if captured else ""
    return UnreadableInstance(f"pydicom cannot read it: {type(exc).__name__}: {str(exc)[:200]}{said}")


def read_blob_header(
    blobs: BlobStore, key: str, limits: DatasetLimits = DEFAULT_LIMITS, *, specific_tags: list[Any] | None = None
) -> Dataset:
    """The header (no pixel data) of the stored blob ``key``, reading no more of it than the header
    (on S3: the start of the object, not all of it), walked and read as :func:`read_stored` does;
    a deflated dataset is read from a local file by :func:`read_stored`. Raises UnreadableInstance."""
    with quiet_pydicom() as captured:
        try:
            with blobs.open(key) as fp:
                ds = read_open_header(fp, limits, specific_tags)
        except Exception as exc:
            raise _unreadable(exc, captured) from exc
    if ds is not None:
        return ds
    with blobs.local_file(key) as path:
        return read_stored(path, limits, stop_before_pixels=True, specific_tags=specific_tags)


def read_open_header(fp: BinaryIO, limits: DatasetLimits, specific_tags: list[Any] | None = None) -> Dataset | None:
    """:func:`_read` of the header from an open Part 10 file, walked first (core/structure.py); ``fp``
    is left where pydicom stopped, at the Pixel Data element's header if there is one. None when the
    dataset is deflated (it is then read whole, from a local file). Raises what a malformed file raises."""
    size = fp.seek(0, os.SEEK_END)
    fp.seek(0)
    head = fp.read(144)
    offset = dataset_offset_from(head)
    fp.seek(0)
    _, meta = walk_file_meta(fp.read(offset)[132:])
    encoding = dataset_encoding(uid_value(meta.get(0x0010, b"")))
    if encoding.deflated:
        return None
    fp.seek(offset)
    pixel_tag = _walk(fp, size, encoding, limits, stop_at_pixels=True)
    fp.seek(0)
    return _stopped_at(pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=specific_tags), pixel_tag)


#: The attribute of a header read without its pixel data that says where the reading stopped.
_PIXEL_TAG: Final = "_minipacs_pixel_tag"


def _stopped_at(ds: D, pixel_tag: int) -> D:
    object.__setattr__(ds, _PIXEL_TAG, pixel_tag)
    return ds


def pixel_tag_of(ds: Dataset) -> int | None:
    """The top-level pixel data element (Pixel Data, Float or Double Float Pixel Data) a header read here
    without its pixel data stopped at; 0: the dataset has none; None: not read that way here."""
    tag = getattr(ds, _PIXEL_TAG, None)
    return tag if isinstance(tag, int) else None


def _walk(fp: BinaryIO, size: int, encoding: TransferSyntax, limits: DatasetLimits, *, stop_at_pixels: bool) -> int:
    """core/structure.py's walk of the dataset from ``fp``'s position, within ``limits``; the pixel
    data tag it stopped at (``stop_at_pixels``), else 0."""
    return check_structure(
        fp,
        size,
        implicit=encoding.implicit_vr,
        little_endian=encoding.little_endian,
        max_depth=limits.max_sequence_depth,
        stop_at_pixels=stop_at_pixels,
    )


def _read(path: Path, limits: DatasetLimits, stop_before_pixels: bool, specific_tags: list[Any] | None) -> FileDataset:
    meta = read_file_meta_info(path)
    offset = dataset_offset_of(path)
    encoding = dataset_encoding(str(meta.get("TransferSyntaxUID", "")))
    if not encoding.deflated:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            fp.seek(offset)
            pixel_tag = _walk(fp, size, encoding, limits, stop_at_pixels=stop_before_pixels)
        read = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
        return _stopped_at(read, pixel_tag) if stop_before_pixels else read
    data = inflated(path, offset, limits)
    pixel_tag = check_structure(
        io.BytesIO(data),
        len(data),
        implicit=False,
        little_endian=True,
        max_depth=limits.max_sequence_depth,
        stop_at_pixels=stop_before_pixels,
    )
    with open(path, "rb") as fh:
        preamble = fh.read(128)
    dataset = read_dataset(
        io.BytesIO(data),
        False,
        True,
        stop_when=_at_pixel_data if stop_before_pixels else None,
        specific_tags=_tags(specific_tags),
    )
    ds = FileDataset(str(path), dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return _stopped_at(ds, pixel_tag) if stop_before_pixels else ds


__all__ = ["pixel_tag_of", "quiet_pydicom", "read_blob_header", "read_open_header", "read_part10_bytes", "read_stored"]
