from __future__ import annotations

import pytest

from minipacs.core.errors import InvalidIdentifier
from minipacs.core.paths import instance_key, strip_uid_padding, validate_uid

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
    assert instance_key("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"


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
