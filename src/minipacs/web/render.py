"""Rendered images (PS3.18 §8.3.5, §10.4.1.1.3, WADO-URI §9): pixel data -> JPEG or PNG.

The query parameters of PS3.18 Table 8.3.5-1 become one :class:`RenderOptions`: the media type
(Accept header or ``accept`` parameter, §8.3.3.1), ``window=center,width,function`` (§8.3.5.1.4,
the VOI LUT functions of PS3.3 C.11.2.1.2), ``viewport=vw,vh[,sx,sy,sw,sh]`` (§8.3.5.1.3: crop,
flip, then scale to fit without distortion) and ``quality`` (§8.3.5.1.2, JPEG only). A malformed
value is a 400, as those sections require.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from PIL import Image

from minipacs.core import decoders
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits
from minipacs.core.stored import quiet_pydicom, read_stored
from minipacs.web.accept import parse_accept
from minipacs.web.errors import HttpError

#: PS3.18 Table 8.7.4-1, single-frame images: image/jpeg (the Default), image/gif and image/png (Required)
FORMATS: Final = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
DEFAULT_FORMAT: Final = "image/jpeg"
THUMBNAIL_SIZE: Final = 128
#: Largest viewport side we render (a 4096x4096 RGB image is 48 MiB before encoding); larger: 400.
MAX_VIEWPORT: Final = 4096
#: PS3.18 §8.3.5.1.4 window function keyword -> PS3.3 C.11.2.1.3 VOI LUT Function (0028,1056)
WINDOW_FUNCTIONS: Final = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
#: Default quality of a JPEG we make (Pillow's own default is 75).
DEFAULT_QUALITY: Final = 90


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and the VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 §8.3.5.1.3 viewport: the size to fit into (None: no limit on that side) and the source region
    in pixels (sx, sy; sw, sh None = to the edge, negative = flipped). WADO-URI's ``region`` (§9) gives
    the source region as fractions of the image instead."""

    width: int | None
    height: int | None
    sx: float = 0.0
    sy: float = 0.0
    sw: float | None = None
    sh: float | None = None
    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class RenderOptions:
    mime: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None
    thumbnail: bool = False


def _voi(data: Any, window: Window) -> None:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3.2: the window applied in place, output range 0..255."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        np.multiply(data, -4.0 / w, out=data)
        data += 4.0 * c / w
        np.exp(np.clip(data, -80, 80, out=data), out=data)
        data += 1.0
        np.divide(255.0, data, out=data)
        return
    if window.function == "LINEAR_EXACT":
        low, span = c - w / 2, w
    else:  # LINEAR: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 255
        low, span = c - 0.5 - (w - 1) / 2, max(w - 1, 1e-6)
    data -= low
    data *= 255 / span


def _window(ds: Any, frame: Any, window: Window | None) -> Any:
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
        function = str(ds.get("VOILUTFunction", "") or "LINEAR").upper()
        if float(width) > 0:
            window = Window(
                float(center), float(width), function if function in WINDOW_FUNCTIONS.values() else "LINEAR"
            )
    if window is None:
        low, high = float(data.min()), float(data.max())
        data -= low
        data *= 255 / max(high - low, 1e-6)
    else:
        _voi(data, window)
    np.clip(data, 0, 255, out=data)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        np.subtract(255, data, out=data)
    return data.astype(np.uint8)


def _eight_bits(data: Any, bits: int) -> Any:
    """Colour samples of ``bits`` bits as 8-bit ones (the top 8 bits; 16-bit RGB used to wrap around)."""
    if data.dtype.itemsize > 1 or bits > 8:
        data = np.right_shift(data.astype(np.uint32), max(bits - 8, 0))
    return np.clip(data, 0, 255).astype(np.uint8)


def _palette(ds: Any, frame: Any) -> Image.Image:
    """PALETTE COLOR (PS3.3 C.7.6.3.1.5): indices through the Red/Green/Blue Palette Color Lookup Tables,
    as PS3.18 10.4.1.1.3 wants every Photometric Interpretation rendered (it was drawn as grey indices)."""
    from pydicom.pixels.processing import apply_color_lut

    rgb = apply_color_lut(frame, ds)  # 8-bit entries as uint8, 16-bit ones (the full range) as uint16
    return Image.fromarray(_eight_bits(rgb, 8 * rgb.dtype.itemsize)).convert("RGB")


def _apply_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    """Crop to the source region, flip for a negative sw/sh, then scale to fit (PS3.18 §8.3.5.1.3)."""
    cols, rows = image.size
    if viewport.region is not None:
        x1, y1, x2, y2 = viewport.region
        left, top, right, bottom = x1 * cols, y1 * rows, x2 * cols, y2 * rows
        flip_x = flip_y = False
    else:
        left, top = abs(viewport.sx), abs(viewport.sy)
        sw = viewport.sw if viewport.sw is not None else cols - left
        sh = viewport.sh if viewport.sh is not None else rows - top
        right, bottom = left + abs(sw), top + abs(sh)
        flip_x, flip_y = sw < 0, sh < 0
    box = (max(0, round(left)), max(0, round(top)), min(cols, round(right)), min(rows, round(bottom)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise HttpError(400, "invalid_viewport", f"the source region is outside the {cols}x{rows} image")
    if box != (0, 0, cols, rows):
        image = image.crop(box)
    if flip_x:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    width, height = image.size
    scales = [s for s in (viewport.width and viewport.width / width, viewport.height and viewport.height / height) if s]
    if scales:
        scale = min(scales)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    return image


def render(path: Path, frame_number: int, options: RenderOptions, limits: DatasetLimits = DEFAULT_LIMITS) -> bytes:
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
    if str(getattr(ds, "PhotometricInterpretation", "")) == "PALETTE COLOR":
        image = _palette(ds, frame)
    elif samples == 1:
        image = Image.fromarray(_window(ds, frame, options.window), mode="L")
    else:
        image = Image.fromarray(_eight_bits(frame, int(getattr(ds, "BitsStored", 8) or 8))).convert("RGB")
    if options.viewport is not None:
        image = _apply_viewport(image, options.viewport)
    elif options.thumbnail:
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    if FORMATS[options.mime] == "JPEG":
        image.save(out, format="JPEG", quality=options.quality or DEFAULT_QUALITY)
    else:
        image.save(out, format=FORMATS[options.mime])
    return out.getvalue()


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HttpError(400, f"invalid_{what}", f"{text[:20]!r} in {what} is not a decimal number") from None
    if not math.isfinite(value):
        raise HttpError(400, f"invalid_{what}", f"{what} values must be finite numbers")
    return value


def parse_window(raw: str | None) -> Window | None:
    """``window=center,width,function`` (PS3.18 §8.3.5.1.4); HttpError 400 when malformed. The function
    may be left out (linear, as a DICOM window without a VOI LUT Function)."""
    if raw is None:
        return None
    fields = raw.split(",")
    if len(fields) not in (2, 3):
        raise HttpError(400, "invalid_window", f"window must be 'center,width,function', not {raw[:40]!r}")
    center, width = _number(fields[0], "window"), _number(fields[1], "window")
    keyword = fields[2].strip().lower() if len(fields) == 3 else "linear"
    if keyword not in WINDOW_FUNCTIONS:
        raise HttpError(
            400, "invalid_window", f"the window function must be linear, linear-exact or sigmoid, not {keyword[:20]!r}"
        )
    function = WINDOW_FUNCTIONS[keyword]
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise HttpError(400, "invalid_window", "the window width must be positive (at least 1 for linear)")
    return Window(center, width, function)


def parse_side(text: str, what: str) -> int:
    """A viewport side (vw, vh; WADO-URI rows, columns): a whole number from 1 to MAX_VIEWPORT, else 400."""
    if not (0 < len(text) <= 6 and text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_VIEWPORT:
        raise HttpError(
            400, "invalid_viewport", f"{what} must be a whole number from 1 to {MAX_VIEWPORT}, not {text[:20]!r}"
        )
    return int(text)


def parse_viewport(raw: str | None, thumbnail: bool = False) -> Viewport | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3; elided values keep their defaults, a thumbnail
    takes vw,vh only); HttpError 400 when malformed."""
    if raw is None:
        return None
    fields = raw.split(",")
    if len(fields) < 2 or len(fields) > (2 if thumbnail else 6):
        form = "vw,vh" if thumbnail else "vw,vh[,sx,sy,sw,sh]"
        raise HttpError(400, "invalid_viewport", f"viewport must be {form}, not {raw[:60]!r}")
    width, height = parse_side(fields[0], "vw"), parse_side(fields[1], "vh")
    rest = [_number(f, "viewport") if f.strip() else None for f in fields[2:]] + [None] * (6 - len(fields))
    sx, sy, sw, sh = rest
    if sw == 0 or sh == 0:
        raise HttpError(400, "invalid_viewport", "sw and sh must not be 0")
    return Viewport(width, height, sx or 0.0, sy or 0.0, sw, sh)


def parse_quality(raw: str | None) -> int | None:
    """``quality`` (PS3.18 §8.3.5.1.2): an integer from 1 to 100; HttpError 400 otherwise."""
    if raw is None:
        return None
    if not (0 < len(raw) <= 3 and raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise HttpError(400, "invalid_quality", f"quality must be a whole number from 1 to 100, not {raw[:20]!r}")
    return int(raw)


def choose_format(accept: str) -> str:
    """The rendered media type for an Accept header or ``accept`` parameter: the most preferred (q-value,
    RFC 9110 §12.5.1) of :data:`FORMATS`; ``image/*``, ``*/*``, none of ours, or nothing: image/jpeg, the
    Default (PS3.18 Table 8.7.3-1: returned when none of the acceptable media types is supported)."""
    for r in parse_accept(accept):
        if r.media_type in FORMATS:
            return r.media_type
        if r.media_type in ("image/*", "*/*"):
            return DEFAULT_FORMAT
    return DEFAULT_FORMAT


__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "RenderOptions",
    "Viewport",
    "Window",
    "choose_format",
    "parse_quality",
    "parse_side",
    "parse_viewport",
    "parse_window",
    "render",
]
