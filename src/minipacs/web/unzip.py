"""ZIP uploads, inflated as a stream under limits, one member at a time, off the event loop.

A ZIP is the one upload whose size on the wire says little about its size on disk: a
1 MB archive of zeros inflates to a gigabyte (an 'inflation bomb'). So before a byte is
inflated, the central directory is checked: every member's declared size against
``max_dataset_bytes``, their sum against ``max_zip_inflated_bytes`` and against
``max_zip_ratio`` times the archive's own size (413 with a sentence; nothing stored).
Deflate alone cannot exceed about 1032:1 per member, but members may share one
compressed stream (overlapping entries): 42 kB can then claim 5 GB, so the ratio that
matters is the whole archive's. Then each member is inflated in 256 KiB pieces straight into a staging file,
in a worker thread, counting: a member whose stream yields more than its header said,
or more than the limits, stops there. A member whose deflate stream or CRC is broken is
reported as that file's failure (400 when no member could be stored), never a 500.
ZIP format: PKWARE APPNOTE.TXT 6.3.10 (§4.3.6 local headers, §4.3.12 central directory).
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from minipacs.config import Settings
from minipacs.web.errors import HttpError

#: Bytes inflated per read.
PIECE: Final = 256 * 1024
#: The ratio limit applies to archives that inflate beyond this: a small file of zeros may
#: compress 1000:1 and still be harmless.
RATIO_FLOOR: Final = 1024 * 1024


class BrokenMember(Exception):
    """One member cannot be inflated (corrupt deflate stream, bad CRC, unsupported method)."""


@dataclass(frozen=True)
class ZipLimits:
    member_bytes: int  # max_dataset_bytes: a member inflating beyond this is one dataset too large
    total_bytes: int  # max_zip_inflated_bytes: all members together
    ratio: int  # max_zip_ratio: all members' inflated size / the archive's size (beyond RATIO_FLOOR)
    members: int  # max_upload_parts: file members

    @classmethod
    def of(cls, settings: Settings) -> ZipLimits:
        return cls(
            settings.max_dataset_bytes,
            settings.max_zip_inflated_bytes,
            settings.max_zip_ratio,
            settings.max_upload_parts,
        )


def _too_large(message: str) -> HttpError:
    return HttpError(413, "too_large", message + "; nothing was stored")


def open_zip(body: bytes | Path, limits: ZipLimits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The archive (in memory, or a file: an upload is spooled to one) and its file members, after
    checking their declared sizes against ``limits`` (HttpError 413), or HttpError 400 when it is
    not a ZIP. Blocking: call it in a worker thread."""
    size = len(body) if isinstance(body, bytes) else os.path.getsize(body)
    try:
        archive = zipfile.ZipFile(io.BytesIO(body) if isinstance(body, bytes) else body)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise HttpError(400, "bad_zip", f"the ZIP file cannot be read: {exc}") from None
    try:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > limits.members:
            raise _too_large(
                f"the ZIP holds {len(members)} files; at most {limits.members} are accepted in one "
                "request (max_upload_parts): split it"
            )
        total = 0
        for info in members:
            name = info.filename[:100]
            if info.file_size > limits.member_bytes:
                raise _too_large(
                    f"the ZIP member {name!r} inflates to {info.file_size} bytes; one file may be at "
                    f"most {limits.member_bytes} (max_dataset_bytes)"
                )
            total += info.file_size
            if total > limits.total_bytes:
                raise _too_large(
                    f"the ZIP inflates to more than {limits.total_bytes} bytes "
                    "(max_zip_inflated_bytes); split it into smaller archives"
                )
        if total > RATIO_FLOOR and total > limits.ratio * size:
            raise _too_large(
                f"the ZIP ({size} bytes) inflates to {total} bytes, {total // size} times "
                f"its size; at most {limits.ratio} times is accepted (max_zip_ratio): such archives are "
                "built to exhaust memory or disk"
            )
    except BaseException:
        archive.close()
        raise
    return archive, members


def _pieces(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    try:
        with archive.open(info) as member:
            while piece := member.read(PIECE):
                yield piece
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, RuntimeError) as exc:
        # RuntimeError: an encrypted member (zipfile wants a password)
        raise BrokenMember(
            f"the ZIP member {info.filename[:100]!r} cannot be inflated ({exc}); the archive is "
            "damaged: create it again"
        ) from None


def inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: BinaryIO, limits: ZipLimits) -> int:
    """Inflate one member into ``out`` piece by piece, counting; the bytes written.

    The stream may not yield more than the member's declared size (zipfile stops there and
    its CRC check fails: BrokenMember) nor more than ``limits.member_bytes`` (413).
    Blocking: call it in a worker thread."""
    written = 0
    for piece in _pieces(archive, info):
        written += len(piece)
        if written > limits.member_bytes:
            raise HttpError(
                413,
                "too_large",
                f"the ZIP member {info.filename[:100]!r} inflates beyond "
                f"{limits.member_bytes} bytes (max_dataset_bytes), more than its header said; "
                "the members before it were stored",
            )
        out.write(piece)
    return written


__all__ = ["PIECE", "RATIO_FLOOR", "BrokenMember", "ZipLimits", "inflate", "open_zip"]
