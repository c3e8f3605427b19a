"""python-gdcm loaded at its first use, not when pydicom is imported: ~19 MiB less resident memory.

pydicom 3 registers its pixel data plugins as it is imported, and the GDCM ones import ``gdcm``
right away to read its version (``pydicom.pixels.decoders.gdcm``, ``...encoders.gdcm``) and to
look at ``gdcm.DataElement`` (the legacy ``pydicom.pixel_data_handlers.gdcm_handler``). Loading
GDCM's SWIG extension costs the process ~19 MiB (measured: bench/RESULTS.md "Resting memory"),
though most servers never decode a JPEG or JPEG-LS frame, or do so long after start.

:func:`install` (called by ``minipacs/__init__.py`` before pydicom is first imported) puts a
stand-in module under the name ``gdcm``. While pydicom is being imported it answers the two
questions pydicom asks at import (``Version.GetVersion()``, from the installed distribution's
metadata, and whether ``DataElement`` has ``SetByteStringValue``) without loading anything. Any
other attribute, or any attribute at all once :func:`release` has run, imports the real
``gdcm``, which then replaces the stand-in in ``sys.modules``; pydicom's modules keep the
stand-in and every attribute they read goes through to the real module.

Nothing is installed when python-gdcm is not installed, or when pydicom was imported before
minipacs (then GDCM is loaded the usual way).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import threading
import types
from typing import Any, Final

NAME: Final = "gdcm"
DISTRIBUTION: Final = "python-gdcm"
_LOCK: Final = threading.Lock()


class _ImportTimeVersion:
    """What pydicom's plugins read at import: ``gdcm.Version.GetVersion()``."""

    def __init__(self, version: str) -> None:
        self._version = version

    def GetVersion(self) -> str:
        return self._version


class _ImportTimeDataElement:
    """What pydicom's legacy handler checks at import: in-memory support (GDCM >= 2.8.8)."""

    SetByteStringValue = None


class DeferredGDCM(types.ModuleType):
    """Stands for ``gdcm`` until an attribute is needed (see the module's docstring)."""

    def __init__(self, version: str) -> None:
        super().__init__(NAME, "python-gdcm, imported at its first use (minipacs.lazy_gdcm)")
        self._minipacs_version = version
        self._minipacs_importing = True  # pydicom is being imported: the stand-in answers
        self._minipacs_real: types.ModuleType | None = None

    def __getattr__(self, name: str) -> Any:  # only for attributes the stand-in does not have
        if name.startswith("_minipacs_") or name == "__path__":  # gdcm is one file, not a package:
            raise AttributeError(name)  # the import system asks for __path__ at "from gdcm import X"
        if self._minipacs_importing and self._minipacs_real is None:
            if name == "Version":
                return _ImportTimeVersion(self._minipacs_version)
            if name == "DataElement":
                return _ImportTimeDataElement
        return getattr(self._minipacs_load(), name)

    def _minipacs_load(self) -> types.ModuleType:
        real = self._minipacs_real
        if real is not None:
            return real
        with _LOCK:
            if self._minipacs_real is None:
                if sys.modules.get(NAME) is self:
                    del sys.modules[NAME]
                try:
                    self._minipacs_real = importlib.import_module(NAME)
                except BaseException:
                    sys.modules.setdefault(NAME, self)
                    raise
            return self._minipacs_real


def install() -> DeferredGDCM | None:
    """Put the stand-in in place, unless GDCM is missing or already imported, or pydicom is."""
    if NAME in sys.modules or "pydicom" in sys.modules:
        return None
    if importlib.util.find_spec(NAME) is None:
        return None
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    stand_in = DeferredGDCM(version)
    sys.modules[NAME] = stand_in
    return stand_in


def release(stand_in: DeferredGDCM | None) -> None:
    """pydicom is imported: from now on every attribute of the stand-in is the real module's."""
    if stand_in is not None:
        stand_in._minipacs_importing = False


def loaded() -> bool:
    """Whether GDCM's extension is loaded in this process."""
    return "_gdcm" in sys.modules


__all__ = ["DISTRIBUTION", "NAME", "DeferredGDCM", "install", "loaded", "release"]
