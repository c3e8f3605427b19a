"""HL7 v2 acknowledgements: the ACK answering a message (HL7 v2.5 2.9, 2.14.1), in its character set.

MSA-1 is a Table 0008 code (hl7/errors.py); a refusal carries an ERR segment with the
Table 0357 code, where the problem is, and the reason a person reads.
"""

from __future__ import annotations

from datetime import UTC, datetime

from minipacs.hl7.errors import ERROR_CODES, HL7Error
from minipacs.hl7.message import DEFAULT_ENCODING, SEGMENT_ID, Message, Segment, escape


def hl7_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


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
    (ERR-2 location, ERR-3 Table 0357 code, ERR-4 severity E, ERR-8 the reason).
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
        escape(control_id or f"ACK{hl7_timestamp()}", enc),
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
        where = f"{seg}{c}1{c}{field}" if field.isdigit() and SEGMENT_ID.match(seg) else escape(error.location, enc)
        err = [
            "ERR",
            "",
            where,
            f"{error.error_code}{c}{escape(ERROR_CODES.get(error.error_code, 'Error'), enc)}{c}HL70357",
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


__all__ = ["build_ack", "encode_ack", "hl7_timestamp"]
