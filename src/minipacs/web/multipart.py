"""An incremental multipart parser (RFC 2046 §5.1; multipart/related RFC 2387, PS3.18 §8.6.1.2;
multipart/form-data RFC 7578): bytes go in as they arrive, events come out, nothing is kept
but a few bytes of look-behind and the part headers being read.

The body is read as RFC 2046 §5.1.1 defines it: a delimiter is CRLF "--" boundary at the start
of a line (the CRLF belongs to the delimiter, not to the part before it), the first one may
stand at the very start of the body; after it come optional spaces or tabs and CRLF, or "--"
for the closing delimiter. Bytes before the first delimiter (the preamble) and after the
closing one (the epilogue) are ignored. A part's headers end at an empty line; a part may have
none (its Content-Type is then "": PS3.18 reads such a part as ``application/dicom``).

Limits: part headers longer than :data:`MAX_PART_HEADER_BYTES` are a 400; more than
``max_parts`` parts a 413 as soon as the one too many starts (requests: ``max_upload_parts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from minipacs.web.errors import HttpError

#: Most bytes of one part's headers (a browser's form-data part head is ~150 bytes); more: 400.
MAX_PART_HEADER_BYTES: Final = 16 * 1024
#: Most bytes between a delimiter and its CRLF (RFC 2046 allows transport padding there); more: 400.
_MAX_PADDING: Final = 1024


@dataclass(frozen=True)
class PartStart:
    """A part begins; its headers by lower-cased name."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class PartEnd:
    """The part that began last is complete (its delimiter arrived)."""


PART_END: Final = PartEnd()
#: What :meth:`MultipartParser.feed` returns: part starts, content bytes, part ends, in order.
Event = PartStart | bytes | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _CONTENT, _EPILOGUE = range(5)


def _broken(message: str) -> HttpError:
    return HttpError(400, "bad_multipart", f"the multipart body is broken: {message}; nothing was stored")


class MultipartParser:
    """Feed it the body piece by piece (:meth:`feed`), then call :meth:`close`."""

    def __init__(self, boundary: str, max_parts: int | None = None) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The body is read as if a CRLF came first, so a delimiter at offset 0 is found like any other.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._max_parts = max_parts
        self.parts = 0
        self.size = 0  # bytes fed

    @property
    def done(self) -> bool:
        """The closing delimiter has arrived."""
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        self.size += len(data)
        if self._state == _EPILOGUE:
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body is over: HttpError 400 unless the closing delimiter arrived."""
        if self._state != _EPILOGUE:
            where = "before its first boundary delimiter" if self._state == _PREAMBLE else "inside a part"
            raise HttpError(
                400,
                "bad_multipart",
                f"the multipart body ended {where}, without the closing delimiter "
                f"(--boundary--), after {self.size} bytes: it was cut off; nothing was stored",
            )

    def _step(self, events: list[Event]) -> bool:
        """Handle what the buffer allows in the current state; False when more bytes are needed."""
        buf, delimiter = self._buf, self._delimiter
        if self._state in (_PREAMBLE, _CONTENT):
            found = buf.find(delimiter)
            if found < 0:
                keep = len(delimiter) - 1  # a delimiter may be arriving split across pieces
                if len(buf) > keep:
                    if self._state == _CONTENT:
                        events.append(bytes(buf[: len(buf) - keep]))
                    del buf[: len(buf) - keep]
                return False
            if self._state == _CONTENT:
                if found:
                    events.append(bytes(buf[:found]))
                events.append(PART_END)
            del buf[: found + len(delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _EPILOGUE
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                # padding so far, perhaps with the CR of its CRLF (the LF in the next piece)
                padding = buf[:-1] if buf.endswith(b"\r") else buf
                if len(buf) > _MAX_PADDING or padding.strip(b" \t"):
                    raise _broken("a boundary delimiter is not followed by CRLF")
                return False
            if buf[:end].strip(b" \t"):
                raise _broken("a boundary delimiter is not followed by CRLF")
            del buf[: end + 2]
            self.parts += 1
            if self._max_parts is not None and self.parts > self._max_parts:
                raise HttpError(
                    413,
                    "too_many_parts",
                    f"the request has more than {self._max_parts} parts; at most {self._max_parts} are "
                    "accepted in one request (max_upload_parts): send them in several; nothing was stored",
                )
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf[:2] == b"\r\n":  # no headers at all
                del buf[:2]
                events.append(PartStart({}))
                self._state = _CONTENT
                return True
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_PART_HEADER_BYTES:
                    raise _broken(f"a part's headers run on beyond {MAX_PART_HEADER_BYTES} bytes")
                return False
            if end > MAX_PART_HEADER_BYTES:
                raise _broken(f"a part's headers run on beyond {MAX_PART_HEADER_BYTES} bytes")
            events.append(PartStart(_headers(bytes(buf[:end]))))
            del buf[: end + 4]
            self._state = _CONTENT
            return True
        return False


def _headers(raw: bytes) -> dict[str, str]:
    """RFC 5322 §2.2 header fields (folded lines unfolded), names lower-cased."""
    headers: dict[str, str] = {}
    name = ""
    for line in raw.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()
            continue
        field, sep, value = line.partition(":")
        if not sep or not field.strip():
            raise _broken(f"a part header line {line[:60]!r} is not 'Name: value'")
        name = field.strip().lower()
        headers[name] = value.strip()
    return headers


__all__ = ["MAX_PART_HEADER_BYTES", "PART_END", "Event", "MultipartParser", "PartEnd", "PartStart"]
