"""Bounded inflation of Deflated Explicit VR Little Endian datasets (PS3.5 A.5).

A deflated dataset of half a megabyte can inflate to gigabytes (a "decompression
bomb"). Nothing in the archive inflates one except through :func:`inflate`: the
stream is fed to ``zlib.decompressobj`` in chunks, each call bounded by
``max_length``, and the inflated bytes are counted as they come out. Past
``max_dataset_bytes`` (the limit of a dataset as received also applies to its
inflated size) or past ``max_inflate_ratio`` times the deflated size, inflation
stops with :class:`~minipacs.core.errors.InflateLimitExceeded` (C-STORE 0xA700,
PS3.4 Table B.2-1 "Refused: Out of Resources"); at most one output chunk more
than the limit is ever held. A stream that is corrupt or ends early is an
InvalidInstance (0xC000 "Cannot understand").

Blocking: call it off the event loop.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from minipacs.core.errors import BrokenDataset, InflateLimitExceeded, InvalidInstance
from minipacs.core.structure import StructureWalk
from minipacs.dicom.header import MalformedDataset

#: Deflated bytes read per step, and most inflated bytes one zlib call may return.
_IN_CHUNK: Final = 64 * 1024
_OUT_CHUNK: Final = 256 * 1024
_MiB: Final = 1024 * 1024


@dataclass(frozen=True)
class DatasetLimits:
    """What reading a dataset may cost (config.py keys of the same names; these defaults are its defaults)."""

    #: Largest dataset, as received and once inflated (0: no limit).
    max_dataset_bytes: int = 4096 * _MiB
    #: Most inflated bytes per deflated byte of a PS3.5 A.5 dataset (0: no limit).
    max_inflate_ratio: int = 100
    #: Deepest sequence nesting read from a stored file (PS3.5 §7.5).
    max_sequence_depth: int = 64

    def inflate_allowance(self, deflated_size: int) -> tuple[int, str]:
        """The most bytes a stream of ``deflated_size`` bytes may inflate to, and the sentence
        (at most 64 characters: it becomes a DIMSE Error Comment) when it does more; -1: no limit."""
        allowed, why = -1, ""
        if self.max_inflate_ratio:
            allowed = self.max_inflate_ratio * max(deflated_size, 1)
            why = f"deflated dataset inflates over {self.max_inflate_ratio}:1 (max_inflate_ratio)"
        if self.max_dataset_bytes and (allowed < 0 or self.max_dataset_bytes < allowed):
            allowed = self.max_dataset_bytes
            why = f"inflated dataset exceeds {self.max_dataset_bytes} bytes (max_dataset_bytes)"
        return allowed, why


#: The configuration's defaults, for callers that are not given the archive's settings.
DEFAULT_LIMITS: Final = DatasetLimits()


def inflate(
    fp: BinaryIO, deflated_size: int, limits: DatasetLimits, sink: Callable[[bytes], object] | None = None
) -> int:
    """Inflate the raw deflate stream (RFC 1951) that runs from ``fp``'s position to its end;
    hand each inflated chunk to ``sink`` (if any) and return the inflated size.

    Raises InflateLimitExceeded past :meth:`DatasetLimits.inflate_allowance`, InvalidInstance
    when the stream is corrupt or ends early. Bytes after the end of the stream (PS3.5 A.5
    pads an odd-length stream with one byte) are ignored.
    """
    allowed, why = limits.inflate_allowance(deflated_size)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            pending = fp.read(_IN_CHUNK)
            if not pending:
                raise InvalidInstance("the deflated dataset ends before its deflate stream does (truncated)")
            while True:
                out = inflater.decompress(pending, _OUT_CHUNK)
                total += len(out)
                if 0 <= allowed < total:
                    raise InflateLimitExceeded(why)
                if out and sink is not None:
                    sink(out)
                pending = inflater.unconsumed_tail
                # a full output chunk may leave output inside zlib even when all input is consumed
                if inflater.eof or (not pending and len(out) < _OUT_CHUNK):
                    break
    except zlib.error as exc:
        raise InvalidInstance(f"the deflated dataset cannot be inflated ({exc})") from exc
    return total


def check_deflated(path: Path, dataset_offset: int, limits: DatasetLimits) -> int:
    """Inflate the dataset of a staged file, keeping nothing, and walk its element structure as it
    comes out (core/structure.py, the ingest walk); its inflated size.

    Raises as :func:`inflate` does, and BrokenDataset when the inflated dataset is broken.
    """
    # A.5: a deflated dataset's Pixel Data is native (the JPIP Deflate syntaxes of A.6 carry none)
    walk = StructureWalk(implicit=False, little_endian=True, max_depth=limits.max_sequence_depth, encapsulated=False)
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            fp.seek(dataset_offset)
            total = inflate(fp, size - dataset_offset, limits, walk.feed)
        walk.finish()
    except MalformedDataset as exc:
        raise BrokenDataset(str(exc)) from None
    return total


def inflated(path: Path, dataset_offset: int, limits: DatasetLimits) -> bytearray:
    """The inflated dataset of a file, held in memory within ``limits``. Raises as :func:`inflate` does."""
    out = bytearray()
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        fp.seek(dataset_offset)
        inflate(fp, size - dataset_offset, limits, out.extend)
    return out


__all__ = ["DEFAULT_LIMITS", "DatasetLimits", "check_deflated", "inflate", "inflated"]
