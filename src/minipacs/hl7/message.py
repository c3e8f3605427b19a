"""HL7 v2 messages: parsing, escapes and MSH-18 character sets (HL7 v2.5 chapter 2).

A small parser of the encoding rules of HL7 v2.5 section 2.5 / 2.7: the bytes are read
in the character set of MSH-18 (Table 0211, ``CHARSETS``); segments end
with CR (LF and CRLF are accepted too), fields are split by MSH-1, repetitions,
components and subcomponents by the encoding characters of MSH-2, and the escape
sequences of section 2.7 (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\) are undone
on the way in and applied on the way out. MLLP frames the bytes (hl7/mllp.py), ACKs are
built in hl7/ack.py, and orders become worklist entries through hl7/orders.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from minipacs.hl7.errors import REJECT, HL7Error


@dataclass(frozen=True)
class Encoding:
    """The delimiters: MSH-1 and the four encoding characters of MSH-2 (HL7 v2.5 2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_ENCODING: Final = Encoding()


@dataclass(frozen=True)
class Charset:
    """A character set of MSH-18 (HL7 v2.5 Table 0211), the Python codec that reads it, and the
    DICOM Specific Character Set (0008,0005) defined term for it ('' = the default repertoire)."""

    hl7: str
    codec: str
    dicom: str


# HL7 v2.5 Table 0211 Alternate Character Sets -> codec and PS3.3 Table C.12-2 / C.12-5 defined term.
# Others of Table 0211 (ISO IR87, KS X 1001, UNICODE UTF-16, BIG-5, ...) are refused with AR, never guessed.
CHARSETS: Final[dict[str, Charset]] = {
    c.hl7: c
    for c in (
        Charset("ASCII", "ascii", ""),
        Charset("8859/1", "iso8859_1", "ISO_IR 100"),
        Charset("8859/2", "iso8859_2", "ISO_IR 101"),
        Charset("8859/3", "iso8859_3", "ISO_IR 109"),
        Charset("8859/4", "iso8859_4", "ISO_IR 110"),
        Charset("8859/5", "iso8859_5", "ISO_IR 144"),
        Charset("8859/6", "iso8859_6", "ISO_IR 127"),
        Charset("8859/7", "iso8859_7", "ISO_IR 126"),
        Charset("8859/8", "iso8859_8", "ISO_IR 138"),
        Charset("8859/9", "iso8859_9", "ISO_IR 148"),
        Charset("8859/15", "iso8859_15", "ISO_IR 203"),  # Latin-9, Table 0211 since v2.6
        Charset("GB 18030-2000", "gb18030", "GB18030"),  # Table 0211 since v2.5; PS3.3 Table C.12-5
        Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    )
}
#: Names senders use instead of the Table 0211 code.
CHARSET_ALIASES: Final[dict[str, str]] = {
    "UTF-8": "UNICODE UTF-8",
    "UTF8": "UNICODE UTF-8",
    "ISO-8859-1": "8859/1",
    "ISO8859-1": "8859/1",
}

_HEX = re.compile(r"^X([0-9A-Fa-f]{2})+$")
#: HL7 v2.5 2.7.6: \.sp <n>\ (skip lines) ends a line, like \.br\.
_LINE: Final = re.compile(r"^\.sp ?[+-]?\d*$")
#: HL7 v2.5 2.7.2 highlighting, 2.7.5 locally defined, 2.7.6 other formatting, 2.7.7 character set switches.
_DROPPED: Final = re.compile(
    r"^(?:[HN]|Z[^\\]*|\.(?:in|ti|sk|ce|fi|nf)(?: ?[+-]?\d+)?|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?)$"
)


def unescape(text: str, enc: Encoding = DEFAULT_ENCODING, codec: str = "latin-1") -> str:
    """HL7 v2.5 2.7: escape sequences -> the characters they stand for.

    \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ give the delimiters, \\Xhh..\\ the bytes hh.. (HL7 v2.5
    2.7.3: in the message's character set, ``codec``; UTF-8 when they are valid UTF-8, which a
    sender escaping what its set lacks means; else ISO 8859-1), \\.br\\ and \\.sp\\ a line break.
    The sequences that only format a display or switch character sets (HL7 v2.5 2.7.2 highlighting
    \\H\\ \\N\\, 2.7.5 locally defined \\Z..\\, 2.7.6 formatting \\.xx\\, 2.7.7 \\C..\\ \\M..\\; the
    bytes were already read in the MSH-18 set) are dropped: kept as sent, their escape characters
    became backslashes, the value separator of DICOM (PS3.5 6.4), and split a name into several
    values. Anything else is kept as sent.
    """
    esc = enc.escape
    if not esc or esc not in text:
        return text
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": esc, ".br": "\n"}
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:  # a lone escape character: kept literally
            out.append(text[i:])
            break
        body = text[i + 1 : end]
        if body in simple:
            out.append(simple[body])
        elif _LINE.match(body):
            out.append("\n")
        elif _DROPPED.match(body):
            pass
        elif _HEX.match(body):
            raw = bytes.fromhex(body[1:])
            for name in ("utf-8", codec, "latin-1"):
                try:
                    out.append(raw.decode(name))
                    break
                except UnicodeDecodeError:
                    continue
        else:
            out.append(text[i : end + 1])
        i = end + 1
    return "".join(out)


def escape(text: str, enc: Encoding = DEFAULT_ENCODING) -> str:
    """HL7 v2.5 2.7: delimiters in data -> escape sequences (the escape character first)."""
    table = {enc.escape: "E", enc.field: "F", enc.component: "S", enc.subcomponent: "T", enc.repetition: "R"}
    out = []
    for ch in text:
        if ch in table:
            out.append(f"{enc.escape}{table[ch]}{enc.escape}")
        elif ch in "\r\n":
            out.append(f"{enc.escape}.br{enc.escape}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Segment:
    """One segment: its ID and its fields as sent (still escaped); ``fields[1]`` is field 1."""

    name: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Message:
    encoding: Encoding
    segments: tuple[Segment, ...]
    #: What the bytes were read as (MSH-18, or what they turned out to be); None: parsed from text.
    charset: Charset | None = None

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        found = self.all(name)
        return found[0] if found else None

    def raw(self, segment: Segment | None, field: int) -> str:
        if segment is None or field >= len(segment.fields):
            return ""
        return segment.fields[field]

    def repetitions(self, segment: Segment | None, field: int) -> list[str]:
        raw = self.raw(segment, field)
        return raw.split(self.encoding.repetition) if raw else []

    def value(
        self, segment: Segment | None, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 0
    ) -> str:
        """SEG-field.component.subcomponent of one repetition, unescaped ('' when absent).

        The HL7 null ``""`` reads as empty.
        """
        if segment is not None and segment.name == "MSH" and field in (1, 2):
            return segment.fields[field]
        reps = self.repetitions(segment, field)
        if repetition >= len(reps):
            return ""
        return self.component(reps[repetition], component, subcomponent)

    def component(self, rep: str, component: int = 1, subcomponent: int = 1) -> str:
        comps = rep.split(self.encoding.component)
        if component > len(comps):
            return ""
        subs = comps[component - 1].split(self.encoding.subcomponent)
        if subcomponent > len(subs):
            return ""
        text = subs[subcomponent - 1]
        codec = self.charset.codec if self.charset is not None else "latin-1"
        return "" if text == '""' else unescape(text, self.encoding, codec).strip()

    @property
    def control_id(self) -> str:
        return self.value(self.first("MSH"), 10)

    @property
    def message_type(self) -> tuple[str, str]:
        msh = self.first("MSH")
        return self.value(msh, 9, 1).upper(), self.value(msh, 9, 2).upper()


SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def parse(text: str) -> Message:
    """HL7 v2.5 2.5 / 2.6: the message text -> segments; raises HL7Error (AR) with the reason.

    The first segment must be MSH; MSH-1 is the 4th character, MSH-2 the encoding
    characters up to the next field separator. Segments may end with CR, LF or CRLF.
    """
    text = text.lstrip("\r\n\x00 \t")
    if not text:
        raise HL7Error("the message is empty", ack_code=REJECT, error_code=100, location="MSH")
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7Error(
            f"the message does not start with an MSH segment (it starts {text[:12]!r}); "
            "an HL7 v2 message begins 'MSH|^~\\&|'",
            ack_code=REJECT,
            error_code=100,
            location="MSH",
        )
    sep = text[3]
    if sep in "\r\n":
        raise HL7Error(
            "MSH-1, the field separator, is a line break, which ends segments (HL7 v2.5 2.5.4); "
            "the message cannot be read: send 'MSH|^~\\&|'",
            ack_code=REJECT,
            error_code=102,
            location="MSH-1",
        )
    first_line = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    end = first_line.find(sep, 4)
    usable = not (sep.isalnum() or sep.isspace())
    if end < 0 and usable:
        raise HL7Error(
            f"the MSH segment ends after MSH-2 ({first_line[:12]!r}): MSH-9 message type, MSH-10 message control "
            "ID, MSH-11 processing ID and MSH-12 version ID are required (HL7 v2.5 2.15.9)",
            ack_code=REJECT,
            error_code=101,
            location="MSH-9",
        )
    if end < 0:
        end = len(first_line)  # no usable separator at all: refused just below
    chars = text[4:end]
    if (
        not usable
        or not 2 <= len(chars) <= 5
        or len(set(chars + sep)) != len(chars) + 1
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise HL7Error(
            f"MSH-1/MSH-2 encoding characters {first_line[3 : end + 1]!r} are not usable "
            "(expected a field separator and four distinct delimiters, like '|^~\\&')",
            ack_code=REJECT,
            error_code=102,
            location="MSH-2",
        )
    enc = Encoding(sep, chars[0], chars[1], chars[2] if len(chars) > 2 else "", chars[3] if len(chars) > 3 else "&")
    segments: list[Segment] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        name = line[:3]
        if not SEGMENT_ID.match(name) or (len(line) > 3 and line[3] != sep):
            raise HL7Error(
                f"segment {len(segments) + 1} ({line[:20]!r}) is not an HL7 segment "
                f"(three-letter ID followed by {sep!r})",
                ack_code=REJECT,
                error_code=100,
                location=f"segment {len(segments) + 1}",
            )
        if name == "MSH":
            if segments:
                raise HL7Error(
                    "a second MSH segment inside one message (send each message in its own frame)",
                    ack_code=REJECT,
                    error_code=100,
                    location="MSH",
                )
            rest = line[4 + len(chars) + 1 :]
            fields = ("MSH", sep, chars, *rest.split(sep))
        else:
            fields = (name, *line[4:].split(sep)) if len(line) > 3 else (name,)
        segments.append(Segment(name, tuple(fields)))
    return Message(enc, tuple(segments))


#: Table 0211 sets in which one character may be several bytes, some of them below 0x80 (GB 18030's
#: second and fourth bytes run 0x40 .. 0xFE and 0x30 .. 0x39: 0x7C '|', 0x5E '^', 0x7E '~', 0x5C
#: backslash among them). In them a split of the raw bytes on the field separator may cut a character
#: in two: :func:`declared_charset` reads MSH-18 in each of them too. UTF-8 is listed for completeness
#: (its bytes of a multi-byte character are all >= 0x80, so its reading is the raw one).
MULTI_BYTE: Final = ("GB 18030-2000", "UNICODE UTF-8")
#: The first byte of an ISO 2022 escape sequence (ISO/IEC 2022 clause 13): it never occurs inside a
#: character of the sets of ``CHARSETS``, so in a message it can only switch to another set.
ISO_2022_ESC: Final = b"\x1b"


def charset_named(name: str) -> Charset | None:
    """The Table 0211 set ``name`` names (its code or an alias, any case); None when minipacs does not read it."""
    name = name.strip().upper()
    return CHARSETS.get(CHARSET_ALIASES.get(name, name))


def _msh18(line: str, separator: str, repetition: str) -> str:
    """MSH-18's first repetition in one reading of the MSH segment ('' when absent). HL7 v2.5 2.15.9.18:
    the first repetition is the character set of the message; the others name alternate sets reached by
    code switching (MSH-20 Alternate Character Set Handling Scheme, Table 0356), which minipacs does not do."""
    fields = line.split(separator)  # fields[1] is MSH-2, fields[n - 1] MSH-n
    return fields[17].split(repetition)[0].strip().upper() if len(fields) >= 18 else ""


def _undetermined(readings: dict[str, str]) -> HL7Error:
    said = "; ".join(f"read as {name}, MSH-18 says {value or '(nothing)'!r}" for name, value in readings.items())
    return HL7Error(
        "the character set of the message could not be determined: no reading of the MSH segment has an MSH-18 "
        f"naming the set it was read in ({said}); the sender must name its character set in MSH-18 "
        "(HL7 Table 0211) and send MSH-3 .. MSH-17 in it",
        ack_code=REJECT,
        error_code=103,
        location="MSH-18",
    )


def declared_charset(data: bytes) -> str:
    """MSH-18 (first repetition) of the raw bytes, upper case; '' when absent (HL7 v2.5 2.15.9.18).

    The bytes before MSH-18 are split on the field separator, so in a multi-byte set (:data:`MULTI_BYTE`)
    a sending facility in Chinese may hold a byte equal to '|' inside one character and shift the fields.
    When MSH-3 .. MSH-17 are all ASCII (the usual case) the raw split is exact in every set of
    ``CHARSETS``, all ASCII-compatible, and is taken as it is. Otherwise the MSH segment is read in the
    set the raw split names and in each multi-byte set, and split again: the set whose reading's MSH-18
    names that very set is the message's. Raises HL7Error (AR 103) when several readings name themselves,
    or when none does although some reading names a set that its bytes fit: minipacs does not guess.
    With no consistent reading the raw candidate is returned (:func:`decode` then says it is not
    supported or that the bytes are not valid in it), '' when every reading has no MSH-18.
    """
    text = data.lstrip(b"\r\n\x00 \t")
    if not text.startswith(b"MSH") or len(text) < 8:
        return ""
    line = re.split(rb"\r\n|\r|\n", text, maxsplit=1)[0].decode("latin-1")  # byte n is character n
    separator = line[3:4]
    if not separator or separator.isspace() or separator.isalnum():
        return ""  # no usable field separator (CR, LF, ...): parse() refuses the message with AR
    fields = line.split(separator)
    if len(fields) < 18:  # exact: a byte cut out of a character only adds fields, never removes one
        return ""
    repetition = fields[1][1:2] or "~"
    raw = _msh18(line, separator, repetition)
    if all(field.isascii() for field in fields[:17]):
        return raw  # the fast path: every byte before MSH-18 is the ASCII character it looks like
    candidate = charset_named(raw)
    readings: dict[str, str] = {}
    consistent: list[Charset] = []
    for name in dict.fromkeys(([candidate.hl7] if candidate is not None else []) + list(MULTI_BYTE)):
        charset = CHARSETS[name]
        try:
            decoded = line.encode("latin-1").decode(charset.codec)
        except UnicodeDecodeError:
            continue
        readings[name] = _msh18(decoded, separator, repetition)
        if charset_named(readings[name]) == charset:
            consistent.append(charset)
    if len(consistent) == 1:
        return consistent[0].hl7
    if consistent:
        raise _undetermined(readings)
    if candidate is None and all(value in ("", raw) for value in readings.values()):
        return raw  # '' (none declared) or a set minipacs does not read: decode() says which
    if candidate is not None and candidate.hl7 not in readings:
        return raw  # the bytes are not valid in the set MSH-18 names: decode() names the byte
    raise _undetermined({"the raw bytes": raw, **readings})


def decode(data: bytes) -> tuple[str, Charset]:
    """HL7 v2.5 2.15.9.18: the message bytes -> text in the character set MSH-18 declares.

    Raises HL7Error (AR) for a character set minipacs does not read, bytes that are not valid in
    the declared one, a character set that cannot be determined (:func:`declared_charset`), or an
    ESC byte: an ISO 2022 escape sequence switching sets (MSH-20, Table 0356 'ISO 2022-1994'), which
    minipacs does not do (the HL7 escapes \\C..\\ and \\M..\\ of mode '2.3' are dropped by :func:`unescape`).
    Only the first repetition of MSH-18 counts: the others name those alternate sets. Without MSH-18
    (which means ASCII) the bytes are read as UTF-8 when valid, else as ISO 8859-1: senders that leave
    it out often send either.
    """
    escape_at = data.find(ISO_2022_ESC)
    if escape_at >= 0:
        raise HL7Error(
            f"the message holds the control character ESC (0x1B) at offset {escape_at}: ISO 2022 code switching "
            "between character sets (MSH-18 repetitions, MSH-20 'ISO 2022-1994', HL7 v2.5 2.15.9.20) is not "
            "supported; send the whole message in the one character set MSH-18 names, such as UNICODE UTF-8",
            ack_code=REJECT,
            error_code=103,
            location="MSH-20",
        )
    declared = declared_charset(data)
    if not declared:
        for name in ("ASCII", "UNICODE UTF-8"):
            try:
                return data.decode(CHARSETS[name].codec), CHARSETS[name]
            except UnicodeDecodeError:
                pass
        return data.decode("latin-1"), CHARSETS["8859/1"]
    charset = charset_named(declared)
    if charset is None:
        raise HL7Error(
            f"MSH-18 character set {declared!r} is not supported; send {', '.join(CHARSETS)} (HL7 Table 0211)",
            ack_code=REJECT,
            error_code=103,
            location="MSH-18",
        )
    try:
        return data.decode(charset.codec), charset
    except UnicodeDecodeError as exc:
        raise HL7Error(
            f"byte 0x{data[exc.start]:02X} at offset {exc.start} is not valid {charset.hl7}, the "
            "character set MSH-18 declares; correct MSH-18 or the sender's encoding",
            ack_code=REJECT,
            error_code=102,
            location="MSH-18",
        ) from None


def parse_bytes(data: bytes) -> Message:
    """The bytes of one message -> Message: decoded per MSH-18 (:func:`decode`), then parsed."""
    text, charset = decode(data)
    return replace(parse(text), charset=charset)


__all__ = [
    "CHARSETS",
    "DEFAULT_ENCODING",
    "SEGMENT_ID",
    "Charset",
    "Encoding",
    "Message",
    "MULTI_BYTE",
    "Segment",
    "charset_named",
    "declared_charset",
    "decode",
    "escape",
    "parse",
    "parse_bytes",
    "unescape",
]
