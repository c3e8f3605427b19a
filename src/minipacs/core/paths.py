"""Identifiers that become storage paths, and the storage layout.

Every blob key is built here from UIDs that passed :func:`validate_uid`, so no
value a peer sends can name a file outside the blob root.
"""

from __future__ import annotations

import re
from typing import Final

from minipacs.core.errors import InvalidIdentifier

#: PS3.5 §9.1: a UID is at most 64 characters.
UID_MAX_LENGTH: Final = 64

#: PS3.5 §9.1: components of digits separated by "."; a component has no
#: leading zero unless it is the single digit "0". [0-9], not \d: no Unicode digits.
_UID_SYNTAX: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*", re.ASCII)

#: Suffix of a stored instance file (PS3.10 file).
INSTANCE_SUFFIX: Final = ".dcm"


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


def instance_key(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """Blob key of an instance: ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

    Raises InvalidIdentifier naming the first attribute that is not a valid UID.
    """
    study = validate_uid("StudyInstanceUID", study_instance_uid)
    series = validate_uid("SeriesInstanceUID", series_instance_uid)
    sop = validate_uid("SOPInstanceUID", sop_instance_uid)
    return f"{study}/{series}/{sop}{INSTANCE_SUFFIX}"


__all__ = ["INSTANCE_SUFFIX", "UID_MAX_LENGTH", "instance_key", "strip_uid_padding", "validate_uid"]
