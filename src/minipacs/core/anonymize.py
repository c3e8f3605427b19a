"""Anonymize a patient, study or series: de-identify each stored instance (core/deid.py) and store
the result through the ONE ingest path as new studies (or write it into a ZIP).

- The instances are read from storage, de-identified in a worker thread, written as Part 10 files
  into the archive's staging folder and ingested with ``Archive.import_file`` (as ``minipacs
  import`` does), origin "anonymize". The pseudonyms are keyed HMACs, so running it again gives
  the same patient ID, names and UIDs: a second run stores nothing new (duplicates).
- The mapping (original <-> pseudonym) goes into the index (index/anonymization_repo.py), for
  admins only. It is written before the first new instance is stored.
- ``keep_original=False`` deletes the original resource once every instance was stored; if any
  instance failed, the original stays and the result says why.
- The key: ``anonymization_key`` (config, or MINIPACS_ANONYMIZATION_KEY); without one, a random
  key is created once in DATA/anonymization.key (mode 0600) and used from then on (:func:`load_key`).
- Large requests run as jobs of kind "anonymize" (:func:`register_anonymize_job`); a job run again
  after a restart does the same work again and stores nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

import pydicom
from pydicom.dataset import FileMetaDataset

from minipacs.blobs.base import BlobError, checked_key
from minipacs.core.audit import Action, ActorKind
from minipacs.core.deid import InvalidDeidOptions, Mapping, Pseudonyms, check_options, deidentify
from minipacs.core.delete import delete_resource
from minipacs.core.errors import ArchiveError, NotFound, OutOfResources
from minipacs.core.jobs import JobContext, JobFailed, JobQueue
from minipacs.core.model import Origin
from minipacs.core.pixel_clean import PixelCleanError, PixelRegions
from minipacs.core.retrieve import StoredInstance, locate, select_instances
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.index import anonymization_repo

if TYPE_CHECKING:
    from minipacs.core.archive import Archive

log = logging.getLogger(__name__)

ANONYMIZE: Final = "anonymize"
KEY_FILE: Final = "anonymization.key"
#: Anonymized files the archive refused after their original was replaced (Retain UIDs).
KEPT_DIR: Final = "anonymize-kept"
#: Instances de-identified at once (pydicom in worker threads) and ingested at once (group commit).
DEID_CONCURRENCY: Final = 4
INGEST_CONCURRENCY: Final = 8
#: Level noun -> (retrieve level, unique key): what each entry point names.
LEVELS: Final[dict[str, tuple[str, str]]] = {
    s.noun: (s.level.value, s.unique_key) for s in LEVEL_SPELLINGS.values() if s.level is not Level.IMAGE
}
Output = Literal["archive", "zip"]


def load_key(configured: str, data_dir: Path) -> bytes:
    """The pseudonym key: the configured one, else DATA/anonymization.key, created once if missing."""
    if configured:
        return configured.encode("utf-8")
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text(encoding="ascii").strip()
        if len(text) < 32:
            raise ArchiveError(
                f"{path} holds no usable anonymization key (64 hex digits expected); restore it from a "
                "backup, or set anonymization_key (a new key gives new pseudonyms)"
            ) from None
        return text.encode("ascii")
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("created the anonymization key %s: back it up, pseudonyms depend on it", path)
    return path.read_text(encoding="ascii").strip().encode("ascii")


class _StagedCopies:
    """The BlobStore a de-identified copy to send is read through: its file in staging, by name (the
    copies of a routing rule's ``anonymize`` are sent and removed, never put into the archive's store)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / Path(checked_key(key)).name

    def put_from_staging(self, staged_path: Path, key: str) -> None:
        raise BlobError("a staged copy cannot be stored through its own reader")

    def sync(self, *, durable: bool = True) -> None:
        return None

    def take_back(self, key: str, staged_path: Path) -> None:
        return None

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        yield self._path(key)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            fh.seek(start)
            data = fh.read(max(end - start, 0))
        return iter([data] if data else [])

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        return iter(())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class AnonymizeRequest:
    level: str  # "patient", "study" or "series"
    id: str  # Patient ID or the UID
    options: frozenset[str] = frozenset()
    keep_original: bool = True

    def to_params(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "id": self.id,
            "options": sorted(self.options),
            "keep_original": self.keep_original,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AnonymizeRequest:
        return cls(params["level"], params["id"], frozenset(params["options"]), bool(params["keep_original"]))


@dataclass
class AnonymizeResult:
    instances: int = 0
    patient: str = ""  # the pseudonymous Patient ID
    studies: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    original_deleted: bool = False
    #: original SOP Instance UID -> the transfer syntax of its de-identified copy
    syntaxes: dict[str, str] = field(default_factory=dict)

    def to_json(self, level: str) -> dict[str, Any]:
        # the JSON API's resource names (dicom/levels.py)
        study, series, image = (LEVEL_SPELLINGS[lv].resource for lv in (Level.STUDY, Level.SERIES, Level.IMAGE))
        out: dict[str, Any] = {
            "patient": self.patient,
            study: self.studies,
            series: self.series,
            image: self.instances,
            "failed": self.failures,
            "original_deleted": self.original_deleted,
        }
        if level in ("study", "series") and len(self.studies) == 1:
            out["study"] = self.studies[0]
        if level == "series" and len(self.series) == 1:
            out["series_uid"] = self.series[0]
        return out


def _part10(
    instance: StoredInstance,
    options: frozenset[str],
    pseudonyms: Pseudonyms,
    mapping: Mapping,
    out: Path,
    pixel_regions: Sequence[PixelRegions] = (),
) -> str:
    """Read, de-identify and write one stored instance as a Part 10 file at ``out`` (blocking); its
    transfer syntax (the original's, or Explicit VR Little Endian when clean-pixel-data decompressed it)."""
    with instance.open() as fh:
        ds = pydicom.dcmread(fh)
    deidentify(ds, options, pseudonyms, mapping, pixel_regions)
    syntax = ds.file_meta.TransferSyntaxUID
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)
    return str(syntax)


class Anonymizer:
    """Anonymizes resources of one archive with one key."""

    def __init__(self, archive: Archive, key: bytes, pixel_regions: Sequence[PixelRegions] = ()) -> None:
        self.archive = archive
        self.pseudonyms = Pseudonyms(key)
        #: Where burned-in text is, for clean-pixel-data (``[[pixel_regions]]``, core/pixel_clean.py).
        self.pixel_regions = tuple(pixel_regions)

    async def select(self, request: AnonymizeRequest, *, into_zip: bool = False) -> list[StoredInstance]:
        if request.level not in LEVELS:
            raise NotFound(f"cannot anonymize a {request.level!r}: choose patient, study or series")
        check_options(request.options)
        if "retain-uids" in request.options and request.keep_original and not into_zip:
            raise InvalidDeidOptions(
                "with retain-uids the anonymized instances keep the originals' UIDs, so both cannot be in "
                "this archive: replace the original (keep_original false, --delete-original) or write a ZIP"
            )
        if "retain-uids" in request.options and request.level == "series" and not into_zip:
            raise InvalidDeidOptions(
                "with retain-uids a series keeps its Study Instance UID, and one study cannot belong to two "
                "patients in this archive: anonymize the whole study, or write a ZIP"
            )
        level, key = LEVELS[request.level]
        found = await select_instances(self.archive, level, {key: request.id}, "PATIENT")
        if not found:
            raise NotFound(f"{request.level} {request.id!r} has no stored instance to anonymize")
        return found

    async def run(
        self,
        request: AnonymizeRequest,
        *,
        zip_path: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
        found: list[StoredInstance] | None = None,
        who: Sequence[str] = (),
    ) -> AnonymizeResult:
        """Anonymize into the archive, or into the ZIP at ``zip_path``; ``progress(done, failed)``.

        Every instance is de-identified into a file first (DEID_CONCURRENCY at a time) and the
        mapping stored in one write. Into the archive, the files are then ingested
        (INGEST_CONCURRENCY at a time, so group commit batches their fsyncs) and the original
        deleted if asked (only when all succeeded); with Retain UIDs the new instances have the
        original UIDs, so the original is deleted first (only when every instance was de-identified)
        and the files ingested after it (a file the archive then refuses is kept in
        DATA/anonymize-kept/ and named in the failures)."""
        instances = found if found is not None else await self.select(request, into_zip=zip_path is not None)
        originals = sorted({i.study_instance_uid for i in instances})
        patients = {} if request.keep_original else await self.archive.audit.before_removal(originals)
        result = AnonymizeResult()
        in_place = "retain-uids" in request.options
        files: list[tuple[str, Path]] = []  # (original SOP Instance UID, de-identified file), in order
        try:
            files = await self._deidentify_all(request, instances, result)
            by_uid = {i.sop_instance_uid: i for i in instances}
            for uid, _ in files:
                study, series = self._new_parents(by_uid, uid, in_place)
                if study not in result.studies:
                    result.studies.append(study)
                if series not in result.series:
                    result.series.append(series)
            if zip_path is not None:
                await self._into_zip(zip_path, by_uid, files, result, progress, in_place)
            else:
                await self._into_archive(request, files, result, progress)
        finally:
            for _, path in files:
                path.unlink(missing_ok=True)
        self._audit(request, originals, patients, result, who, "a ZIP" if zip_path is not None else "")
        log.info(
            "anonymized %s %s: %d instance(s), %d failed%s",
            request.level,
            request.id,
            result.instances,
            len(result.failures),
            "; original deleted" if result.original_deleted else "",
        )
        return result

    def _audit(
        self,
        request: AnonymizeRequest,
        studies: list[str],
        patients: dict[str, str],
        result: AnonymizeResult,
        who: Sequence[str],
        into: str,
    ) -> None:
        """One "anonymized" row (core/audit.py) per original study; ``who`` is (actor kind, actor, address)."""
        kind, actor, address = (list(who) + ["", "", ""])[:3] if who else (ActorKind.SYSTEM.value, "", "")
        options = ", ".join(sorted(request.options)) or "basic profile"
        detail = (
            f"{request.level} {request.id}: {result.instances} instance(s) de-identified ({options}) into "
            + (into or f"{len(result.studies)} new study(ies)")
            + (f", {len(result.failures)} failed" if result.failures else "")
            + ("; the original deleted" if result.original_deleted else "")
        )
        for study in studies:
            self.archive.audit.record(
                Action.ANONYMIZED,
                actor_kind=kind or ActorKind.SYSTEM.value,
                actor=actor,
                address=address,
                patient_id=request.id if request.level == "patient" else patients.get(study, ""),
                study_uid=study,
                detail=detail,
            )

    async def copies(
        self, instances: list[StoredInstance], options: frozenset[str]
    ) -> tuple[list[tuple[str, StoredInstance]], dict[str, str]]:
        """De-identified copies of ``instances`` as Part 10 files in the staging folder, to send on (a
        routing rule's ``anonymize``: anonymize, then forward); NOT stored in the archive. The mapping is
        stored as :meth:`run` stores it. Answers ((original SOP Instance UID, the copy), ...) and the
        failures (original UID -> why); the caller deletes the copies' files once they are sent."""
        check_options(options)
        result = AnonymizeResult()
        files = await self._deidentify_all(AnonymizeRequest("study", "", options), instances, result)
        by_uid = {i.sop_instance_uid: i for i in instances}
        in_place = "retain-uids" in options
        out: list[tuple[str, StoredInstance]] = []
        for uid, path in files:
            original = by_uid[uid]
            study, series = self._new_parents(by_uid, uid, in_place)
            copy = StoredInstance(
                original.sop_class_uid,
                uid if in_place else self.pseudonyms.uid(uid),
                result.syntaxes.get(uid, original.transfer_syntax_uid),
                path.name,
                _StagedCopies(path.parent),  # a copy in staging, never stored: read where it is
                -1,
                study,
                series,
            )
            out.append((uid, locate(copy)))
        return out, {f["uid"]: f["reason"] for f in result.failures}

    def _new_parents(self, instances: dict[str, StoredInstance], uid: str, in_place: bool) -> tuple[str, str]:
        instance = instances[uid]
        study, series = instance.study_instance_uid, instance.series_instance_uid
        return (study, series) if in_place else (self.pseudonyms.uid(study), self.pseudonyms.uid(series))

    async def _deidentify_all(
        self, request: AnonymizeRequest, instances: list[StoredInstance], result: AnonymizeResult
    ) -> list[tuple[str, Path]]:
        limit = asyncio.Semaphore(DEID_CONCURRENCY)
        done: dict[int, tuple[str, Path]] = {}
        mappings: list[Mapping] = []

        async def one(n: int, instance: StoredInstance) -> None:
            if instance.problem:
                result.failures.append({"uid": instance.sop_instance_uid, "reason": instance.problem})
                return
            mapping = Mapping()
            out = self.archive.staging_dir / f"{uuid.uuid4().hex}.anonymized"
            async with limit:
                try:
                    result.syntaxes[instance.sop_instance_uid] = await asyncio.to_thread(
                        _part10, instance, request.options, self.pseudonyms, mapping, out, self.pixel_regions
                    )
                except (PixelCleanError, OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
                    out.unlink(missing_ok=True)
                    result.failures.append({"uid": instance.sop_instance_uid, "reason": f"cannot de-identify: {exc}"})
                    return
            mappings.append(mapping)
            done[n] = (instance.sop_instance_uid, out)

        try:
            async with asyncio.TaskGroup() as group:
                for n, instance in enumerate(instances):
                    group.create_task(one(n, instance))
        except BaseException:
            for _, path in done.values():
                path.unlink(missing_ok=True)
            raise
        rows = {row for mapping in mappings for row in mapping.rows}
        result.patient = next((p for k, _, p in sorted(rows) if k == "patient_id"), "")
        now = dt.datetime.now(dt.UTC)
        await self.archive.write(lambda conn: anonymization_repo.insert_mappings(conn, rows, now))
        return [done[n] for n in sorted(done)]

    async def _into_zip(
        self,
        zip_path: Path,
        instances: dict[str, StoredInstance],
        files: list[tuple[str, Path]],
        result: AnonymizeResult,
        progress: Callable[[int, int], None] | None,
        in_place: bool,
    ) -> None:
        def write() -> None:
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive_zip:
                for uid, path in files:
                    study, series = self._new_parents(instances, uid, in_place)
                    archive_zip.write(path, f"{study}/{series}/{uuid.uuid4().hex[:16]}.dcm")

        await asyncio.to_thread(write)
        result.instances = len(files)
        if progress is not None:
            progress(result.instances, len(result.failures))

    async def _into_archive(
        self,
        request: AnonymizeRequest,
        files: list[tuple[str, Path]],
        result: AnonymizeResult,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        in_place = "retain-uids" in request.options
        delete = not request.keep_original and not result.failures and bool(files)
        if in_place and delete:
            await delete_resource(self.archive, request.level, request.id)
            result.original_deleted = True
        elif in_place:
            return  # nothing replaced: the original stays whole (the failures say why)
        origin = Origin(kind=ANONYMIZE)
        limit = asyncio.Semaphore(INGEST_CONCURRENCY)
        exhausted: list[OutOfResources] = []

        async def one(uid: str, path: Path) -> None:
            async with limit:
                if exhausted:
                    return
                try:
                    await self.archive.import_file(path, origin)
                except OutOfResources as exc:
                    exhausted.append(exc)
                    return
                except ArchiveError as exc:
                    reason = str(exc)
                    if in_place:
                        reason += f"; the anonymized file is kept as {await asyncio.to_thread(self._keep, path)}"
                    result.failures.append({"uid": uid, "reason": reason})
                    return
            result.instances += 1
            if progress is not None:
                progress(result.instances, len(result.failures))

        async with asyncio.TaskGroup() as group:
            for uid, path in files:
                group.create_task(one(uid, path))
        if exhausted:
            raise exhausted[0]
        if not in_place and delete and not result.failures:
            await delete_resource(self.archive, request.level, request.id)
            result.original_deleted = True

    def _keep(self, path: Path) -> Path:
        kept = self.archive.settings.data_dir / KEPT_DIR
        kept.mkdir(exist_ok=True)
        return path.rename(kept / path.name)


def anonymize_handler(anonymizer: Anonymizer) -> Callable[[JobContext], Any]:
    async def anonymize(job: JobContext) -> str:
        try:
            request = AnonymizeRequest.from_params(job.params)
            found = await anonymizer.select(request)
        except NotFound as exc:
            raise JobFailed(str(exc)) from None
        except (KeyError, TypeError, ArchiveError) as exc:
            raise JobFailed(f"the job's parameters cannot be used: {exc}") from None
        job.total, job.done, job.failed = len(found), 0, 0

        def count(done: int, failed: int) -> None:
            job.done, job.failed = done, failed
            job.message = f"anonymized {done} of {job.total} instance(s)"

        who = job.details.get("actor") or [ActorKind.SYSTEM.value, f"job {job.id}", ""]
        result = await anonymizer.run(request, progress=count, found=found, who=who)
        job.done, job.failed = result.instances, len(result.failures)
        job.details["result"] = result.to_json(request.level)
        said = f"anonymized {result.instances} of {job.total} instance(s) into {len(result.studies)} new study(ies)"
        if result.failures and not result.instances:
            raise JobFailed(said + "; every one failed (see details)")
        return said + (f"; {len(result.failures)} failed (see details)" if result.failures else "")

    return anonymize


#: What a job record shows in place of a value that links an original to its pseudonyms.
ADMINS_ONLY: Final = "(shown to admins only)"


def job_record_for(record: dict[str, Any], admin: bool) -> dict[str, Any]:
    """An "anonymize" job's record (``Job.to_dict``) as a user without the admin role may see it: the
    original ID it was asked for, the new UIDs and pseudonym it made and its error text (which can
    name original UIDs) are hidden, counts kept. The mapping of originals to pseudonyms is admin-only
    (``GET /api/anonymization/mappings``); a job record readable with the read permission must not
    give it away. Other kinds, and every record for an admin, unchanged."""
    if admin or record.get("kind") != ANONYMIZE:
        return record
    out = dict(record)
    params = dict(out.get("params") or {})
    if "id" in params:
        params["id"] = ADMINS_ONLY
    out["params"] = params
    out["description"] = f"anonymize {params.get('level', '')} {ADMINS_ONLY}".replace("  ", " ")
    if out.get("last_error"):
        out["last_error"] = ADMINS_ONLY
    result = out.get("result")
    if isinstance(result, dict):
        out["result"] = {
            key: (len(value) if isinstance(value, list) else value)
            for key, value in result.items()
            if key not in ("patient", "study", "series_uid")
        }
    return out


def register_anonymize_job(queue: JobQueue, anonymizer: Anonymizer) -> None:
    """The "anonymize" kind; resumed after a restart (running again stores nothing twice)."""
    queue.register(ANONYMIZE, anonymize_handler(anonymizer), on_restart="resume")


__all__ = [
    "ADMINS_ONLY",
    "ANONYMIZE",
    "AnonymizeRequest",
    "AnonymizeResult",
    "Anonymizer",
    "KEY_FILE",
    "LEVELS",
    "load_key",
    "job_record_for",
    "register_anonymize_job",
]
