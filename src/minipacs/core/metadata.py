"""PS3.18 JSON metadata (Annex F), computed once per instance and kept in the index.

After an ingest (``Archive.on_stored``) the instance is queued; a background task
reads its header (never the pixel data) off the event loop, turns it into the
PS3.18 JSON model with pydicom and stores the text in ``instance_metadata``. The
C-STORE acknowledgement never waits for it. A request that comes first computes
the missing ones itself (and stores them). Bulk data (pixel data and any value
larger than ``BULK_THRESHOLD``) is referenced by a BulkDataURI relative to the
DICOMweb root, written with the ``BULK_PREFIX`` marker the web layer replaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, Final

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from minipacs.blobs.base import BlobError, BlobStore
from minipacs.core.archive import Archive
from minipacs.core.errors import NotFound, UnreadableInstance
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits
from minipacs.core.model import StoreOutcome, StoreStatus
from minipacs.core.stored import pixel_tag_of, quiet_pydicom, read_blob_header, read_stored
from minipacs.dicom.header import dataset_encoding
from minipacs.dicom.json_model import json_model, lossless_decimal, pixel_element
from minipacs.dicom.part10 import NotPart10, dataset_offset_from, uid_value, walk_file_meta
from minipacs.index import metadata_repo
from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)

#: Values longer than this (bytes) become BulkDataURIs (PS3.18 F.2.6).
BULK_THRESHOLD: Final = 1024
#: Placeholder for the DICOMweb root URL inside stored BulkDataURIs.
BULK_PREFIX: Final = "minipacs-bulk:"
_BATCH: Final = 64
#: Seconds without a new ingest before the worker starts.
_QUIET: Final = 0.5
#: Queued instances past which the worker starts even while ingests continue.
_BACKLOG: Final = 10_000


def compute(path: Any, study: str, series: str, sop: str, limits: DatasetLimits = DEFAULT_LIMITS) -> str:
    """The PS3.18 JSON object of one stored file, as text (read within ``limits``: core/stored.py)."""
    try:
        with open(path, "rb") as fp:
            text = fast_text(fp, study, series, sop, limits, checked=True)
    except OSError:  # a missing or unreadable file: read_stored says so in its own words
        text = None
    if text is not None:
        return text
    return model_text(read_stored(path, limits, stop_before_pixels=True), study, series, sop, checked=True)


def blob_text(blobs: BlobStore, key: str, study: str, series: str, sop: str, limits: DatasetLimits) -> str:
    """:func:`compute` of a stored blob, reading no more of it than its header (on S3: its start)."""
    try:
        with blobs.open(key) as fp:
            text = fast_text(fp, study, series, sop, limits, checked=True)
    except (OSError, BlobError):  # a missing blob or a store error: read_blob_header says so in its own words
        text = None
    if text is not None:
        return text
    return model_text(read_blob_header(blobs, key, limits), study, series, sop, checked=True)


#: How much of a stored file :func:`fast_text` reads: its header is nearly always within it.
FAST_READ_BYTES: Final = 64 * 1024


def fast_text(
    fp: BinaryIO, study: str, series: str, sop: str, limits: DatasetLimits = DEFAULT_LIMITS, *, checked: bool = False
) -> str | None:
    """The JSON text built straight from the file's bytes (dicom/json_model.py, the same text as
    :func:`model_text` of pydicom's reading); None when that builder does not cover the file (the
    caller then reads it with pydicom, which also says what is wrong with a broken one)."""
    head = fp.read(FAST_READ_BYTES + 1)
    whole = len(head) <= FAST_READ_BYTES
    try:
        offset = dataset_offset_from(head)
        _, meta = walk_file_meta(head[132:offset])
    except (NotPart10, ValueError, struct.error):
        return None
    transfer_syntax = uid_value(meta.get(0x0010, b""))
    encoding = dataset_encoding(transfer_syntax)
    if not encoding.little_endian or encoding.deflated:
        return None
    try:
        encapsulated = UID(transfer_syntax).is_compressed
    except ValueError:  # no transfer syntax, or not one: pydicom's path says what it makes of it
        return None
    base = f"{BULK_PREFIX}/studies/{study}/series/{series}/instances/{sop}"
    model = json_model(
        head if whole else head[:FAST_READ_BYTES],
        offset,
        implicit_vr=encoding.implicit_vr,
        encapsulated=encapsulated,
        bulk=lambda tag: f"{base}/bulkdata/{tag:08X}",
        bulk_threshold=BULK_THRESHOLD,
        max_depth=limits.max_sequence_depth,
        whole=whole,
    )
    if model is None or (checked and model.get("00080018", {}).get("Value") != [sop]):
        return None  # pydicom's path says what is wrong (model_text's SOP Instance UID check)
    nest_bulk_uris(model, base)
    try:
        return json.dumps(model, separators=(",", ":"), allow_nan=False)
    except ValueError:  # an infinite or NaN number: the pydicom path writes it as PS3.18 allows
        return None


#: PS3.5 Table 6.2-1 Decimal and Integer Strings, after their padding is stripped.
_DS: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_IS: Final = re.compile(r"[+-]?\d+\Z")


def _number_texts(vr: str, texts: list[str]) -> dict[str, Any]:
    """A DS/IS element whose values are no JSON numbers (an Integer String '1A', a Decimal String
    'nan' or '1e999'): every value as the string it was (PS3.18 F.2.3), an empty one null (F.2.5)."""
    return {"vr": vr, "Value": [text or None for text in texts]}


def _json_numbers(vr: str, texts: list[str]) -> bool:
    """Whether these IS/DS values are JSON numbers pydicom writes without a complaint and without losing
    a digit (:func:`lossless_decimal`)."""
    pattern = _DS if vr == "DS" else _IS
    for text in texts:
        if text and (pattern.match(text) is None or (vr == "DS" and not lossless_decimal(text))):
            return False
    return True


def _exact_decimals(model: dict[str, Any], ds: Dataset) -> None:
    """pydicom writes every DS value as a double: an element with a value that a double changes is written
    as its strings instead (:func:`_number_texts`), its items' too. In place; ``model`` is ``ds``'s."""
    for elem in ds:
        key = f"{elem.tag:08X}"
        if key not in model:
            continue
        if elem.VR == "SQ":
            items = model[key].get("Value", [])
            for item_model, item in zip(items, elem.value, strict=False):
                if isinstance(item_model, dict):
                    _exact_decimals(item_model, item)
        elif elem.VR == "DS" and elem.value not in (None, ""):
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            texts = [
                str(getattr(v, "original_string", None) or v).strip(" \0") if v is not None else "" for v in values
            ]
            if not all(not t or _DS.match(t) is None or lossless_decimal(t) for t in texts):
                model[key] = _number_texts("DS", texts)


def _float_texts(elem: DataElement) -> dict[str, Any]:
    """FL/FD values with a NaN or an infinity: those as "NaN", "Infinity", "-Infinity" (JSON has no
    such number and strict parsers refuse a text with one); the finite ones stay numbers."""
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    out = [
        v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")) for v in values
    ]
    return {"vr": elem.VR, "Value": out}


def _lenient_model(ds: Dataset, bulk: Callable[[DataElement], str]) -> dict[str, Any]:
    """pydicom's ``to_json_dict``, element by element, except for the number elements it cannot
    write as JSON numbers (:func:`_number_texts`, :func:`_float_texts`); anything else that fails
    propagates. A DS/IS value is judged on its bytes, before pydicom converts (and complains)."""
    model: dict[str, Any] = {}
    for tag in ds.keys():
        key = f"{tag:08X}"
        found = ds.get_item(tag)
        if isinstance(found, RawDataElement):
            vr = found.VR or (dictionary_VR(tag) if dictionary_has_tag(tag) else None)
            if vr in ("DS", "IS"):
                raw = found.value or b""
                texts = [part.strip(" \0") for part in raw.decode("latin-1").split("\\")] if raw else []
                if not _json_numbers(vr, texts):
                    model[key] = _number_texts(vr, texts)
                    continue
        elem = ds[tag]
        if elem.VR == "SQ":
            model[key] = {"vr": "SQ", "Value": [_lenient_model(item, bulk) for item in elem.value]}
            continue
        if elem.VR == "PN":  # pydicom fails on an empty name among several (an IndexError)
            values = list(elem.value) if elem.VM > 1 else ([] if elem.value in (None, "") else [elem.value])
            names = [_pn_groups(str(v) if v is not None else "") for v in values]
            model[key] = {"vr": "PN", "Value": names} if any(n is not None for n in names) else {"vr": "PN"}
            continue
        try:
            converted = elem.to_json_dict(bulk_data_element_handler=bulk, bulk_data_threshold=BULK_THRESHOLD)
            json.dumps(converted, allow_nan=False)
        except ValueError:
            if elem.VR in ("FL", "FD"):
                converted = _float_texts(elem)
            elif elem.VR in ("DS", "IS"):  # converted before the failure: its values keep their text
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                texts = [
                    "" if v is None else str(getattr(v, "original_string", None) or v).strip(" \0") for v in values
                ]
                converted = _number_texts(elem.VR, texts)
            else:
                raise
        model[key] = converted
    return model


_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")


def _pn_groups(text: str) -> dict[str, str] | None:
    """One person name as PS3.18 F.2.2 writes it: its non-empty component groups (``=Yamada`` has only an
    Ideographic one); None for an empty name (F.2.5: null among several values)."""
    groups = {name: part for name, part in zip(_PN_GROUPS, text.split("=")[:3], strict=False) if part}
    return groups or None


def _tidy_person_names(model: dict[str, Any]) -> None:
    """pydicom writes an empty component group of a name as ``""`` (``=Yamada``: ``"Alphabetic": ""``);
    F.2.2 writes only the groups a name has. In place, sequences' items too."""
    for element in model.values():
        vr = element.get("vr")
        if vr == "SQ":
            for item in element.get("Value", ()):
                if isinstance(item, dict):
                    _tidy_person_names(item)
        elif vr == "PN" and "Value" in element:
            element["Value"] = [
                ({k: v for k, v in name.items() if v} or None) if isinstance(name, dict) else name
                for name in element["Value"]
            ]
            if all(name is None for name in element["Value"]):
                del element["Value"]


def model_text(ds: Dataset, study: str, series: str, sop: str, *, checked: bool = False) -> str:
    """The PS3.18 JSON object of a stored header (read without its pixel data), as text.

    ``checked`` (a stored file): UnreadableInstance when the header is not the instance's, its SOP
    Instance UID missing (a file cut short, which the stored-file walk lets through when fewer than 8
    bytes of an element are left: pydicom then reads an empty data set, and the metadata was ``{}``) or
    another one. The same check makes :func:`fast_text` leave such a file to this function."""
    found = ds.get("SOPInstanceUID")
    if checked and found is None:
        raise UnreadableInstance("its data set has no SOP Instance UID (0008,0018): is the file cut short?")
    if checked and str(found).rstrip("\x00 ") != sop:
        raise UnreadableInstance(f"its data set names SOP Instance UID {str(found)[:70]!r}, not the one indexed")
    base = f"{BULK_PREFIX}/studies/{study}/series/{series}/instances/{sop}"

    def bulk(elem: DataElement) -> str:
        return f"{base}/bulkdata/{elem.tag:08X}"

    pixel_tag = pixel_tag_of(ds)
    if pixel_tag is None:  # not read by core/stored.py: pixel data follows a header with Rows
        pixel_tag = 0x7FE00010 if "Rows" in ds else 0

    def text(model: dict[str, Any]) -> str:
        nest_bulk_uris(model, base)
        if pixel_tag and f"{pixel_tag:08X}" not in model:  # the pixel data that follows the header we read
            encapsulated = ds.file_meta.TransferSyntaxUID.is_compressed
            model[f"{pixel_tag:08X}"] = pixel_element(pixel_tag, encapsulated, f"{base}/bulkdata/{pixel_tag:08X}")
        return json.dumps(model, separators=(",", ":"), allow_nan=False)

    with quiet_pydicom() as captured:
        try:
            try:
                model = ds.to_json_dict(BULK_THRESHOLD, bulk)
                _tidy_person_names(model)
                _exact_decimals(model, ds)
                return text(model)
            except (ValueError, UserWarning, IndexError):  # a number that is no JSON number (a NaN refused
                # by the dumps; pydicom may warn first, an exception where warnings are errors), an empty
                # person name among several (pydicom's IndexError): element by element
                return text(_lenient_model(ds, bulk))
        except Exception as exc:
            said = f" ({captured[0][:200]})" if captured else ""
            raise UnreadableInstance(
                f"a value cannot be converted to PS3.18 JSON: {type(exc).__name__}: {str(exc)[:200]}{said}"
            ) from exc


def nest_bulk_uris(model: dict[str, Any], base: str, path: str = "") -> None:
    """Give each BulkDataURI inside a sequence the path of its element: ``bulkdata/<sequence tag>/<item
    index, from 0>/<tag>`` (nested as deep as the sequences go), so it names that element and not the
    top-level one with the same tag (an Icon Image Sequence's Pixel Data is not the image's). Both
    builders write ``<base>/bulkdata/<tag>``; top-level ones keep that form."""
    for key, element in model.items():
        if path and "BulkDataURI" in element:
            element["BulkDataURI"] = f"{base}/bulkdata/{path}{key}"
        if element.get("vr") == "SQ":
            for index, item in enumerate(element.get("Value") or ()):
                if isinstance(item, dict):
                    nest_bulk_uris(item, base, f"{path}{key}/{index}/")


def delete_rows(conn: IndexConnection, uids: list[str]) -> None:
    """Forget the metadata of deleted instances (called in the delete transaction)."""
    metadata_repo.forget(conn, uids)


class MetadataStore:
    """Computes metadata after each ingest, in the background, and serves it."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Subscribe to the archive's ingests and start the background worker (on the running loop)."""
        self.archive.on_stored.append(self.notify)
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="minipacs-metadata")

    async def close(self) -> None:
        if self.notify in self.archive.on_stored:
            self.archive.on_stored.remove(self.notify)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def notify(self, outcome: StoreOutcome) -> None:
        if outcome.status is not StoreStatus.DUPLICATE_KEPT:
            self._pending[outcome.sop_instance_uid] = None
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Wait for ingests to pause: parsing while instances keep arriving competes
            # with the C-STORE path for the GIL and the writer. Requests that come
            # first compute on demand; a queue past _BACKLOG starts regardless.
            while len(self._pending) < _BACKLOG:
                seen = len(self._pending)
                await asyncio.sleep(_QUIET)
                if len(self._pending) == seen:
                    break
            while self._pending:
                batch = list(self._pending)[:_BATCH]
                for uid in batch:
                    self._pending.pop(uid, None)
                try:
                    await self.compute_and_store(batch)
                except Exception:
                    log.exception("computing PS3.18 metadata for %d instance(s) failed", len(batch))

    async def compute_and_store(self, uids: list[str]) -> dict[str, str]:
        """Compute, store and return the metadata of ``uids``; those that cannot be computed are
        left out (and logged, one line each)."""
        return (await self._compute_and_store(uids))[0]

    async def _compute_and_store(self, uids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(JSON text by UID, why it cannot be computed by UID) for the stored ones among ``uids``."""
        rows = await self.archive.read(lambda conn: metadata_repo.locations(conn, uids))
        blobs, limits = self.archive.blobs, self.archive.settings.dataset_limits
        failed: dict[str, str] = {}

        def run() -> list[tuple[str, str]]:
            done: list[tuple[str, str]] = []
            for row in rows:
                try:
                    text = blob_text(
                        blobs,
                        row.blob_key,
                        row.study_instance_uid,
                        row.series_instance_uid,
                        row.sop_instance_uid,
                        limits,
                    )
                    done.append((row.sop_instance_uid, text))
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                    failed[row.sop_instance_uid] = (
                        str(exc) if isinstance(exc, UnreadableInstance) else f"{type(exc).__name__}: {str(exc)[:200]}"
                    )
                    # ONE line, with the blob key (the server log may name it; answers never do)
                    log.error(
                        "metadata of SOP Instance %s cannot be computed from %s: %s",
                        row.sop_instance_uid,
                        row.blob_key,
                        failed[row.sop_instance_uid],
                    )
            return done

        computed = await asyncio.to_thread(run)
        if computed:  # only for the copies still stored (compression may have replaced one meanwhile)
            keys = {row.sop_instance_uid: row.blob_key for row in rows}
            await self.archive.write(lambda conn: metadata_repo.store(conn, computed, keys))
        return dict(computed), failed

    async def get(self, uids: Iterable[str]) -> list[str]:
        """The JSON texts of ``uids`` in that order; missing ones are computed now.

        Raises NotFound (not stored) or UnreadableInstance (stored, but its file cannot be read:
        the message says why; the server log has one line with the file's path).
        """
        texts, left_out = await self.available(uids)
        if left_out:
            raise left_out[0]
        return texts

    async def available(self, uids: Iterable[str]) -> tuple[list[str], list[NotFound | UnreadableInstance]]:
        """The JSON texts of those of ``uids`` that can be read, in that order, and why each of the
        others cannot: NotFound (no longer stored) or UnreadableInstance (its file cannot be read)."""
        wanted = list(dict.fromkeys(uids))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.update(await self.archive.read(lambda conn, c=chunk: metadata_repo.texts(conn, c)))  # type: ignore[misc]
        missing = [uid for uid in wanted if uid not in found]
        failed: dict[str, str] = {}
        if missing:
            computed, failed = await self._compute_and_store(missing)
            found.update(computed)
        left_out: list[NotFound | UnreadableInstance] = []
        for uid in wanted:
            if uid in failed:
                why = f"SOP Instance {uid[:70]!r} is stored, but its file cannot be read: {failed[uid]}"
                left_out.append(UnreadableInstance(why))
            elif uid not in found:
                left_out.append(NotFound(f"SOP Instance {uid[:70]!r} is not in the archive"))
        return [found[uid] for uid in wanted if uid in found], left_out


__all__ = [
    "BULK_PREFIX",
    "BULK_THRESHOLD",
    "MetadataStore",
    "blob_text",
    "compute",
    "delete_rows",
    "fast_text",
    "model_text",
    "nest_bulk_uris",
]
