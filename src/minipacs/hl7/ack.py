"""HL7 v2 acknowledgements: the ACK answering a message (HL7 v2.5 2.9, 2.14.1), in its character set.

MSA-1 is a Table 0008 code (hl7/errors.py); a refusal carries an ERR segment with the
Table 0357 code, where the problem is, and the reason a person reads.
"""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime
from typing import Final

from minipacs.hl7.errors import ERROR_CODES, HL7Error
from minipacs.hl7.message import DEFAULT_ENCODING, SEGMENT_ID, Message, Segment, escape


def hl7_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


#: The ACKs' own MSH-10 numbers: a random start (two servers, or a restart in the same second, do not
#: repeat each other's), then one up per ACK.
_SEQUENCE = itertools.count(secrets.randbelow(1_000_000))


def new_control_id() -> str:
    """MSH-10 of an ACK: HL7 v2.5 2.15.9.10 wants each message's ID unique (the sender files ACKs by it);
    the time to the second and a six-digit sequence, 20 characters (the ST 20 of v2.3 - v2.5)."""
    return f"{hl7_timestamp()}{next(_SEQUENCE) % 1_000_000:06d}"


#: Versions whose ERR segment is the one field ERR-1 Error Code and Location (ELD, HL7 v2.3 - v2.4);
#: from v2.5 ERR-2 .. ERR-8 carry it and ERR-1 is kept for backward compatibility only.
ELD_VERSIONS: Final = ("2.1", "2.2", "2.3", "2.3.1", "2.4")


def build_ack(
    message: Message | None,
    code: str,
    text: str = "",
    *,
    error: HL7Error | None = None,
    application: str = "MINIPACS",
    control_id: str = "",
) -> str:
    """The ACK (HL7 v2.5 2.14.1 / 2.15.8 MSA / 2.15.5 ERR) answering ``message``.

    Sending and receiving application/facility are the original's swapped; MSA-2 is
    its control ID; MSA-3 the reason a person reads; with an error an ERR segment
    (ERR-2 location, ERR-3 Table 0357 code, ERR-4 severity E, ERR-8 the reason; for a v2.3 - v2.4
    message also ERR-1, the only ERR field those versions have). MSH-10 is a new unique ID.
    MSH-18 repeats the original's when it declared one (send the ACK in that charset).
    ``message`` may be None when the original could not be parsed.
    """
    enc = message.encoding if message is not None else DEFAULT_ENCODING
    msh = message.first("MSH") if message is not None else None

    def raw(segment: Segment | None, field: int) -> str:
        return message.raw(segment, field) if message is not None else ""

    event = message.message_type[1] if message is not None else ""
    version = (message.value(msh, 12) if message is not None else "") or "2.5"
    s = enc.field
    header = [
        "MSH",
        enc.msh2,
        escape(application, enc),
        "",
        raw(msh, 3),
        raw(msh, 4),
        hl7_timestamp(),
        "",
        f"ACK{enc.component}{event}{enc.component}ACK" if event else "ACK",
        escape(control_id or new_control_id(), enc),
        raw(msh, 11) or "P",
        version,
    ]
    if raw(msh, 18):
        header += ["", "", "", "", "", raw(msh, 18)]
    msa = ["MSA", code, escape(message.control_id if message is not None else "", enc), escape(text, enc)]
    segments = [s.join(header), s.join(msa)]
    if error is not None:
        c = enc.component
        seg, _, field = error.location.partition("-")
        located = field.isdigit() and SEGMENT_ID.match(seg)
        where = f"{seg}{c}1{c}{field}" if located else escape(error.location, enc)
        meaning = escape(ERROR_CODES.get(error.error_code, "Error"), enc)
        eld = ""
        if version in ELD_VERSIONS:  # ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&system
            t = enc.subcomponent
            named = SEGMENT_ID.match(seg) is not None  # "PID-3", or a whole segment as "PID"
            eld = f"{seg if named else ''}{c}{1 if named else ''}{c}{field if located else ''}{c}"
            eld += f"{error.error_code}{t}{meaning}{t}HL70357"
        err = [
            "ERR",
            eld,
            where,
            f"{error.error_code}{c}{meaning}{c}HL70357",
            "E",
            "",
            "",
            "",
            escape(error.reason, enc),
        ]
        segments.append(s.join(err))
    return "\r".join(segments) + "\r"


def encode_ack(ack: str, message: Message | None) -> bytes:
    """The ACK in the character set the original declared in MSH-18 (what it cannot hold becomes '?'),
    else UTF-8 (HL7 v2.5 2.15.9.18)."""
    charset = message.charset if message is not None else None
    declared = message is not None and bool(message.value(message.first("MSH"), 18))
    return ack.encode(charset.codec if charset is not None and declared else "utf-8", errors="replace")


__all__ = ["ELD_VERSIONS", "build_ack", "encode_ack", "hl7_timestamp", "new_control_id"]
