"""Reading a stored Part 10 file with pydicom, within the archive's limits.

Every full read of a stored dataset (PS3.18 metadata, transcoding, frames, query return
keys) goes through :func:`read_stored`: a deflated dataset (PS3.5 A.5) is inflated by
core/inflate.py within ``max_dataset_bytes`` and ``max_inflate_ratio`` -- never by pydicom,
which inflates all of it in one ``zlib.decompress`` call. Blocking: call it off the event loop.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.tag import Tag

from minipacs.core.errors import (
    InflateLimitExceeded,
    InvalidInstance,
    UnreadableInstance,
)
from minipacs.core.header import dataset_encoding
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits, inflate, inflated
from minipacs.dicom.part10 import (
    NotPart10,
    dataset_offset_of,
    uid_value,
    walk_file_meta,
)

_MAX_META = 64 * 1024  # a File Meta Information group longer than this is not read
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float/Double Float/Pixel Data


def _tags(specific: list[Any] | None) -> list[Any] | None:
    """Keywords or tags as pydicom's ``read_dataset`` wants them (``dcmread`` converts them itself)."""
    return None if specific is None else [Tag(item) for item in specific]


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_part10_bytes(data: bytes, limits: DatasetLimits, *, stop_before_pixels: bool = False,
                      specific_tags: list[Any] | None = None) -> Dataset:
    """A Part 10 file received as bytes (a STOW-RS part), read by pydicom; a deflated dataset is
    inflated within ``limits`` (UnreadableInstance past them). Other errors are pydicom's."""
    if data[128:132] == b"DICM":
        end, values = walk_file_meta(data[132:132 + _MAX_META])
        if dataset_encoding(uid_value(values.get(0x0010, b""))).deflated:
            out = bytearray()
            try:
                inflate(io.BytesIO(data[132 + end:]), len(data) - 132 - end, limits, out.extend)
            except (InflateLimitExceeded, InvalidInstance) as exc:
                raise UnreadableInstance(str(exc)) from exc
            return read_dataset(io.BytesIO(out), False, True,
                                stop_when=_at_pixel_data if stop_before_pixels else None,
                                specific_tags=_tags(specific_tags))
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)


def read_stored(path: Path, limits: DatasetLimits = DEFAULT_LIMITS, *, stop_before_pixels: bool = False,
                specific_tags: list[Any] | None = None) -> FileDataset:
    """The stored file ``path`` read by pydicom (``pydicom.dcmread`` arguments of the same names).

    Raises UnreadableInstance, saying why, when the file cannot be read within ``limits``.
    """
    meta = read_file_meta_info(path)
    if not dataset_encoding(str(meta.get("TransferSyntaxUID", ""))).deflated:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
    try:
        data = inflated(path, dataset_offset_of(path), limits)
    except (InflateLimitExceeded, InvalidInstance, NotPart10) as exc:
        raise UnreadableInstance(str(exc)) from exc
    with open(path, "rb") as fh:
        preamble = fh.read(128)
    dataset = read_dataset(io.BytesIO(data), False, True, stop_when=_at_pixel_data if stop_before_pixels else None,
                           specific_tags=_tags(specific_tags))
    ds = FileDataset(str(path), dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


__all__ = ["read_part10_bytes", "read_stored"]
