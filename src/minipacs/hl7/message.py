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
    end = text.find(sep, 4)
    chars = text[4:end] if end > 0 else ""
    if (
        sep.isalnum()
        or sep.isspace()
        or not 2 <= len(chars) <= 5
        or len(set(chars + sep)) != len(chars) + 1
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise HL7Error(
            f"MSH-1/MSH-2 encoding characters {text[3 : end + 1 if end > 0 else 12]!r} are not usable "
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
            rest = line[4 + len(chars) + 1 :] if end > 0 else ""
            fields = ("MSH", sep, chars, *rest.split(sep))
        else:
            fields = (name, *line[4:].split(sep)) if len(line) > 3 else (name,)
        segments.append(Segment(name, tuple(fields)))
    return Message(enc, tuple(segments))


def declared_charset(data: bytes) -> str:
    """MSH-18 (first repetition) read from the raw bytes: MSH is ASCII up to there; '' when absent."""
    text = data.lstrip(b"\r\n\x00 \t")
    if not text.startswith(b"MSH") or len(text) < 8:
        return ""
    line = re.split(rb"\r\n|\r|\n", text, maxsplit=1)[0]
    separator = line[3:4]
    if not separator or separator.isspace() or separator.isalnum():
        return ""  # no usable field separator (CR, LF, ...): parse() refuses the message with AR
    fields = line.split(separator)  # fields[1] is MSH-2, fields[n - 1] MSH-n
    if len(fields) < 18:
        return ""
    repetition = fields[1][1:2] or b"~"
    return fields[17].split(repetition)[0].decode("latin-1").strip().upper()


def decode(data: bytes) -> tuple[str, Charset]:
    """HL7 v2.5 2.15.9.18: the message bytes -> text in the character set MSH-18 declares.

    Raises HL7Error (AR) for a character set minipacs does not read, or bytes that are
    not valid in the declared one. Without MSH-18 (which means ASCII) the bytes are read
    as UTF-8 when valid, else as ISO 8859-1: senders that leave it out often send either.
    """
    declared = declared_charset(data)
    if not declared:
        for name in ("ASCII", "UNICODE UTF-8"):
            try:
                return data.decode(CHARSETS[name].codec), CHARSETS[name]
            except UnicodeDecodeError:
                pass
        return data.decode("latin-1"), CHARSETS["8859/1"]
    charset = CHARSETS.get(CHARSET_ALIASES.get(declared, declared))
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
    "Segment",
    "declared_charset",
    "decode",
    "escape",
    "parse",
    "parse_bytes",
    "unescape",
]
