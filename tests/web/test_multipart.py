"""The incremental multipart parser (web/multipart.py; RFC 2046 §5.1, PS3.18 §8.6.1.2)."""

from __future__ import annotations

import pytest

from minipacs.web.errors import HttpError
from minipacs.web.multipart import MAX_PART_HEADER_BYTES, PART_END, Event, MultipartParser, PartStart
from minipacs.web.transfer import boundary_of, split_multipart

TWO = (
    b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst\r\npart\r\n"
    b"--XyZ\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n\x00\r\n--XyY\r\n"
    b"--XyZ--\r\n"
)
EXPECTED = [
    ("application/dicom", b"first\r\npart"),
    ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", b"\x00\r\n--XyY"),
]


def collect(events: list[Event]) -> list[tuple[str, bytes]]:
    parts: list[tuple[str, bytes]] = []
    content_type, content = "", b""
    for event in events:
        if isinstance(event, PartStart):
            content_type, content = event.content_type, b""
        elif event is PART_END:
            parts.append((content_type, content))
        else:
            assert isinstance(event, bytes)
            content += event
    return parts


def parse(pieces: list[bytes], boundary: str = "XyZ", max_parts: int | None = None) -> list[tuple[str, bytes]]:
    parser = MultipartParser(boundary, max_parts)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    parser.close()
    return collect(events)


def test_two_parts_whole() -> None:
    """The delimiter's CRLF belongs to it: a part may end in CRLF or hold "--XyY" without being cut."""
    assert parse([TWO]) == EXPECTED


@pytest.mark.parametrize("split", range(1, len(TWO)))
def test_the_body_split_anywhere_parses_the_same(split: int) -> None:
    """Every split point, including inside "\\r\\n--XyZ", inside the headers and inside "--XyZ--"."""
    assert parse([TWO[:split], TWO[split:]]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert parse([TWO[i : i + 1] for i in range(len(TWO))]) == EXPECTED


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"This is a preamble.\r\n--XyZ\r\n\r\nbody\r\n--XyZ--\r\nepilogue with --XyZ in it\r\n"
    assert parse([body]) == [("", b"body")]


def test_a_part_without_headers_has_no_content_type() -> None:
    assert parse([b"--XyZ\r\n\r\n\x01\x02\r\n--XyZ--"]) == [("", b"\x01\x02")]


def test_transport_padding_after_a_delimiter_and_folded_headers() -> None:
    body = b"--XyZ \t\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2\r\n\r\nx\r\n--XyZ--"
    assert parse([body]) == [("application/dicom; transfer-syntax=1.2", b"x")]


PADDED = b"--XyZ \t\r\nContent-Type: application/dicom\r\n\r\nx\r\n--XyZ  \r\n\r\ny\r\n--XyZ--"


@pytest.mark.parametrize("split", range(1, len(PADDED)))
def test_transport_padding_split_anywhere_parses_the_same(split: int) -> None:
    """RFC 2046 5.1.1: a delimiter may be followed by transport padding (spaces, tabs) before its CRLF.
    Found by fuzzing: a piece ending between the padding's CR and its LF ("--XyZ \\t\\r" | "\\n...")
    was a 400, "not followed by CRLF", though the same body in one piece parsed."""
    assert parse([PADDED[:split], PADDED[split:]]) == [("application/dicom", b"x"), ("", b"y")]


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b:c"', "a b:c"),
        ("multipart/related; boundary=XyZ; type=application/dicom", "XyZ"),
        ("multipart/form-data; boundary=----WebKitFormBoundaryAbC", "----WebKitFormBoundaryAbC"),
    ],
)
def test_quoted_and_plain_boundary_parameters(header: str, boundary: str) -> None:
    assert boundary_of(header) == boundary
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nX\r\n--{boundary}--\r\n".encode()
    assert parse([body], boundary) == [("application/dicom", b"X")]


@pytest.mark.parametrize(
    "cut",
    [
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst",  # inside a part's content
        b"--XyZ\r\nContent-Type: applica",  # inside the headers
        b"--XyZ\r\n\r\nfirst\r\n--XyZ",  # just after a delimiter
        b"preamble only",
        b"",
    ],
)
def test_a_truncated_body_is_a_400(cut: bytes) -> None:
    parser = MultipartParser("XyZ")
    parser.feed(cut)
    with pytest.raises(HttpError) as caught:
        parser.close()
    assert caught.value.status == 400 and "closing delimiter" in str(caught.value)
    assert "nothing was stored" in str(caught.value)


def test_a_delimiter_not_followed_by_crlf_is_a_400() -> None:
    with pytest.raises(HttpError) as caught:
        parse([b"--XyZ\r\n\r\nA\r\n--XyZjunk\r\n\r\nB\r\n--XyZ--"])
    assert caught.value.status == 400 and "not followed by CRLF" in str(caught.value)


def test_part_headers_at_max_part_header_bytes() -> None:
    def body(size: int) -> bytes:
        header = b"X-Pad: " + b"a" * (size - len(b"X-Pad: "))
        return b"--XyZ\r\n" + header + b"\r\n\r\nA\r\n--XyZ--"

    assert parse([body(MAX_PART_HEADER_BYTES)]) == [("", b"A")]
    with pytest.raises(HttpError) as caught:
        parse([body(MAX_PART_HEADER_BYTES + 1)])
    assert caught.value.status == 400 and str(MAX_PART_HEADER_BYTES) in str(caught.value)
    # fed in pieces, the limit holds before the blank line ever arrives
    parser = MultipartParser("XyZ")
    with pytest.raises(HttpError):
        for start in range(0, MAX_PART_HEADER_BYTES * 2, 1000):
            parser.feed(b"--XyZ\r\nX-Pad: " if start == 0 else b"a" * 1000)


def test_max_parts_is_413_when_the_one_too_many_starts() -> None:
    three = b"".join(b"--XyZ\r\n\r\nx\r\n" for _ in range(3)) + b"--XyZ--"
    assert len(parse([three], max_parts=3)) == 3
    parser = MultipartParser("XyZ", max_parts=3)
    events = parser.feed(b"".join(b"--XyZ\r\n\r\nx\r\n" for _ in range(3)))
    assert len(collect(events)) == 2  # the third is still open: no delimiter after it yet
    with pytest.raises(HttpError) as caught:
        parser.feed(b"--XyZ\r\n")
    assert caught.value.status == 413 and "max_upload_parts" in str(caught.value)


def test_content_is_handed_out_as_it_arrives() -> None:
    """Memory stays flat: all but a delimiter's length of look-behind goes out at once."""
    parser = MultipartParser("XyZ")
    parser.feed(b"--XyZ\r\n\r\n")
    out = parser.feed(b"A" * 100_000)
    assert sum(len(e) for e in out if isinstance(e, bytes)) >= 100_000 - len(b"\r\n--XyZ")


def test_split_multipart_uses_the_same_parser() -> None:
    assert [(p.content_type, p.body) for p in split_multipart(TWO, "XyZ")] == EXPECTED
