"""Moved to dicom/uids_generated.py; re-exported until the callers are updated."""

from __future__ import annotations

from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

__all__ = ["STORAGE_SOP_CLASSES", "TRANSFER_SYNTAXES"]
