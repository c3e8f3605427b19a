"""The DICOMDIR file of a File-set (PS3.10 §7.3, §8; PS3.3 Annex F), written in one pass.

pydicom's ``FileSet`` does this too, but adds instances in quadratic time and writes a staged copy
of each one (about 40 ms per instance at 1,000 instances); here the records are built from the
file headers with pydicom's own record definitions (``pydicom.fileset.DIRECTORY_RECORDERS``,
PS3.3 F.5 keys per record type) and encoded once to learn their sizes, then again with the offsets.

Layout (PS3.3 F.3.2.2): one Directory Record Sequence of explicit-length items in tree order
(each PATIENT, then its STUDYs, each followed by its SERIES, each followed by its leaf records);
(0004,1400) Offset of the Next Directory Record links siblings, (0004,1420) Offset of Referenced
Lower-Level Directory Entity points to the first child; offsets count bytes from the start of
the file (preamble included); 0 means none. Explicit VR Little Endian (PS3.10 §8.2).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from pydicom import fileset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from minipacs import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_ITEM: Final = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
_SEQUENCE_HEAD: Final = b"\x04\x00\x20\x12SQ\x00\x00"  # (0004,1220) SQ, reserved; then a 4-byte length
IN_USE: Final = 0xFFFF  # (0004,1410) Record In-use Flag: in use


@dataclass
class _Node:
    record: Dataset
    children: list[_Node] = field(default_factory=list)
    index: dict[str, _Node] = field(default_factory=dict)  # child key -> child

    def child(self, key: str, make: Dataset) -> _Node:
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = _Node(make)
            self.children.append(found)
        return found


def leaf_record_type(ds: Dataset) -> str:
    """PS3.3 F.5: the record type of an instance below a SERIES record (IMAGE, SR DOCUMENT, PRESENTATION...)."""
    return str(fileset._four_level_record_type(ds))  # pydicom's table of SOP Classes -> record types


def _record(kind: str, ds: Dataset) -> Dataset:
    """A record of type ``kind`` with PS3.3 F.5 keys from ``ds``; ValueError (pydicom's) if a Type 1 key is missing."""
    record = fileset.DIRECTORY_RECORDERS[kind](ds)
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = IN_USE
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    return record


class Directory:
    """The records of a File-set, added instance by instance."""

    def __init__(self) -> None:
        self.root = _Node(Dataset())
        self.count = 0

    def add(self, ds: Dataset, file_id: Sequence[str]) -> None:
        """Add the instance whose header is ``ds``, stored at ``file_id`` (components, PS3.10 §8.5).
        ValueError: a Type 1 key of a record is missing, or no record type fits (nothing is added then)."""
        leaf = _record(leaf_record_type(ds), ds)
        leaf.ReferencedFileID = list(file_id)
        leaf.ReferencedSOPClassUIDInFile = ds.SOPClassUID
        leaf.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
        leaf.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
        patient_key = f"{ds.get('PatientID', '')}\x00{ds.get('PatientName', '')}"
        patient = _record("PATIENT", ds)
        study = _record("STUDY", ds)
        series = _record("SERIES", ds)
        node = self.root.child(patient_key, patient)
        node = node.child(str(ds.StudyInstanceUID), study)
        node = node.child(str(ds.SeriesInstanceUID), series)
        node.children.append(_Node(leaf))
        self.count += 1

    def encode(self, file_set_id: str, descriptor: str = "", descriptor_charset: str = "ISO_IR 100") -> bytes:
        """The DICOMDIR file's bytes."""
        head = DicomBytesIO()
        head.is_little_endian, head.is_implicit_VR = True, False
        head.write(b"\x00" * 128 + b"DICM")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        write_file_meta_info(head, meta, enforce_standard=True)
        top = Dataset()
        top.FileSetID = file_set_id
        if descriptor:
            top.FileSetDescriptorFileID = descriptor
            top.SpecificCharacterSetOfFileSetDescriptorFile = descriptor_charset
        top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        top.FileSetConsistencyFlag = 0
        # the top elements have a fixed size whatever the offsets: encode once to know where records start
        start = len(head.getvalue()) + len(_encode(top)) + len(_SEQUENCE_HEAD) + 4
        ordered = list(_walk(self.root))
        sizes = [8 + len(_encode(node.record)) for node in ordered]  # item tag + length + record
        where: dict[int, int] = {}
        offset = start
        for node, size in zip(ordered, sizes, strict=True):
            where[id(node)] = offset
            offset += size
        for parent in [self.root, *ordered]:
            for n, child in enumerate(parent.children):
                nxt = parent.children[n + 1] if n + 1 < len(parent.children) else None
                child.record.OffsetOfTheNextDirectoryRecord = where[id(nxt)] if nxt is not None else 0
                first = child.children[0] if child.children else None
                child.record.OffsetOfReferencedLowerLevelDirectoryEntity = where[id(first)] if first else 0
        if self.root.children:
            top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = where[id(self.root.children[0])]
            top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = where[id(self.root.children[-1])]
        items = b"".join(_ITEM + struct.pack("<I", len(body)) + body for body in (_encode(n.record) for n in ordered))
        return head.getvalue() + _encode(top) + _SEQUENCE_HEAD + struct.pack("<I", len(items)) + items


def _walk(node: _Node) -> list[_Node]:
    """Every node below ``node`` in tree order (PS3.3 F.3.2.2: a record, then the records below it)."""
    out: list[_Node] = []
    stack = list(reversed(node.children))
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(reversed(current.children))
    return out


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


__all__ = ["IN_USE", "Directory", "leaf_record_type"]
