"""The pixel data decoders transcoding relies on, and the one GDCM path pydicom's plugins lack.

pydicom 3 decompresses encapsulated Pixel Data (PS3.5 A.4) through decoder plugins, trying
the available ones per transfer syntax in order. minipacs depends on permissively licensed
ones only (tests/test_licences.py checks the whole dependency closure):

- ``python-gdcm`` (Apache-2.0; GDCM itself BSD-3-Clause, with IJG libjpeg 8/12/16-bit,
  CharLS and OpenJPEG inside): JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000;
- ``pylibjpeg`` + ``pylibjpeg-openjpeg`` (MIT; OpenJPEG BSD-2-Clause): JPEG 2000 and HTJ2K;
- ``pyjpegls`` (MIT; CharLS BSD-3-Clause): JPEG-LS cases GDCM refuses (e.g. 6/7-bit samples);
- pydicom's own RLE Lossless decoder (PS3.5 G) and zlib for Deflate (PS3.5 A.5).

The GPL-3.0 ``pylibjpeg-libjpeg`` is deliberately not used. GDCM is taken out of the JPEG 2000
decoders (:data:`REMOVED`): on some corrupt codestreams it aborts the whole process instead of
raising, so one bad stored file would take the server down. pydicom's GDCM plugin refuses
JPEG Extended (Process 2 & 4, 1.2.840.10008.1.2.4.51, PS3.5 A.4.1 / 8.2.1) with 12-bit
samples, although GDCM decodes them with its 12-bit libjpeg build (as DCMTK's dcmdjpeg
does); :func:`decode_frame` is a plugin that does so, registered by :func:`register`.
It follows pydicom's decoder plugin interface (``is_available``, ``DECODER_DEPENDENCIES``
and a ``(src, runner) -> bytes`` frame decoder).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Final

from pydicom import uid as pydicom_uid

PLUGIN: Final = "minipacs-gdcm"
JPEG_EXTENDED: Final = str(pydicom_uid.JPEGExtended12Bit)  # JPEG Extended (Process 2 & 4)
# pydicom's plugins taken out, per transfer syntax (PS3.5 Table A-1, pydicom's names): label -> why
REMOVED: Final[Mapping[str, Mapping[str, str]]] = {
    str(pydicom_uid.JPEG2000Lossless): {"gdcm": "aborts the process on some corrupt JPEG 2000 codestreams"},
    str(pydicom_uid.JPEG2000): {"gdcm": "aborts the process on some corrupt JPEG 2000 codestreams"},
}
_GDCM_LAST: Final = (
    ("pydicom.pixels.decoders.gdcm", "_decode_frame"),
    "pydicom 3.0.2 cannot sign-correct GDCM's read-only output: signed JPEG-LS fails with "
    "'output array is read-only' (compressed instances of CT, issue 13), where pyjpegls decodes it",
)
# pydicom's plugins tried last, per transfer syntax: label -> (its import path, why)
LAST: Final[Mapping[str, Mapping[str, tuple[tuple[str, str], str]]]] = {
    str(pydicom_uid.JPEGLSLossless): {"gdcm": _GDCM_LAST},
    str(pydicom_uid.JPEGLSNearLossless): {"gdcm": _GDCM_LAST},
}
DECODER_DEPENDENCIES: Final[dict[str, tuple[str, ...]]] = {JPEG_EXTENDED: ("python-gdcm>=3.0.10",)}
_LOCK: Final = threading.Lock()  # pydicom's add_plugin is not thread-safe; decoding runs in worker threads


def is_available(uid: str) -> bool:
    """Whether :func:`decode_frame` can decode transfer syntax ``uid`` here (GDCM importable)."""
    if uid not in DECODER_DEPENDENCIES:
        return False
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One JPEG Extended frame ``src`` (8 or 12-bit, one sample per pixel) decoded by GDCM.

    ``runner`` is pydicom's DecodeRunner with the image's attributes. Colour images are left
    to pydicom's other plugins (NotImplementedError), corrupt bitstreams raise ValueError.
    """
    import gdcm

    if runner.samples_per_pixel != 1:
        raise NotImplementedError(
            f"the {PLUGIN} plugin decodes only one sample per pixel, not {runner.samples_per_pixel}"
        )
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits = int(runner.bits_stored)
    image.SetPixelFormat(
        gdcm.PixelFormat(1, int(runner.bits_allocated), bits, bits - 1, int(runner.pixel_representation))
    )
    decoded = image.GetBuffer()  # GDCM hands bytes out as a surrogate-escaped str, None on failure
    if decoded is None:
        raise ValueError("GDCM could not decode the JPEG Extended bitstream")
    frame = decoded.encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * (int(runner.bits_allocated) // 8)
    if len(frame) != expected:
        raise ValueError(
            f"GDCM decoded {len(frame)} bytes, but a frame of {runner.rows}x{runner.columns} "
            f"at {runner.bits_allocated} bits allocated has {expected}"
        )
    return bytes(frame)


def register() -> None:
    """Set pydicom's decoders up as described above (process-wide); idempotent.

    Adds :func:`decode_frame` to the JPEG Extended decoder, after pydicom's own plugins, takes
    the :data:`REMOVED` plugins out and moves the :data:`LAST` ones to the end of the order.
    """
    from pydicom.pixels.decoders.base import get_decoder

    with _LOCK:
        extended = get_decoder(JPEG_EXTENDED)
        try:
            extended.add_plugin(PLUGIN, (__name__, "decode_frame"))
        except ValueError as exc:
            if f"plugin named '{PLUGIN}'" not in str(exc):  # anything but "registered already"
                raise
        for uid, plugins in REMOVED.items():
            decoder = get_decoder(uid)
            for label in plugins:
                if label in decoder.available_plugins:
                    decoder.remove_plugin(label)
        for uid, last in LAST.items():
            decoder = get_decoder(uid)
            order = list(getattr(decoder, "_available", {}))  # pydicom tries them in this order
            for label, (path, _) in last.items():
                if label in order and order[-1] != label:  # once: a decode in another thread may iterate it
                    decoder.remove_plugin(label)
                    decoder.add_plugin(label, path)
                    order = list(getattr(decoder, "_available", {}))


__all__ = ["DECODER_DEPENDENCIES", "LAST", "PLUGIN", "REMOVED", "decode_frame", "is_available", "register"]
