"""Rendered images (PS3.18 §8.3.5.1.3 / §10.4.1.1.3): pixel data -> JPEG or PNG with windowing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from PIL import Image

from minipacs.core import decoders
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits
from minipacs.core.stored import quiet_pydicom, read_stored
from minipacs.web.errors import HttpError

FORMATS: Final = {"image/jpeg": "JPEG", "image/png": "PNG"}
THUMBNAIL_SIZE: Final = 128


def _window(ds: Any, frame: Any, window: tuple[float, float] | None) -> Any:
    # One float32 working copy, changed in place: a 4096x4096 frame costs 64 MiB here, not the
    # ~5 float64 temporaries (128 MiB each) that whole-array expressions would allocate.
    data = frame.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1:
        data *= slope
    if intercept:
        data += intercept
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
        width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        window = (float(center), float(width))
    if window is None:
        low, high = float(data.min()), float(data.max())
    else:
        low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
    data -= low
    data *= 255 / max(high - low, 1e-6)
    np.clip(data, 0, 255, out=data)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        np.subtract(255, data, out=data)
    return data.astype(np.uint8)


def render(
    path: Path,
    frame_number: int,
    mime: str,
    window: tuple[float, float] | None,
    thumbnail: bool,
    limits: DatasetLimits = DEFAULT_LIMITS,
) -> bytes:
    """One frame (1-based) of a stored instance as an image (the file read within ``limits``)."""
    decoders.register()  # the decoders transcoding uses (12-bit JPEG Extended; no GDCM for JPEG 2000)
    try:
        ds = read_stored(path, limits)
        if "PixelData" not in ds:
            raise HttpError(406, "no_pixels", "this instance has no pixel data to render")
        with quiet_pydicom():  # each decoder that fails logs a traceback; the 406 says what matters
            pixels = ds.pixel_array
    except HttpError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "cannot render"
        raise HttpError(406, "cannot_render", f"the pixel data cannot be decoded for rendering: {exc}") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if not 1 <= frame_number <= frames:
        raise HttpError(404, "no_such_frame", f"frame {frame_number} does not exist; the instance has {frames}")
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frame = pixels[frame_number - 1] if frames > 1 else pixels
    if samples == 1:
        image = Image.fromarray(_window(ds, frame, window), mode="L")
    else:
        image = Image.fromarray(frame.astype(np.uint8)).convert("RGB")
    if thumbnail:
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    image.save(out, format=FORMATS[mime])
    return out.getvalue()


def parse_window(raw: str | None) -> tuple[float, float] | None:
    """``window=center,width[,function]`` (PS3.18 §8.3.5.1.4); HttpError 400 when malformed."""
    if not raw:
        return None
    fields = raw.split(",")
    try:
        center, width = float(fields[0]), float(fields[1])
    except (ValueError, IndexError):
        raise HttpError(400, "invalid_window", f"window must be 'center,width[,function]', not {raw[:40]!r}") from None
    if width <= 0 or not all(np.isfinite((center, width))):
        raise HttpError(400, "invalid_window", "the window width must be positive and both numbers finite")
    return center, width


def choose_format(accept: str) -> str:
    for mime in FORMATS:
        if mime in accept:
            return mime
    if accept and "*/*" not in accept and "image/*" not in accept:
        raise HttpError(406, "not_acceptable", "rendered images are available as image/jpeg or image/png")
    return "image/jpeg"


__all__ = ["FORMATS", "choose_format", "parse_window", "render"]
