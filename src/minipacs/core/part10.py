"""Moved to dicom/part10.py; re-exported until the callers are updated."""

from __future__ import annotations

from minipacs.dicom.part10 import NotPart10, Part10File, read_part10

__all__ = ["NotPart10", "Part10File", "read_part10"]
