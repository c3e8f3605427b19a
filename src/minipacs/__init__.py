"""minipacs: a mini-PACS with its own asyncio DICOM wire."""

from minipacs import lazy_gdcm as _lazy_gdcm

# pydicom imported here, with python-gdcm standing by until a frame needs it (lazy_gdcm.py)
_stand_in = _lazy_gdcm.install()
try:
    import pydicom as _pydicom  # noqa: F401
finally:
    _lazy_gdcm.release(_stand_in)

__version__ = "0.1.0"

#: Our Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived 2.25 root.
IMPLEMENTATION_CLASS_UID = "2.25.269899350558220646675026437247725323385"
#: Our Implementation Version Name (PS3.7 D.3.3.2.3), at most 16 characters.
IMPLEMENTATION_VERSION_NAME = "MINIPACS_010"

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "__version__"]
