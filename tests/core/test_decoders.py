"""core/decoders.py: which pydicom decoder plugins decompress which transfer syntax (issue 12 items 8, 9)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Final

import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.base import get_decoder

from minipacs.core import decoders

# PS3.5 Table A-1 UID -> the plugins that must be available for it (from the permissive packages in pyproject)
EXPECTED: Final[dict[str, set[str]]] = {
    "1.2.840.10008.1.2.4.50": {"gdcm", "pillow"},  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": {"gdcm", decoders.PLUGIN},  # JPEG Extended (Process 2 & 4), 8 and 12-bit
    "1.2.840.10008.1.2.4.57": {"gdcm"},  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": {"gdcm"},  # JPEG Lossless, First-Order Prediction (Process 14, SV1)
    "1.2.840.10008.1.2.4.80": {"gdcm", "pyjpegls"},  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": {"gdcm", "pyjpegls"},  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": {"pylibjpeg"},  # JPEG 2000 Lossless Only (OpenJPEG)
    "1.2.840.10008.1.2.4.91": {"pylibjpeg"},  # JPEG 2000 (OpenJPEG)
    "1.2.840.10008.1.2.4.201": {"pylibjpeg"},  # HTJ2K Lossless (OpenJPEG)
    "1.2.840.10008.1.2.4.202": {"pylibjpeg"},  # HTJ2K Lossless RPCL (OpenJPEG)
    "1.2.840.10008.1.2.4.203": {"pylibjpeg"},  # HTJ2K (OpenJPEG)
    "1.2.840.10008.1.2.5": {"pydicom"},  # RLE Lossless
}


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_every_compressed_syntax_has_its_decoders(uid: str) -> None:
    decoders.register()
    decoder = get_decoder(uid)
    missing = EXPECTED[uid] - set(decoder.available_plugins)
    assert not missing, f"{uid}: plugins {sorted(missing)} unavailable; {decoder.missing_dependencies}"


@pytest.mark.parametrize("uid", sorted(decoders.REMOVED))
def test_gdcm_does_not_decode_jpeg_2000(uid: str) -> None:
    decoders.register()
    assert not set(decoders.REMOVED[uid]) & set(get_decoder(uid).available_plugins)
    assert "pylibjpeg" in get_decoder(uid).available_plugins  # what decodes it instead


def test_register_is_idempotent() -> None:
    decoders.register()
    before = get_decoder(decoders.JPEG_EXTENDED).available_plugins
    decoders.register()
    assert get_decoder(decoders.JPEG_EXTENDED).available_plugins == before
    assert before.count(decoders.PLUGIN) == 1


def test_the_plugin_is_for_jpeg_extended_only() -> None:
    assert decoders.is_available("1.2.840.10008.1.2.4.51")
    assert not decoders.is_available("1.2.840.10008.1.2.4.50")
    assert not decoders.is_available("1.2.840.10008.1.2.4.70")


def test_the_plugin_leaves_colour_to_the_others() -> None:
    runner = SimpleNamespace(
        samples_per_pixel=3,
        rows=2,
        columns=2,
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=0,
        photometric_interpretation="YBR_FULL_422",
    )
    with pytest.raises(NotImplementedError, match="one sample per pixel, not 3"):
        decoders.decode_frame(b"\xff\xd8\xff\xd9", runner)


def test_the_plugin_raises_on_a_bitstream_gdcm_cannot_decode() -> None:
    runner = SimpleNamespace(
        samples_per_pixel=1,
        rows=16,
        columns=16,
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
    )
    with pytest.raises(ValueError, match="GDCM could not decode"):
        decoders.decode_frame(b"\xff\xd8\xff\xc1" + b"\x00" * 64, runner)


@pytest.mark.parametrize("uid", sorted(decoders.LAST))
def test_gdcm_is_tried_last_for_jpeg_ls(uid: str) -> None:
    """pydicom 3.0.2 fails to sign-correct GDCM's read-only JPEG-LS output (signed pixels): pyjpegls goes first."""
    decoders.register()
    decoders.register()  # idempotent: the order stays
    order = list(get_decoder(uid)._available)
    assert order[-1] == "gdcm" and "pyjpegls" in order


def test_signed_jpeg_ls_is_transcoded(tmp_path: Path) -> None:
    from minipacs.core.compression import SYNTAXES, encode
    from minipacs.core.transcode import transcode_part10
    from tests.core.test_compression import image, save

    ds, arr = image("16signed")
    compressed = tmp_path / "jls.dcm"
    compressed.write_bytes(encode(save(ds, tmp_path / "in.dcm"), SYNTAXES["jpeg-ls-lossless"]))
    (tmp_path / "out.dcm").write_bytes(transcode_part10(compressed, "1.2.840.10008.1.2.1"))
    assert np.array_equal(pydicom.dcmread(tmp_path / "out.dcm").pixel_array, arr)
