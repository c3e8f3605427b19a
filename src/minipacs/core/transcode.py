"""Transcoding a stored instance for a peer that does not accept its transfer syntax.

Used only when the stored bytes cannot be sent as they are (ARCHITECTURE:
"transcode only when it does not"). Native syntaxes are re-encoded by pydicom;
compressed ones are decompressed first, which needs the pylibjpeg plugins
(``pylibjpeg``, ``pylibjpeg-libjpeg``, ``pylibjpeg-openjpeg``) for JPEG and
JPEG 2000; RLE is decoded by pydicom itself. Blocking: call it off the loop.
"""

from __future__ import annotations

from pathlib import Path

from minipacs.core.errors import ArchiveError
from minipacs.net.uids import transfer_syntax


class TranscodeError(ArchiveError):
    """The stored instance cannot be converted to the transfer syntax the peer accepts."""


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """Whether :func:`transcode` may succeed: the target must be native (uncompressed)."""
    source, target = transfer_syntax(source_ts), transfer_syntax(target_ts)
    return source is not None and target is not None and not target.encapsulated and not target.deflated


def transcode(path: Path, target_ts: str) -> bytes:
    """The dataset of the Part 10 file ``path`` encoded in ``target_ts`` (native only)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    target = transfer_syntax(target_ts)
    if target is None or target.encapsulated or target.deflated:
        raise TranscodeError(f"cannot encode into transfer syntax {target_ts}: only native syntaxes are produced")
    try:
        ds = pydicom.dcmread(path, force=True)
        source = transfer_syntax(str(ds.file_meta.TransferSyntaxUID))
        if source is not None and source.encapsulated and "PixelData" in ds:
            ds.decompress()
    except Exception as exc:  # noqa: BLE001 - any codec failure means "cannot convert"
        raise TranscodeError(
            f"cannot convert {path.name} to {target_ts}: {type(exc).__name__}: {exc} "
            "(for JPEG/JPEG 2000 install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg)"
        ) from exc
    buf = DicomBytesIO()
    buf.is_little_endian = target.little_endian
    buf.is_implicit_VR = target.implicit_vr
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    write_dataset(buf, ds)
    return bytes(buf.getvalue())
