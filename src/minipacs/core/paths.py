"""Identifiers that become storage paths, and the storage layout.

Every blob key is built here from UIDs that passed :func:`validate_uid`, so no
value a peer sends can name a file outside the blob root.

Each stored copy of an instance gets a key of its own,
``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>_<copy>.dcm``: the UIDs
keep the file findable by hand, ``<copy>`` (:data:`COPY_TOKEN_HEX` random hex
digits) makes it unique, so a re-sent or replacing copy never lands on the path of
an older one that a deletion or a replacement is about to remove. Archives written
before keep their ``<SOPInstanceUID>.dcm`` keys: the index stores each row's key.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

from minipacs.core.errors import InvalidIdentifier

#: PS3.5 §9.1: a UID is at most 64 characters.
UID_MAX_LENGTH: Final = 64

#: PS3.5 §9.1: components of digits separated by "."; a component has no
#: leading zero unless it is the single digit "0". [0-9], not \d: no Unicode digits.
_UID_SYNTAX: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*", re.ASCII)

#: Suffix of a stored instance file (PS3.10 file).
INSTANCE_SUFFIX: Final = ".dcm"

#: Between the SOP Instance UID and the copy token in a file name; never part of a UID.
COPY_SEPARATOR: Final = "_"

#: Hex digits of a copy token: 64 random bits, so two copies of one instance never share a key
#: (the key is at most 3 x 64 + 2 + 1 + 16 + 4 = 215 characters: the index column holds 255).
COPY_TOKEN_HEX: Final = 16

_COPY_TOKEN: Final = re.compile(f"[0-9a-f]{{{COPY_TOKEN_HEX}}}", re.ASCII)


def _shown(value: str, limit: int = 80) -> str:
    """The value as a person should read it in an error: repr, truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_uid(attribute: str, value: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 §9.1), else raise InvalidIdentifier.

    ``attribute`` is the DICOM keyword the value came from, for the message.
    """
    if not value:
        raise InvalidIdentifier(f"{attribute} is empty; a UID is required there")
    if len(value) > UID_MAX_LENGTH:
        raise InvalidIdentifier(
            f"{attribute} {_shown(value)} is {len(value)} characters long; PS3.5 §9.1 allows at most {UID_MAX_LENGTH}"
        )
    if _UID_SYNTAX.fullmatch(value) is None:
        raise InvalidIdentifier(
            f"{attribute} {_shown(value)} is not a valid UID; PS3.5 §9.1 allows only "
            "digit components without leading zeros, separated by single dots"
        )
    return value


def strip_uid_padding(value: str) -> str:
    """Remove the trailing NUL (PS3.5 §9.1) or space padding some senders add."""
    return value.rstrip("\x00 ")


def new_copy_token() -> str:
    """A fresh copy token: :data:`COPY_TOKEN_HEX` hex digits from the OS's random source."""
    return secrets.token_hex(COPY_TOKEN_HEX // 2)


def validate_instance_uids(
    study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> tuple[str, str, str]:
    """The Study, Series and SOP Instance UIDs of an instance, each checked by :func:`validate_uid`;
    InvalidIdentifier names the first that is not a valid UID."""
    return (
        validate_uid("StudyInstanceUID", study_instance_uid),
        validate_uid("SeriesInstanceUID", series_instance_uid),
        validate_uid("SOPInstanceUID", sop_instance_uid),
    )


def instance_key(
    study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, copy_token: str | None = None
) -> str:
    """Blob key of ONE stored copy of an instance:
    ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>_<copy>.dcm``.

    Every call without ``copy_token`` gives a new key (tests pass a fixed token).
    Raises InvalidIdentifier naming the first attribute that is not a valid UID.
    """
    study, series, sop = validate_instance_uids(study_instance_uid, series_instance_uid, sop_instance_uid)
    token = new_copy_token() if copy_token is None else copy_token
    if _COPY_TOKEN.fullmatch(token) is None:
        raise ValueError(f"copy token {token[:40]!r} is not {COPY_TOKEN_HEX} lower-case hex digits")
    return f"{study}/{series}/{sop}{COPY_SEPARATOR}{token}{INSTANCE_SUFFIX}"


def sop_instance_uid_of_key(key: str) -> str:
    """The SOP Instance UID a blob key names: ``…/<uid>_<copy>.dcm`` or (before per-copy keys)
    ``…/<uid>.dcm``; "" for a key of neither form."""
    name = key.rpartition("/")[2]
    if not name.endswith(INSTANCE_SUFFIX):
        return ""
    stem = name[: -len(INSTANCE_SUFFIX)]
    uid, separator, token = stem.partition(COPY_SEPARATOR)
    if separator and _COPY_TOKEN.fullmatch(token) is None:
        return ""
    return uid if _UID_SYNTAX.fullmatch(uid) else ""


__all__ = [
    "COPY_SEPARATOR",
    "COPY_TOKEN_HEX",
    "INSTANCE_SUFFIX",
    "UID_MAX_LENGTH",
    "instance_key",
    "new_copy_token",
    "sop_instance_uid_of_key",
    "strip_uid_padding",
    "validate_instance_uids",
    "validate_uid",
]
