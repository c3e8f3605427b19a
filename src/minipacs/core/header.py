"""The archive's adapter of the header reader (dicom/header.py).

``read_header`` lives here: the reader in dicom/ raises
MalformedDataset (a ValueError: dicom/ knows nothing of the archive), which the
archive refuses as InvalidInstance.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from minipacs.core.errors import InvalidInstance
from minipacs.dicom import header as _header
from minipacs.dicom.header import InstanceHeader, MalformedDataset


def read_header(path: Path, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """dicom.header.read_header; raises InvalidInstance (with the reader's sentence) when malformed."""
    try:
        return _header.read_header(path, dataset_offset, transfer_syntax_uid)
    except MalformedDataset as exc:
        raise InvalidInstance(str(exc)) from exc


def read_header_from(fp: BinaryIO, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """dicom.header.read_header_from (a file object, e.g. the first bytes of an upload); InvalidInstance when
    malformed, which for a file object holding only the start of a dataset may mean "read past its end"."""
    try:
        return _header.read_header_from(fp, dataset_offset, transfer_syntax_uid)
    except MalformedDataset as exc:
        raise InvalidInstance(str(exc)) from exc


def read_header_bytes(data: bytes, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """dicom.header.read_header_bytes (a whole file in memory); InvalidInstance when malformed."""
    try:
        return _header.read_header_bytes(data, dataset_offset, transfer_syntax_uid)
    except MalformedDataset as exc:
        raise InvalidInstance(str(exc)) from exc


__all__ = ["read_header", "read_header_bytes", "read_header_from"]
