"""Why an association was rejected or aborted: PS3.8 Table 9-21 (A-ASSOCIATE-RJ) and Table 9-26 (A-ABORT).

The terms are spelled as the standard spells them ("calling-AE-title-not-recognized");
:func:`in_words` gives them to a person ("calling AE title not recognized").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Source:
    """Who rejected or aborted: the standard's name, and the short one our log lines use."""

    term: str
    short: str


# PS3.8 Table 9-21: A-ASSOCIATE-RJ Result, Source and Reason/Diag. (the reason depends on the source).
REJECT_RESULTS: Final[Mapping[int, str]] = {1: "rejected-permanent", 2: "rejected-transient"}
REJECT_SOURCES: Final[Mapping[int, Source]] = {
    1: Source("DICOM UL service-user", "service-user"),
    2: Source("DICOM UL service-provider (ACSE related function)", "service-provider (ACSE)"),
    3: Source("DICOM UL service-provider (Presentation related function)", "service-provider (presentation)"),
}
REJECT_REASONS: Final[Mapping[tuple[int, int], str]] = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}

# PS3.8 Table 9-26: A-ABORT Source and Reason/Diag. (the reason is significant for source 2 only).
ABORT_SOURCES: Final[Mapping[int, Source]] = {
    0: Source("DICOM UL service-user (initiated abort)", "service-user"),
    1: Source("reserved", "reserved"),
    2: Source("DICOM UL service-provider (initiated abort)", "service-provider"),
}
ABORT_REASONS: Final[Mapping[int, str]] = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    3: "reserved",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}


def in_words(term: str) -> str:
    """A term of the tables above for a person: "unexpected-PDU" -> "unexpected PDU"."""
    return term.replace("-", " ")


__all__ = [
    "ABORT_REASONS",
    "ABORT_SOURCES",
    "REJECT_REASONS",
    "REJECT_RESULTS",
    "REJECT_SOURCES",
    "Source",
    "in_words",
]
