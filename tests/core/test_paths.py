from __future__ import annotations

import pytest

from minipacs.core.errors import InvalidIdentifier
from minipacs.core.paths import (
    COPY_TOKEN_HEX,
    instance_key,
    new_copy_token,
    sop_instance_uid_of_key,
    strip_uid_padding,
    validate_uid,
)

GOOD_UIDS = [
    "1.2.840.10008.1.2",
    "0",
    "1.0.2",
    "2.25.269899350558220646675026437247725323385",
    "1." + "2" * 62,  # exactly 64 characters
]

HOSTILE_UIDS = [
    "",
    "../etc",
    "..",
    "1.2/3",
    "1.2\\3",
    "1.2.3\x00",
    "1.2\x00.3",
    "/etc/passwd",
    "1..2",
    ".1.2",
    "1.2.",
    "1.02",
    "01.2",
    "1.2.3 ",
    " 1.2.3",
    "1.2.a",
    "1.٣",  # an Arabic-Indic digit
    "1." + "2" * 63,  # 65 characters
    "1.2\n",
    "C:1.2",
]


@pytest.mark.parametrize("uid", GOOD_UIDS)
def test_good_uid_is_accepted(uid: str) -> None:
    assert validate_uid("SOPInstanceUID", uid) == uid


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_hostile_uid_is_refused_naming_attribute_and_value(uid: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        validate_uid("StudyInstanceUID", uid)
    message = str(caught.value)
    assert "StudyInstanceUID" in message
    if uid:
        assert repr(uid)[:20] in message


def test_long_value_is_truncated_in_message() -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        validate_uid("SeriesInstanceUID", "9" * 5000)
    assert len(str(caught.value)) < 300


def test_instance_key_layout() -> None:
    assert instance_key("1.2", "1.2.3", "1.2.3.4", "0123456789abcdef") == "1.2/1.2.3/1.2.3.4_0123456789abcdef.dcm"


def test_every_copy_gets_its_own_key() -> None:
    """Issue 10: a re-sent copy must never land on the path of one a deletion is about to remove."""
    keys = {instance_key("1.2", "1.2.3", "1.2.3.4") for _ in range(10_000)}
    assert len(keys) == 10_000
    assert all(k.startswith("1.2/1.2.3/1.2.3.4_") and k.endswith(".dcm") for k in keys)
    assert all(len(k) == len("1.2/1.2.3/1.2.3.4_.dcm") + COPY_TOKEN_HEX for k in keys)


def test_longest_key_fits_the_index_column() -> None:
    uid = "1." + "2" * 62
    assert len(instance_key(uid, uid, uid)) == 215 <= 255  # index/schema.py Instance.blob_key String(255)


@pytest.mark.parametrize("token", ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "../../../../etc/"])
def test_a_copy_token_is_sixteen_hex_digits(token: str) -> None:
    with pytest.raises(ValueError, match="copy token"):
        instance_key("1.2", "1.2.3", "1.2.3.4", token)
    assert len(new_copy_token()) == COPY_TOKEN_HEX


@pytest.mark.parametrize(
    ("key", "uid"),
    [
        ("1.2/1.2.3/1.2.3.4_0123456789abcdef.dcm", "1.2.3.4"),
        ("1.2/1.2.3/1.2.3.4.dcm", "1.2.3.4"),  # an archive written before per-copy keys
        ("1.2/1.2.3/1.2.3.4_xyz.dcm", ""),
        ("1.2/1.2.3/1.2.3.4_0123456789abcdef", ""),
        ("1.2/1.2.3/notes.txt", ""),
        ("1.2/1.2.3/a.dcm", ""),
    ],
)
def test_the_sop_instance_uid_of_a_key(key: str, uid: str) -> None:
    assert sop_instance_uid_of_key(key) == uid


@pytest.mark.parametrize(
    ("study", "series", "sop", "attribute"),
    [
        ("../x", "1.2", "1.3", "StudyInstanceUID"),
        ("1.1", "1/2", "1.3", "SeriesInstanceUID"),
        ("1.1", "1.2", "..", "SOPInstanceUID"),
    ],
)
def test_instance_key_names_the_bad_attribute(study: str, series: str, sop: str, attribute: str) -> None:
    with pytest.raises(InvalidIdentifier, match=attribute):
        instance_key(study, series, sop)


def test_padding_is_stripped() -> None:
    assert strip_uid_padding("1.2.3\x00") == "1.2.3"
    assert strip_uid_padding("1.2.3 ") == "1.2.3"
