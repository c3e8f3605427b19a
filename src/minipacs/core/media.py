"""Export: DICOM media (a PS3.10 File-set with a DICOMDIR) and readable folder names for ZIPs.

PS3.10 §8 (File-set, DICOMDIR) and PS3.11 Annex D, General Purpose CD-R and USB
interchange (STD-GEN-CD, STD-GEN-USB): every File ID component is at most 8 characters
of upper-case A-Z, 0-9 and ``_`` (PS3.10 §8.5), at most 8 components deep. Layout:
``DICOM/P0000001/S0000001/SE000001/I0000001``; the DICOMDIR (core/dicomdir.py) has one PATIENT,
STUDY and SERIES record per level and a leaf record per instance (IMAGE, SR DOCUMENT,
PRESENTATION..., the keys of PS3.3 Annex F.5); a ``README`` in the root is the File-set
Descriptor File (PS3.10 §8.6, (0004,1141)).

The stored files go on the media as they are when their transfer syntax is one a PS3.11
General Purpose profile allows (Explicit VR Little Endian, STD-GEN-CD/USB; a compressed one, the
STD-GEN-*-JPEG/J2K profiles); only each file's header is read, so a 1,000-instance study costs
one header read per file, not a copy. A file stored in a syntax that NO such profile allows
(Implicit VR Little Endian, Explicit VR Big Endian, Deflated) is re-encoded, losslessly, into
Explicit VR Little Endian as it is written (:data:`MEDIA_SYNTAX`), and its record says so.
A directory record needs a few Type 1 keys
(Study Date, Study Time, Study ID, Series Number, Instance Number, Patient ID) that
some files lack: the record then carries a stand-in (see ``_STAND_INS``), the file is
left as it is. An instance that still cannot be recorded (a Type 1 key of its leaf record
type missing, e.g. an SR without Completion Flag) is left off the media, and the README names it.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from minipacs.core.archive import Archive
from minipacs.core.dicomdir import Directory
from minipacs.core.errors import ArchiveError
from minipacs.core.retrieve import StoredInstance
from minipacs.core.transcode import transcode_part10
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, transfer_syntax
from minipacs.index.media_repo import SeriesLabel, series_labels

log = logging.getLogger(__name__)

#: PS3.3 Table F.5-x: Type 1 keys of the PATIENT, STUDY, SERIES and IMAGE records, and the
#: value a record carries when the file has none (the file itself is not changed).
_STAND_INS: Final[Mapping[str, str | int]] = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": 1,
    "InstanceNumber": 1,
}

#: PS3.11 Annex D (STD-GEN-CD, STD-GEN-USB...): the one native transfer syntax on General Purpose media.
MEDIA_SYNTAX: Final = EXPLICIT_VR_LITTLE_ENDIAN

#: PS3.10 §8.6: the File-set ID (CS, at most 16 characters) and the descriptor file's ID.
FILE_SET_ID: Final = "MINIPACS"
README: Final = "README"

#: Longest folder name component in a ZIP (characters), before " (2)" for a collision.
NAME_MAX: Final = 64

# file-system trouble: path separators, Windows-reserved characters, control characters
_UNSAFE: Final = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_SPACES: Final = re.compile(r"\s+")


class MediaError(ArchiveError):
    """The media could not be made (nothing to export, or no record could be built)."""


def safe_name(text: str, fallback: str, limit: int = NAME_MAX) -> str:
    """``text`` as one file-system path component: no separators, control characters or reserved
    characters, no leading or trailing dots and spaces (so never ``.`` or ``..``), at most
    ``limit`` characters; ``fallback`` when nothing is left."""
    cleaned = unicodedata.normalize("NFC", text)
    cleaned = _SPACES.sub(" ", _UNSAFE.sub("_", cleaned)).strip(" .")
    cleaned = cleaned[:limit].strip(" .")
    return cleaned or fallback


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``...: the first not in ``taken`` (compared case-blind)."""
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{name} ({n})"
    taken.add(candidate.casefold())
    return candidate


def _person(name: str) -> str:
    """A DICOM PN (``Family^Given^^^``) as people write it: ``Family Given``."""
    first = name.split("=")[0]
    return " ".join(part for part in first.split("^") if part)


def readable_names(instances: Sequence[StoredInstance], labels: Mapping[str, SeriesLabel]) -> list[str]:
    """A ZIP member name per instance: ``Patient (ID)/date description/number description/0001.dcm``.

    Each level's folder is unique among its siblings (`` (2)`` appended on a collision), so
    two studies with the same date and description never mix their files."""
    folders: dict[tuple[str, ...], str] = {}  # (level key...) -> folder name
    taken: dict[tuple[str, ...], set[str]] = {}  # parent key -> names used under it
    counts: dict[str, int] = {}
    out: list[str] = []

    def folder(parent: tuple[str, ...], key: str, wanted: str) -> tuple[tuple[str, ...], str]:
        path = (*parent, key)
        if path not in folders:
            folders[path] = _unique(wanted, taken.setdefault(parent, set()))
        return path, folders[path]

    for item in instances:
        label = labels.get(item.series_instance_uid)
        if label is None:
            patient_text, patient_key = "Unknown patient", ""
            study_text = item.study_instance_uid
            series_text = item.series_instance_uid
        else:
            person = _person(label.patient_name)
            patient_text = f"{person} ({label.patient_id})" if person and label.patient_id else person
            patient_text = patient_text or label.patient_id or "Unknown patient"
            patient_key = f"{label.patient_id}\x00{label.patient_name}"
            study_text = " ".join(v for v in (label.study_date, label.study_description) if v)
            number = "" if label.series_number is None else str(label.series_number)
            series_text = " ".join(v for v in (number, label.series_description or label.modality) if v)
        p_path, p_name = folder((), patient_key, safe_name(patient_text, "Patient"))
        s_path, s_name = folder(p_path, item.study_instance_uid, safe_name(study_text, "Study"))
        _, e_name = folder(s_path, item.series_instance_uid, safe_name(series_text, "Series"))
        counts[item.series_instance_uid] = counts.get(item.series_instance_uid, 0) + 1
        out.append(f"{p_name}/{s_name}/{e_name}/{counts[item.series_instance_uid]:04d}.dcm")
    return out


@dataclass
class Media:
    """A File-set ready to write: the DICOMDIR's bytes, the README's, and each stored file with its File ID."""

    dicomdir: bytes
    readme: bytes
    files: list[tuple[str, Callable[[], BinaryIO]]] = field(default_factory=list)  # (File ID with "/", opener)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, why)

    def entries(self) -> list[tuple[str, Callable[[], BinaryIO] | bytes]]:
        """(path on the media, content): DICOMDIR, README, then the files in study/series/instance order."""
        return [("DICOMDIR", self.dicomdir), (README, self.readme), *self.files]


def _header(item: StoredInstance) -> Dataset:
    with item.open() as fh:
        ds = dcmread(fh, stop_before_pixels=True)
    for keyword, value in _STAND_INS.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)
    return ds


def _needs_reencoding(syntax: str) -> bool:
    """A native or deflated syntax other than :data:`MEDIA_SYNTAX`: no General Purpose profile allows it
    (PS3.11 D.3.3 / the STD-GEN-*-JPEG/J2K profiles list only compressed syntaxes besides it)."""
    known = transfer_syntax(syntax)
    return syntax != MEDIA_SYNTAX and (known is None or not known.encapsulated)


def _reencoded(item: StoredInstance) -> Callable[[], BinaryIO]:
    """An opener of ``item`` re-encoded in :data:`MEDIA_SYNTAX` (done when the file is written)."""

    def opener() -> BinaryIO:
        with item.local_file() as path:
            return io.BytesIO(transcode_part10(path, MEDIA_SYNTAX))

    return opener


def _readme(media: Media, count: int, what: str) -> bytes:
    lines = [
        "DICOM media made by minipacs",
        "",
        f"{what}: {count} instance(s).",
        "Open the DICOMDIR file with a DICOM viewer; the folders and files below it are",
        "named as PS3.10 and PS3.11 (General Purpose interchange) require: 8 characters, upper case.",
    ]
    if media.left_out:
        lines += ["", "Left out (no DICOMDIR record type for their SOP Class or a header that cannot be read):"]
        lines += [f"  {uid}: {why}" for uid, why in media.left_out]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1", "replace")


class _FileIds:
    """File IDs ``DICOM/P0000001/S0000001/SE000001/I0000001`` (PS3.10 §8.5: 1-8 characters of A-Z 0-9 _;
    5 components), numbered per level in the order instances come."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, ...], int] = {}
        self._children: dict[tuple[str, ...], int] = {}

    def _number(self, path: tuple[str, ...]) -> int:
        if path not in self._numbers:
            parent = path[:-1]
            self._children[parent] = self._children.get(parent, 0) + 1
            self._numbers[path] = self._children[parent]
        return self._numbers[path]

    def next(self, ds: Dataset) -> list[str]:
        patient = (f"{ds.get('PatientID', '')}\x00{ds.get('PatientName', '')}",)
        study = (*patient, str(ds.StudyInstanceUID))
        series = (*study, str(ds.SeriesInstanceUID))
        image = (*series, str(ds.SOPInstanceUID))
        return [
            "DICOM",
            f"P{self._number(patient):07d}",
            f"S{self._number(study):07d}",
            f"SE{self._number(series):06d}",
            f"I{self._number(image):07d}",
        ]


def build_media(instances: Iterable[StoredInstance], what: str = "Export") -> Media:
    """The DICOMDIR (PS3.10 §7.3, §8; core/dicomdir.py) of ``instances`` and where each file goes
    (blocking: run it in a thread). MediaError when no instance could be recorded."""
    items = [item for item in instances if not item.problem]
    directory = Directory()
    ids = _FileIds()
    files: list[tuple[str, Callable[[], BinaryIO]]] = []
    left_out: list[tuple[str, str]] = []
    for item in items:
        try:
            ds = _header(item)
            opener = item.open
            if _needs_reencoding(str(ds.file_meta.get("TransferSyntaxUID", ""))):
                ds.file_meta.TransferSyntaxUID = UID(MEDIA_SYNTAX)  # what the record says the file is in
                opener = _reencoded(item)
            file_id = ids.next(ds)
            directory.add(ds, file_id)
        except (ValueError, KeyError, AttributeError, OSError) as exc:  # no record type, a key missing, unreadable
            left_out.append((item.sop_instance_uid, str(exc)[:200]))
            log.warning("media: SOP Instance %s left out: %s", item.sop_instance_uid, exc)
            continue
        files.append(("/".join(file_id), opener))
    if not files:
        raise MediaError(
            f"none of the {len(items)} instance(s) can be put on DICOM media"
            + (f": {left_out[0][1]}" if left_out else "; nothing is stored there")
        )
    media = Media(directory.encode(FILE_SET_ID, README), b"", files, left_out)
    media.readme = _readme(media, len(files), what)
    return media


def write_media(media: Media, out: Path) -> int:
    """Write ``media`` into the folder ``out`` (created; must be empty if it exists); the file count."""
    if out.exists() and any(out.iterdir()):
        raise MediaError(f"{out} is not empty; DICOM media goes into an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in media.entries():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            with content() as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return len(media.files)


async def series_labels_of(archive: Archive, instances: Sequence[StoredInstance]) -> dict[str, SeriesLabel]:
    """The folder-name tags (index/media_repo.py) of every series among ``instances``."""
    uids = sorted({item.series_instance_uid for item in instances})
    return await archive.read(lambda conn: series_labels(conn, uids))


__all__ = [
    "FILE_SET_ID",
    "NAME_MAX",
    "README",
    "Media",
    "MediaError",
    "build_media",
    "readable_names",
    "safe_name",
    "series_labels_of",
    "write_media",
]
