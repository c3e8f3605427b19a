"""Storage Service Class, SCU side: send Part 10 files with C-STORE (PS3.4 B.2).

Files are sent as they are stored (the dataset part streams from disk). The
proposal has one presentation context per (SOP class, transfer syntax) found,
plus Explicit/Implicit VR Little Endian as fallbacks, so a peer that refuses
e.g. Big Endian or a compressed syntax still gets the file, transcoded by
``core.transcode``. Used by services/outbound.py (``minipacs store``, the web's send) and by
C-MOVE/C-GET sub-operations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from minipacs.core.errors import InvalidInstance
from minipacs.core.header import read_header
from minipacs.core.transcode import transcode
from minipacs.dicom.part10 import NotPart10, Part10File, read_part10
from minipacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    transfer_syntax,
    uid_name,
)
from minipacs.net.association import Association, FileRegion
from minipacs.net.dimse import Command
from minipacs.net.presentation import NegotiatedContext

NATIVE_FALLBACK = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: What a file is converted to when the peer refuses its stored syntax, in this order (PS3.4
#: C.4.2.3.1, C.4.3.3.1): the native fallbacks, then Deflated Explicit VR Little Endian (PS3.5 A.5).
CONVERTED_TO = (*NATIVE_FALLBACK, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)

__all__ = [
    "CONVERTED_TO",
    "NATIVE_FALLBACK",
    "NotPart10",
    "Part10File",
    "SendableFile",
    "StoreSummary",
    "proposal",
    "read_part10",
    "read_sendable",
    "scan",
    "store_file",
]


class SendableFile(Protocol):
    """What C-STORE needs of a file: a Part 10 file (read through ``open``, or ``local_file`` for a
    reader that needs a file name) and where its dataset starts."""

    @property
    def label(self) -> str: ...

    def open(self) -> BinaryIO: ...

    def local_file(self) -> AbstractContextManager[Path]: ...

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def transfer_syntax_uid(self) -> str: ...

    @property
    def dataset_offset(self) -> int: ...


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and files under folders named, recursively and sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def proposal(files: Iterable[SendableFile]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for the files: exact syntaxes, plus fallbacks.

    One context per (SOP class, stored transfer syntax), so the bytes can go as
    they are; one context per SOP class proposing :data:`CONVERTED_TO` (Explicit and
    Implicit VR Little Endian, then Deflated Explicit VR Little Endian, PS3.5 A.5), so a
    peer refusing the stored syntax still gets the instance, transcoded (PS3.4 C.4.2.3.1).
    The acceptor picks one of the context's syntaxes; a peer that takes Deflated only is
    served, one that takes a native syntax gets it as before.
    """
    contexts: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, str]] = set()
    fallback: set[str] = set()
    for f in files:
        key = (f.sop_class_uid, f.transfer_syntax_uid)
        if key not in seen:
            seen.add(key)
            contexts.append((f.sop_class_uid, [f.transfer_syntax_uid]))
        if transfer_syntax(f.transfer_syntax_uid) is not None and f.sop_class_uid not in fallback:
            fallback.add(f.sop_class_uid)
            contexts.append((f.sop_class_uid, list(CONVERTED_TO)))
    return contexts


@dataclass
class StoreSummary:
    sent: int = 0
    warnings: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


async def store_file(
    assoc: Association,
    f: SendableFile,
    *,
    move_originator: tuple[str, int] | None = None,
    usable: Callable[[NegotiatedContext], bool] | None = None,
    priority: int = 0,
) -> tuple[int, str]:
    """C-STORE one file; returns (status, error comment).

    The stored bytes stream as they are when a context with the stored transfer
    syntax was accepted; otherwise the file is transcoded (off the event loop)
    to an accepted native syntax. ``move_originator`` (AE title, message ID)
    marks a C-MOVE sub-operation (PS3.7 9.3.1.1); ``usable`` restricts which
    accepted contexts may carry it (C-GET: those where the peer is SCP). ``priority``: the
    C-STORE's Priority (0 MEDIUM, 1 HIGH, 2 LOW; a sub-operation's is its C-MOVE's or C-GET's,
    PS3.4 C.4.2.1.2, C.4.3.1.2).
    Raises LookupError when no context fits and TranscodeError when conversion fails.
    """
    candidates = [c for c in assoc.contexts_for(f.sop_class_uid) if usable is None or usable(c)]
    ctx = next((c for c in candidates if c.transfer_syntax == f.transfer_syntax_uid), None)
    dataset: FileRegion | bytes
    if ctx is not None:
        dataset = FileRegion(Path(f.label), f.dataset_offset, opener=f.open)
    else:
        ctx = next(
            (c for syntax in CONVERTED_TO for c in candidates if c.transfer_syntax == syntax),
            None,
        )
        if ctx is None:
            accepted = ", ".join(sorted({c.transfer_syntax for c in candidates})) or "none"
            raise LookupError(
                f"the peer accepted no presentation context for {uid_name(f.sop_class_uid)} "
                f"in {uid_name(f.transfer_syntax_uid)} or a native or deflated syntax (accepted: {accepted})"
            )
        dataset = await asyncio.to_thread(_transcoded, f, ctx.transfer_syntax)
    fields: dict[str, object] = {}
    if move_originator is not None:
        fields["MoveOriginatorApplicationEntityTitle"] = move_originator[0]
        fields["MoveOriginatorMessageID"] = move_originator[1]
    rq = Command.make(
        "C-STORE-RQ",
        has_dataset=True,
        MessageID=assoc.next_message_id(),
        Priority=priority,
        AffectedSOPClassUID=f.sop_class_uid,
        AffectedSOPInstanceUID=f.sop_instance_uid,
        **fields,
    )
    status, text = -1, ""
    async for rsp in assoc.request(ctx.context_id, rq, dataset):
        status = rsp.command.status
        text = rsp.command.error_comment
    return status, text


def _transcoded(f: SendableFile, transfer_syntax: str) -> bytes:
    with f.local_file() as path:
        return transcode(path, transfer_syntax)


def read_sendable(path: Path) -> Part10File:
    """A file as C-STORE announces it: its transfer syntax and where its dataset starts from the File
    Meta Information (PS3.10 7.1), its SOP Class and SOP Instance UIDs from the dataset, as DCMTK
    storescu does. The C-STORE-RQ's Affected SOP Class/Instance UID must be the dataset's (PS3.4
    B.2.3, PS3.7 9.1.1.1); a File Meta Information naming other UIDs would get 0xA900 from the peer,
    or the object filed under the wrong UID. Raises NotPart10 (with the reason) or OSError.
    """
    meta = read_part10(path)
    try:
        header = read_header(path, meta.dataset_offset, meta.transfer_syntax_uid)
    except InvalidInstance as exc:
        raise NotPart10(f"the dataset cannot be read: {exc}") from None
    sop_class, sop_instance = header.get("SOPClassUID"), header.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        missing = " and ".join(
            name
            for name, value in (
                ("SOP Class UID (0008,0016)", sop_class),
                ("SOP Instance UID (0008,0018)", sop_instance),
            )
            if not value
        )
        raise NotPart10(f"the dataset has no {missing}; a C-STORE must announce the dataset's UIDs")
    if (sop_class, sop_instance) == (meta.sop_class_uid, meta.sop_instance_uid):
        return meta
    return replace(meta, sop_class_uid=sop_class, sop_instance_uid=sop_instance)


def scan(paths: Iterable[Path], summary: StoreSummary) -> list[Part10File]:
    found: list[Part10File] = []
    for path in iter_files(paths):
        if path.name == "DICOMDIR":
            continue
        try:
            found.append(read_sendable(path))
        except NotPart10 as exc:
            summary.skipped.append((path, str(exc)))
        except OSError as exc:
            summary.skipped.append((path, f"cannot read: {exc.strerror}"))
    return found
