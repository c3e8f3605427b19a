"""Errors the index raises. The index imports nothing from the core: the core turns these
into its own ``ArchiveError`` subclasses where a person or a peer reads them."""

from __future__ import annotations


class InvalidMatchValue(ValueError):
    """A key value no matching can be made of (PS3.4 C.2.2.2): a bad range, a value far too
    long, a binary key. The message says which key and why; core/identifier.py re-raises it
    as ``InvalidKeyValue``."""


__all__ = ["InvalidMatchValue"]
