"""PS3.18 §8.7 media type negotiation: one test row per rule of web/accept.py."""

from __future__ import annotations

import pytest

from minipacs.web.accept import (
    DICOM_JSON,
    DICOM_XML,
    REFUSED,
    FrameChoice,
    MediaRange,
    frame_choice,
    instance_syntax,
    metadata_media_type,
    parse_accept,
)

ELE, ILE, BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
JPEG, J2K = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"
MPEG2 = "1.2.840.10008.1.2.4.100"
JPEG_LOSSLESS, RLE = (
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.5",
)  # MPEG2 Main Profile / Main Level: no decoder in pydicom
RLE, JLS = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"


@pytest.mark.parametrize(
    "header,expected",
    [
        ("", []),
        ('multipart/related; type="application/dicom"', [MediaRange("application/dicom")]),
        ("multipart/related; type=application/dicom; transfer-syntax=*", [MediaRange("application/dicom", "*")]),
        ('multipart/related;type="image/x-jls";transfer-syntax=1.2.840.10008.1.2.4.80', [MediaRange("image/jls", JLS)]),
        ("multipart/related", [MediaRange("")]),
        ("*/*", [MediaRange("*/*")]),
        ('multipart/related; type="*"', [MediaRange("*/*")]),
        ("application/dicom; q=0.5, image/jpeg", [MediaRange("image/jpeg"), MediaRange("application/dicom", "", 0.5)]),
        ("image/png; q=0, image/jpeg", [MediaRange("image/jpeg")]),
        # every range refused: one range that matches nothing (a 406), never "no Accept header"
        ("image/png; q=0", [MediaRange(REFUSED)]),
        ('multipart/related; type="application/dicom"; q=0, */*; q=0', [MediaRange(REFUSED)]),
        ("", []),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, multipart/related; '
            'type="application/dicom"; transfer-syntax=*',
            [MediaRange("application/dicom", ELE), MediaRange("application/dicom", "*")],
        ),
        ("image/jpeg; q=nonsense", [MediaRange("image/jpeg")]),
        ("image/jpeg; q=nan, image/png; q=inf", [MediaRange("image/jpeg"), MediaRange("image/png")]),
    ],
)
def test_parse_accept(header: str, expected: list[MediaRange]) -> None:
    assert parse_accept(header) == expected


@pytest.mark.parametrize(
    "accept,stored,expected",
    [
        # PS3.18 Table 8.7.3-2 (2016c on): without transfer-syntax the Default, Explicit VR Little Endian
        ("", J2K, ELE),  # no Accept
        ('multipart/related; type="application/dicom"', J2K, ELE),
        ("*/*", JPEG, JPEG),  # lossy as received: 8.7.3.4 Note 2 permits it
        ("", JPEG_LOSSLESS, ELE),
        ("*/*", RLE, ELE),
        ('multipart/related; type="application/dicom"', MPEG2, MPEG2),  # nothing here decodes it: as stored
        ('multipart/related; type="application/dicom"; transfer-syntax=*', J2K, J2K),  # the server's choice
        ('multipart/related; type="application/dicom"; transfer-syntax=*', JPEG, JPEG),
        ("*/*", ILE, ELE),  # PS3.18 8.7.3: Implicit VR and Big Endian "shall not be used with Web Services"
        ("", ILE, ELE),
        ('multipart/related; type="application/dicom"', BE, ELE),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', ILE, ELE),
        (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}', J2K, ELE),  # decompress
        (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}', ILE, ELE),  # re-encode
        (f'multipart/related; type="application/dicom"; transfer-syntax={ILE}', ELE, None),  # not for the web
        (f'multipart/related; type="application/dicom"; transfer-syntax={ILE}', ILE, ILE),  # as stored, though
        (f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', J2K, J2K),  # asked = stored
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', ELE, None),  # no compressing
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', "1.2.3.4.private", None),
        ('multipart/related; type="application/octet-stream"', ELE, None),  # not a DICOM media type
        ('multipart/related; type="application/dicom"; q=0', J2K, None),  # refused, not "no Accept"
    ],
)
def test_instance_syntax(accept: str, stored: str, expected: str | None) -> None:
    assert instance_syntax(parse_accept(accept), stored) == expected


NATIVE = FrameChoice("application/octet-stream", ELE, False)
DECODE = FrameChoice("application/octet-stream", ELE, True)


@pytest.mark.parametrize(
    "accept,stored,expected",
    [
        # native stored: octets as they are, whatever the wording
        ("", ELE, NATIVE),
        ('multipart/related; type="application/octet-stream"', ILE, NATIVE),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', ELE, NATIVE),
        ("multipart/related; type=*/*", ELE, NATIVE),
        ("", BE, DECODE),  # big endian: swapped through a decode
        ('multipart/related; type="image/jpeg"', ELE, None),  # we do not compress
        # compressed stored: as stored by its media type, octet-stream with its syntax or *, or */*
        ('multipart/related; type="image/jpeg"', JPEG, FrameChoice("image/jpeg", JPEG, False)),
        (f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}', JPEG, FrameChoice("image/jpeg", JPEG, False)),
        ('multipart/related; type="image/*"', J2K, FrameChoice("image/jp2", J2K, False)),
        ('multipart/related; type="image/dicom-rle"', RLE, FrameChoice("image/dicom-rle", RLE, False)),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            J2K,
            FrameChoice("application/octet-stream", J2K, False),
        ),
        (
            f'multipart/related; type="application/octet-stream"; transfer-syntax={JLS}',
            JLS,
            FrameChoice("application/octet-stream", JLS, False),
        ),
        # anything, no transfer syntax: the Default (PS3.18 8.7.3.3): decompressed unless lossy
        ('multipart/related; type="*/*"', JLS, DECODE),
        ("*/*", RLE, DECODE),
        ('multipart/related; type="*/*"', JPEG, FrameChoice("image/jpeg", JPEG, False)),
        ("*/*", "1.2.840.10008.1.2.4.91", FrameChoice("image/jp2", "1.2.840.10008.1.2.4.91", False)),
        # compressed stored, decompressed: octet-stream without syntax or with Explicit VR LE, no Accept, bare multipart
        ('multipart/related; type="application/octet-stream"', J2K, DECODE),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}', JPEG, DECODE),
        ("", RLE, DECODE),
        ("multipart/related", JPEG, DECODE),
        (f"multipart/related; type=*/*; transfer-syntax={ELE}", JPEG, DECODE),
        # neither
        ('multipart/related; type="image/jpeg"', J2K, None),
        (f'multipart/related; type="image/jp2"; transfer-syntax={JPEG}', J2K, None),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.201', J2K, None),
        ("", "1.2.3.4.private", None),
        # the first acceptable range wins
        (
            'multipart/related; type="image/jpeg", multipart/related; type="image/jp2"',
            J2K,
            FrameChoice("image/jp2", J2K, False),
        ),
    ],
)
def test_frame_choice(accept: str, stored: str, expected: FrameChoice | None) -> None:
    assert frame_choice(parse_accept(accept), stored) == expected


def test_frame_choice_content_type() -> None:
    assert FrameChoice("image/jp2", J2K, False).content_type == f"image/jp2; transfer-syntax={J2K}"


XML_PARTS = 'multipart/related; type="application/dicom+xml"'


@pytest.mark.parametrize(
    "accept,expected",
    [
        ("", DICOM_JSON),  # no Accept: the Default (Tables 10.4.4-1, 10.6.4-1)
        ("application/dicom+json", DICOM_JSON),
        (XML_PARTS, DICOM_XML),  # Required: multipart/related; type="application/dicom+xml"
        ("multipart/related; type=application/dicom+xml", DICOM_XML),  # the type unquoted
        ("application/dicom+xml", DICOM_XML),  # asked for XML itself: answered as the multipart
        ("*/*", DICOM_JSON),  # PS3.18 8.7.7: */* matches the Default
        ("application/*", DICOM_JSON),
        ("multipart/related", DICOM_JSON),  # no type: the resource's default
        ("image/png", DICOM_JSON),  # none supported: the Default (Table 8.7.3-1), not a 406
        (f"{XML_PARTS}; q=0.5, application/dicom+json", DICOM_JSON),  # q decides
        (f"{XML_PARTS}, application/dicom+json; q=0.5", DICOM_XML),
        (f"{XML_PARTS}; q=0.5, */*; q=0.4", DICOM_XML),
        (f"{XML_PARTS}; q=0.5, */*", DICOM_JSON),  # */* (q=1) matches JSON, the Default
        # RFC 9110 12.5.1: JSON gets the q of its most specific range, not of the wildcard
        (f"application/dicom+json; q=0.2, {XML_PARTS}; q=0.5, */*", DICOM_XML),
        (f"{XML_PARTS}, application/dicom+json", DICOM_XML),  # a tie: the one listed first
        (f"application/dicom+json, {XML_PARTS}", DICOM_JSON),
        (f"{XML_PARTS}; q=0", DICOM_JSON),  # q=0: not acceptable
        (f"{XML_PARTS}; q=nonsense", DICOM_XML),  # a q that is no number counts as 1
        (f"image/jpeg; q=0.9, {XML_PARTS}; q=0.1", DICOM_XML),  # the only supported one
    ],
)
def test_metadata_media_type(accept: str, expected: str) -> None:
    """PS3.18 8.7.8.1 and Table 8.7.3-1 for Metadata and search results: XML only when preferred."""
    assert metadata_media_type(parse_accept(accept)) == expected
