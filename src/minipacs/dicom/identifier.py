"""The identifier codec: C-FIND/C-MOVE/C-GET/N-ACTION datasets to and from the wire (PS3.5 §7.1, §10).

Identifiers are read as raw (unconverted) elements, so hostile values cannot trip
pydicom's validation, and written in the presentation context's transfer syntax,
deflated when it is Deflated Explicit VR Little Endian (PS3.5 A.5). The response
character set follows PS3.4 C.4.1.1.3.2.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

from minipacs.dicom.uids import TransferSyntax, transfer_syntax, uid_name
from minipacs.dicom.values import can_encode, codecs_for, encode_text, uses_code_extensions
from minipacs.dicom.vr import ASCII_VRS, CHARSET_VRS, INT_VR_FORMATS, LONG_LENGTH_VRS

#: (0008,0005) Specific Character Set and (0008,0052) Query/Retrieve Level (PS3.6 Table 6-1).
SPECIFIC_CHARACTER_SET: Final = 0x00080005
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
#: At most this much of a deflated identifier is inflated (a deflate bomb stops there).
MAX_INFLATED_BYTES: Final = 64 * 1024 * 1024
#: The character set a response falls back to when the requester's cannot carry a value.
UTF8: Final = "ISO_IR 192"


def decode_identifier(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """The identifier as raw (unconverted) elements; raises ValueError when unreadable."""
    ts = transfer_syntax(transfer_syntax_uid)
    if ts is None:
        raise ValueError(f"unknown transfer syntax {transfer_syntax_uid}")
    if ts.deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = inflater.decompress(data, MAX_INFLATED_BYTES)
    try:
        return read_dataset(io.BytesIO(data), ts.implicit_vr, ts.little_endian)
    except Exception as exc:  # any parse failure is the peer's malformed identifier
        raise ValueError(f"the identifier cannot be parsed in {uid_name(transfer_syntax_uid)}: {exc}") from exc


def deflate(data: bytes) -> bytes:
    """A raw deflate stream (PS3.5 A.5, RFC 1951), padded with a trailing 0x00 to even length as A.5
    says (a PDV fragment must be of even length, PS3.8 E.2; an inflater ignores what follows the end)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(data) + compressor.flush()
    return stream + b"\x00" if len(stream) % 2 else stream


def encode_identifier(ds: Dataset, ts: TransferSyntax) -> bytes:
    """The response identifier in the context's transfer syntax (PS3.5 §7.1).

    Flat identifiers of text and US/UL values (nearly every C-FIND response) are
    encoded here directly, ten times faster than pydicom's writer; anything else
    (sequences, binary values, ISO 2022 character sets) goes through pydicom.
    """
    data = _encode_flat(ds, ts)
    if data is None:
        charset = dataset_charset(ds)
        if uses_code_extensions(charset):
            ds = _text_encoded(ds, charset, ts)
        buffer = DicomBytesIO()
        buffer.is_little_endian = ts.little_endian
        buffer.is_implicit_VR = ts.implicit_vr
        write_dataset(buffer, ds)
        data = bytes(buffer.getvalue())
    return deflate(data) if ts.deflated else data


def _encode_flat(ds: Dataset, ts: TransferSyntax) -> bytes | None:
    charset = ds.get("SpecificCharacterSet", "") or ""
    if not isinstance(charset, str) or uses_code_extensions(charset):
        return None  # ISO 2022 escape sequences (even under one Defined Term): encode_text writes them
    codec = codecs_for(charset)[0]
    order = "<" if ts.little_endian else ">"
    out = bytearray()
    for elem in ds:
        vr = elem.VR
        value = elem.value
        if vr in INT_VR_FORMATS:
            values = [] if value is None or value == "" else value if isinstance(value, (MultiValue, list)) else [value]
            raw = struct.pack(f"{order}{len(values)}{INT_VR_FORMATS[vr]}", *values)
        elif vr in ASCII_VRS or vr in CHARSET_VRS:
            if value is None:
                text = ""
            elif isinstance(value, (MultiValue, list)):
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            try:
                raw = text.encode("ascii" if vr in ASCII_VRS else codec)
            except (UnicodeEncodeError, LookupError):
                return None
            if len(raw) % 2:
                raw += b"\x00" if vr == "UI" else b" "
        else:
            return None
        tag = int(elem.tag)
        group, element = tag >> 16, tag & 0xFFFF
        if ts.implicit_vr:
            out += struct.pack(f"{order}HHL", group, element, len(raw))
        elif vr in LONG_LENGTH_VRS:
            out += struct.pack(f"{order}HH2s2xL", group, element, vr.encode(), len(raw))
        else:
            if len(raw) > 0xFFFF:
                return None
            out += struct.pack(f"{order}HH2sH", group, element, vr.encode(), len(raw))
        out += raw
    return bytes(out)


def _text_encoded(ds: Dataset, charset: str, ts: TransferSyntax) -> Dataset:
    """``ds`` with each text value already in the bytes of ``charset`` (ISO 2022 code extensions,
    PS3.5 6.1.2.5; :func:`~minipacs.dicom.values.encode_text`), for pydicom's writer to copy. pydicom
    3.0 writes such values wrongly: Latin-1 bytes with no escape sequence under ``ISO 2022 IR 6\\...``
    (it names Latin-1 for ISO 2022 IR 6), and no new designation of a G1 set after a CR LF. A value
    the set cannot hold (not chosen by :func:`choose_charset`) is left to pydicom. The data set says it
    was read in ``ts`` and ``charset``, so that pydicom writes its raw values as they are."""
    out = Dataset()
    for elem in ds:
        if elem.VR == "SQ" and elem.value:
            items = [_text_encoded(item, dataset_charset(item, charset), ts) for item in elem.value]
            out.add_new(elem.tag, "SQ", items)
            continue
        if elem.VR in CHARSET_VRS and elem.value is not None and not isinstance(elem.value, (bytes, bytearray)):
            try:
                raw = encode_text(element_text(elem), elem.VR, charset)
            except UnicodeEncodeError:
                out.add(elem)
                continue
            if len(raw) % 2:
                raw += b" "
            out[elem.tag] = RawDataElement(elem.tag, elem.VR, len(raw), raw, 0, ts.implicit_vr, ts.little_endian)
            continue
        out.add(elem)
    out.set_original_encoding(ts.implicit_vr, ts.little_endian, out._character_set)
    return out


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in CHARSET_VRS and elem.value is not None:
            value = elem.value
            if isinstance(value, (MultiValue, list)):
                yield from (str(v) for v in value)
            else:
                yield str(value)


def choose_charset(request_charset: str, texts: Iterable[str]) -> str:
    """PS3.4 C.4.1.1.3.2: the requester's character set when it can carry every text — one set, or
    ISO 2022 code extensions such as ``ISO 2022 IR 6\\ISO 2022 IR 87`` (PS3.5 6.1.2.5) — else UTF-8.

    "Can carry" is what :func:`~minipacs.dicom.values.encode_text` can write, the writer of the
    response: ISO_IR 13 holds JIS X 0201 katakana but no kanji (Python's Shift JIS codec, which
    pydicom names for it, wrote kanji as Shift JIS bytes under ISO_IR 13), and a Defined Term we do not
    know holds ASCII alone."""
    wide = [t for t in texts if not t.isascii()]
    if not wide:
        return request_charset
    if request_charset and can_encode(wide, request_charset):
        return request_charset
    return UTF8


def response_charset(request_charset: str, ds: Dataset) -> str:
    """PS3.4 C.4.1.1.3.2: the requester's character set when it can carry every value, else UTF-8."""
    return choose_charset(request_charset, _texts(ds))


def element_text(elem: DataElement) -> str:
    """A converted element's value as DICOM text (multiple values joined by backslashes)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return ""
    return str(value).replace("\x00", "")


def dataset_charset(ds: Dataset, inherited: str = "") -> str:
    """The Specific Character Set of ``ds`` (raw or converted), or ``inherited`` when it has none."""
    if SPECIFIC_CHARACTER_SET not in ds:
        return inherited
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"").decode("ascii", errors="replace").replace("\x00", "").strip(" ")
    return element_text(elem)


def identifier_charset(ds: Dataset) -> str:
    return dataset_charset(ds, "")


__all__ = [
    "MAX_INFLATED_BYTES",
    "QUERY_RETRIEVE_LEVEL",
    "SPECIFIC_CHARACTER_SET",
    "UTF8",
    "choose_charset",
    "dataset_charset",
    "decode_identifier",
    "deflate",
    "element_text",
    "encode_identifier",
    "identifier_charset",
    "response_charset",
]
