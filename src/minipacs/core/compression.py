"""Lossless compression of stored instances: the policies, the encoder, and the safe switch of a copy.

Three lossless syntaxes, encoded by pydicom 3 with permissively licensed codecs only
(tests/test_licences.py): JPEG-LS lossless (PS3.5 A.4.3, 8.2.3; ``pyjpegls``, MIT, CharLS
BSD-3-Clause), JPEG 2000 lossless (PS3.5 A.4.4, 8.2.4; ``pylibjpeg-openjpeg``, MIT, OpenJPEG
BSD-2-Clause) and RLE Lossless (PS3.5 A.4.2, Annex G; pydicom itself).

Every encoded instance is decoded again and compared with the original pixels before it is
kept: a copy that is not pixel-identical is never stored (the instance is skipped, saying why).
The SOP Instance UID stays (PS3.5 8.2: lossless compression is the same instance); nothing
but the Pixel Data encoding and the File Meta's Transfer Syntax UID changes.

Replacing a stored copy (:meth:`Compressor.compress`), in this order:
  1. the compressed file is written to staging (fsynced) and its PS3.18 metadata computed;
  2. in ONE writer transaction: the row is switched to the new copy's own blob key
     (core/paths.py) only if it still names the copy that was read -- a copy re-sent meanwhile
     (duplicate_policy "replace") or a deletion wins, and the compressed file is dropped; the
     file moves into storage, the kept metadata is replaced, and the old blob is queued in
     ``blob_removals``;
  3. the old blob is removed ``keep_replaced_seconds`` later (core/blob_removals.py, as every
     replaced copy), so a C-MOVE, C-GET or WADO-RS that picked the old copy just before the switch
     still reads it.
An instance that cannot be compressed is marked ``skipped: <why>`` (no pixel data, already
compressed, a bit depth or photometric interpretation the syntax does not take, ...) and not
tried again. Blocking work (pydicom) runs off the event loop. docs/COMPRESSION.md has the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydicom.datadict import tag_for_keyword

from minipacs.blobs.base import BlobStore
from minipacs.core import blob_removals
from minipacs.core.errors import ArchiveError, UnreadableInstance
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits
from minipacs.core.labels import InvalidLabel, rule_labels
from minipacs.core.metadata import compute as compute_metadata
from minipacs.core.paths import instance_key
from minipacs.core.stored import read_part10_bytes, read_stored
from minipacs.dicom.uids import JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS, RLE_LOSSLESS, transfer_syntax
from minipacs.index import compression_repo, metadata_repo
from minipacs.index.compression_repo import Candidate

if TYPE_CHECKING:
    from minipacs.core.archive import Archive
    from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)

#: Prefix of ``instances.compression`` for an instance compression left as it was.
SKIPPED: Final = "skipped: "
#: Candidates read per index round trip.
PAGE: Final = 100


class InvalidPolicy(ArchiveError, ValueError):
    """A ``[[compression]]`` table that cannot be used; the message names the key."""


class Skip(Exception):
    """The instance is left as it is; the message says why (recorded in the index)."""


@dataclass(frozen=True)
class CompressionSyntax:
    """A lossless syntax compression writes, and what it takes (PS3.5 section cited)."""

    name: str
    uid: str
    section: str
    bits_allocated: frozenset[int]
    photometric: frozenset[str]
    #: pydicom's encoding plugin, named: left to choose, pydicom takes python-gdcm first for RLE, and
    #: GDCM's RLE encoder aborts the whole process (std::terminate, no Python exception) on some odd
    #: sizes, e.g. pydicom's SC_rgb_small_odd.dcm: a compression job took ``minipacs serve`` down.
    plugin: str


_MONO_RGB: Final = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"})

# PS3.5 A.4.2-A.4.4 and 8.2.3/8.2.4: the lossless syntaxes; bit depths and photometric interpretations
# are those the encoders take AND the standard allows for the syntax. YBR_FULL is left out: pydicom
# decodes it to RGB, so the pixel-identity check could not vouch for it.
SYNTAXES: Final[Mapping[str, CompressionSyntax]] = {
    s.name: s
    for s in (
        CompressionSyntax(
            "jpeg-ls-lossless", JPEG_LS_LOSSLESS, "PS3.5 A.4.3", frozenset({8, 16}), _MONO_RGB, "pyjpegls"
        ),
        CompressionSyntax(
            "jpeg2000-lossless", JPEG_2000_LOSSLESS, "PS3.5 A.4.4", frozenset({8, 16}), _MONO_RGB, "pylibjpeg"
        ),
        CompressionSyntax("rle", RLE_LOSSLESS, "PS3.5 A.4.2", frozenset({8, 16}), _MONO_RGB, "pydicom"),
    )
}
#: When a policy runs: shortly after an instance is stored (in the background, never on the
#: C-STORE path), or by the periodic sweep.
WHEN: Final = ("ingest", "background")
#: Most match keys of one policy.
MAX_MATCH_KEYS: Final = 16


@dataclass(frozen=True)
class CompressionPolicy:
    """One ``[[compression]]`` table (docs/COMPRESSION.md)."""

    name: str
    syntax: str
    #: DICOM keyword -> value, matched as C-FIND does (PS3.4 C.2.2.2) on the indexed attributes.
    match: Mapping[str, str] = field(default_factory=dict)
    #: Only instances that arrived more than this many days ago; None: any age.
    older_than_days: float | None = None
    when: str = "background"
    #: Labels (core/labels.py) the study must carry, every one (as ``labels=``); () any study.
    labels: tuple[str, ...] = ()

    @property
    def target(self) -> CompressionSyntax:
        return SYNTAXES[self.syntax]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "syntax": self.syntax,
            "transfer_syntax_uid": self.target.uid,
            "match": dict(self.match),
            "older_than_days": self.older_than_days,
            "when": self.when,
            "labels": list(self.labels),
        }


_POLICY_KEYS: Final = frozenset({"name", "syntax", "match", "older_than_days", "when", "labels"})


def policy_from_mapping(table: Mapping[str, Any]) -> CompressionPolicy:
    """A ``[[compression]]`` table -> a policy; raises InvalidPolicy naming the key at fault."""
    unknown = sorted(set(table) - _POLICY_KEYS)
    if unknown:
        raise InvalidPolicy(f"unknown key {unknown[0]!r}; a policy has {', '.join(sorted(_POLICY_KEYS))}")
    name = table.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise InvalidPolicy("name must be 1 to 64 printable characters")
    syntax = table.get("syntax")
    if syntax not in SYNTAXES:
        raise InvalidPolicy(f"syntax {syntax!r} is not one of {', '.join(SYNTAXES)}")
    when = table.get("when", "background")
    if when not in WHEN:
        raise InvalidPolicy(f"when {when!r} is not one of {', '.join(WHEN)}")
    raw_match = table.get("match", {})
    if not isinstance(raw_match, Mapping) or len(raw_match) > MAX_MATCH_KEYS:
        raise InvalidPolicy(f"match must be a table of at most {MAX_MATCH_KEYS} DICOM keywords and values")
    match: dict[str, str] = {}
    for keyword, value in raw_match.items():
        if not isinstance(keyword, str) or tag_for_keyword(keyword) is None:  # refused at start, not at each run
            raise InvalidPolicy(f"match key {str(keyword)[:64]!r} is not a DICOM keyword (PS3.6), e.g. Modality")
        if isinstance(value, list):
            value = "\\".join(str(v) for v in value)  # a list of values (PS3.4 C.2.2.2.8)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise InvalidPolicy(f"match value of {keyword} must be a string (C-FIND matching), not {value!r}")
        match[str(keyword)] = str(value)
    age = table.get("older_than_days")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= 36500):
        raise InvalidPolicy(f"older_than_days must be a number of days from 0 to 36500, not {age!r}")
    try:
        labels = rule_labels(table.get("labels", []))
    except InvalidLabel as exc:
        raise InvalidPolicy(str(exc)) from None
    return CompressionPolicy(name, str(syntax), match, None if age is None else float(age), str(when), labels)


# ------------------------------------------------------------------ encoding (blocking)


def _raw_frames(ds: Any, arr: Any) -> bytes:
    """The native Pixel Data bytes pydicom's array stands for (little endian, planar
    configuration as stored): compared with the stored bytes, they say whether the array
    is the whole truth of the file (no bits beyond Bits Stored that decoding would drop)."""
    import numpy as np

    out = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    if int(ds.get("SamplesPerPixel", 1)) > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        out = np.ascontiguousarray(np.moveaxis(out, -1, -3))  # (..., rows, cols, s) -> (..., s, rows, cols)
    return bytes(out.tobytes())


def _encode_blob(blobs: BlobStore, key: str, syntax: CompressionSyntax, limits: DatasetLimits) -> bytes:
    """:func:`encode` of a stored blob (a local file of it: the stored file itself on the filesystem store)."""
    with blobs.local_file(key) as path:
        return encode(path, syntax, limits)


def encode(path: Path, syntax: CompressionSyntax, limits: DatasetLimits = DEFAULT_LIMITS) -> bytes:
    """The Part 10 file ``path`` with its Pixel Data compressed into ``syntax``, checked
    pixel-identical by decoding it again. Raises :class:`Skip` saying why it cannot be,
    FileNotFoundError if the file went. Blocking."""
    import io

    import numpy as np

    from minipacs.core import decoders

    decoders.register()
    try:
        ds = read_stored(path, limits)
    except UnreadableInstance as exc:
        if not path.exists():
            raise FileNotFoundError(str(path)) from exc
        raise Skip(f"the stored file cannot be read: {exc}") from exc
    stored = transfer_syntax(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if "PixelData" not in ds:
        raise Skip("it has no Pixel Data (7FE0,0010)")
    if stored is None:
        raise Skip(f"it is stored in transfer syntax {ds.file_meta.get('TransferSyntaxUID')}, which is unknown")
    if stored.encapsulated:
        raise Skip(f"it is already compressed ({stored.name or stored.uid})")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in syntax.bits_allocated:
        allowed = " or ".join(str(b) for b in sorted(syntax.bits_allocated))
        raise Skip(f"Bits Allocated is {bits}; {syntax.name} is written for {allowed} only")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in syntax.photometric:
        raise Skip(f"Photometric Interpretation {photometric or '(none)'} is not one {syntax.name} keeps losslessly")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples not in (1, 3):
        raise Skip(f"Samples per Pixel is {samples}; only 1 or 3 are compressed")
    try:
        original = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom's many ways of saying the pixels are inconsistent
        raise Skip(f"its pixel data cannot be read: {type(exc).__name__}: {exc}") from None
    expected = _raw_frames(ds, original)
    if bytes(ds.PixelData[: len(expected)]) != expected:
        raise Skip("its pixel values use bits beyond Bits Stored; compressing would change them")
    before = len(ds.PixelData)
    try:
        ds.compress(syntax.uid, original, generate_instance_uid=False, encoding_plugin=syntax.plugin)
    except Exception as exc:  # noqa: BLE001 - an encoder refusing this image is a reason, not a crash
        raise Skip(f"the {syntax.name} encoder refused it: {type(exc).__name__}: {exc}") from None
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    try:
        back = read_part10_bytes(data, limits).pixel_array
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"the {syntax.name} copy cannot be decoded again ({type(exc).__name__}: {exc})") from None
    if back.shape != original.shape or not np.array_equal(back, original):
        raise Skip(f"the {syntax.name} copy is not pixel-identical to the original; the original is kept")
    if len(ds.PixelData) >= before:
        raise Skip(f"{syntax.name} does not make it smaller ({len(ds.PixelData)} bytes of pixel data, was {before})")
    return data


# ------------------------------------------------------------------ the compressor


@dataclass(frozen=True)
class CompressionSettings:
    """config.py keys compression_*."""

    #: A replaced copy's file is removed this long after the switch (a retrieve that chose it still reads it).
    keep_replaced_seconds: float = 300.0
    #: fsync the compressed file before its row switches to it.
    fsync: bool = True
    #: Larger stored files are skipped: encoding holds the pixels about three times in memory.
    max_instance_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What compression did with one instance."""

    sop_instance_uid: str
    study_instance_uid: str
    #: "compressed", "would compress" (dry run), "skipped", "changed" (deleted or re-sent meanwhile).
    status: str
    before: int = 0
    after: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "status": self.status,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }


async def matching_series(
    archive: Any, match: Mapping[str, str], study_uids: Sequence[str] = (), labels: Sequence[str] = ()
) -> list[str] | None:
    """Series Instance UIDs of the series ``match`` selects through the query engine (C-FIND
    matching, PS3.4 C.2.2.2, relational, STUDY root), of studies carrying every one of ``labels``,
    within ``study_uids`` if given; None when ``match`` and ``labels`` are empty (every series)."""
    if not match and not labels:
        return None
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    from minipacs.core.query import prepare_query, run_query
    from minipacs.dicom.levels import STUDY_ROOT, Level

    keys = dict(match)
    keys["SeriesInstanceUID"] = ""
    if study_uids:
        keys["StudyInstanceUID"] = "\\".join(study_uids)
    keys.setdefault("StudyInstanceUID", "")
    identifier = Dataset()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise InvalidPolicy(f"match key {keyword!r} is not a DICOM keyword (PS3.6), e.g. Modality")
        # wildcards and ranges are matching syntax (PS3.4 C.2.2.2), not values: no VR validation
        identifier[tag] = DataElement(tag, dictionary_VR(tag), value or None, validation_mode=pydicom.config.IGNORE)
    prepared = prepare_query(identifier, STUDY_ROOT, level=Level.SERIES, relational=True, labels=labels)
    found: list[str] = []
    async for ds in run_query(archive, prepared):
        found.append(str(ds.SeriesInstanceUID))
    return found


class Compressor:
    """Compresses stored instances of an archive, one at a time, safely (module docstring)."""

    def __init__(self, archive: Archive, settings: CompressionSettings | None = None) -> None:
        self.archive = archive
        self.settings = settings or CompressionSettings()

    async def candidates(
        self,
        *,
        match: Mapping[str, str] | None = None,
        study_uids: Sequence[str] = (),
        series_uids: Sequence[str] = (),
        older_than_days: float | None = None,
        labels: Sequence[str] = (),
    ) -> AsyncIterator[list[Candidate]]:
        """Pages of instances not yet looked at by compression, that ``match`` and ``labels`` select
        (through the query engine), within the studies/series given, arrived before ``older_than_days``."""
        series: list[str] = list(series_uids)
        if match or labels:
            selected = await matching_series(self.archive, match or {}, study_uids, labels) or []
            series = [s for s in selected if s in set(series)] if series else selected
            if not series:
                return
        before = None
        if older_than_days is not None:
            before = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
        studies = list(study_uids)
        groups: list[tuple[list[str], list[str]]] = []
        if series:
            groups = [([], series[i : i + 500]) for i in range(0, len(series), 500)]
        else:
            groups = [(studies[i : i + 500], []) for i in range(0, len(studies), 500)] or [([], [])]
        for study_group, series_group in groups:
            after = 0
            while True:
                page = await self.archive.read(
                    functools.partial(
                        compression_repo.candidates,
                        study_uids=study_group,
                        series_uids=series_group,
                        received_before=before,
                        after_pk=after,
                        limit=PAGE,
                    )
                )
                if not page:
                    break
                yield page
                after = page[-1].pk

    async def compress(self, candidate: Candidate, syntax: CompressionSyntax, *, dry_run: bool = False) -> Outcome:
        """Compress one instance (module docstring, steps 1-2); never raises for the instance's sake."""
        archive = self.archive
        uid, study = candidate.sop_instance_uid, candidate.study_instance_uid
        try:
            if candidate.size > self.settings.max_instance_bytes:
                raise Skip(
                    f"it is {candidate.size} bytes, more than compression_max_instance_bytes "
                    f"({self.settings.max_instance_bytes})"
                )
            data = await asyncio.to_thread(
                _encode_blob, archive.blobs, candidate.blob_key, syntax, archive.settings.dataset_limits
            )
        except FileNotFoundError:
            return Outcome(
                uid, study, "changed", candidate.size, reason="its file went (deleted or replaced meanwhile)"
            )
        except Skip as exc:
            reason = str(exc)
            if not dry_run:
                await archive.write(
                    lambda conn: compression_repo.note(conn, candidate.pk, candidate.blob_key, SKIPPED + reason)
                )
            return Outcome(uid, study, "skipped", candidate.size, candidate.size, reason)
        if dry_run:
            return Outcome(uid, study, "would compress", candidate.size, len(data))
        staged = archive.staging_dir / f"compress-{secrets.token_hex(8)}.part"
        try:
            metadata = await asyncio.to_thread(self._stage, staged, data, candidate)
            new_key = instance_key(study, candidate.series_instance_uid, uid)
            remove_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.settings.keep_replaced_seconds)

            def switch(conn: IndexConnection) -> bool:
                switched = compression_repo.switch(
                    conn,
                    candidate.pk,
                    candidate.blob_key,
                    new_key=new_key,
                    new_size=len(data),
                    transfer_syntax_uid=syntax.uid,
                    syntax_name=syntax.name,
                    remove_after=remove_after,
                )
                if switched:
                    if metadata:
                        metadata_repo.store(conn, [(uid, metadata)])
                    archive.blobs.put_from_staging(staged, new_key)  # before the commit, as ingest does
                return switched

            if not await archive.write(switch):
                return Outcome(
                    uid, study, "changed", candidate.size, reason="deleted or re-sent meanwhile; left as it is"
                )
        finally:
            staged.unlink(missing_ok=True)
        return Outcome(uid, study, "compressed", candidate.size, len(data))

    def _stage(self, staged: Path, data: bytes, candidate: Candidate) -> str:
        """Write and fsync the compressed copy in staging; its PS3.18 metadata ("" if it cannot be made)."""
        with open(staged, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self.settings.fsync:
                os.fsync(fh.fileno())
        try:
            return compute_metadata(
                staged,
                candidate.study_instance_uid,
                candidate.series_instance_uid,
                candidate.sop_instance_uid,
                self.archive.settings.dataset_limits,
            )
        except UnreadableInstance:
            return ""  # computed again on first request (core/metadata.py)

    async def remove_replaced(self) -> int:
        """Remove the replaced copies (compressed or not) whose grace period is over; returns how
        many (core/blob_removals.py, which every node runs on its own)."""
        return await blob_removals.remove_due(self.archive)

    async def savings(self, study_uid: str | None = None) -> dict[str, int]:
        """Sizes stored and as received, of one study or the archive, and ``saved_bytes``."""
        found = await self.archive.read(lambda conn: compression_repo.savings(conn, study_uid))
        found["saved_bytes"] = found["original_bytes"] - found["stored_bytes"]
        if study_uid is None:
            copies, size = await blob_removals.pending(self.archive)
            found["replaced_copies_pending_removal"] = copies
            found["replaced_bytes_pending_removal"] = size
        return found


__all__ = [
    "SKIPPED",
    "SYNTAXES",
    "WHEN",
    "CompressionPolicy",
    "CompressionSettings",
    "CompressionSyntax",
    "Compressor",
    "InvalidPolicy",
    "Outcome",
    "Skip",
    "encode",
    "matching_series",
    "policy_from_mapping",
]
