"""Issue 12 item 14: every Error Comment (0000,0902) is an LO of at most 64 characters (PS3.5 Table
6.2-1) written to fit -- a whole sentence that says what to do, never one cut off with "..." -- while
the full sentence stays in the server log. This walks every table and every path that makes one."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

import minipacs.bootstrap  # noqa: F401 - loads every module, so every refusal kind is walked
from minipacs.core import errors
from minipacs.core.nodes import ALL_OPERATIONS
from minipacs.services import status
from minipacs.services.qr_move import destination_comment
from minipacs.services.status import (
    ACCESS_COMMENTS,
    ERROR_COMMENTS,
    STATUS_COMMENTS,
    access_comment,
    error_comment,
)

AE16 = "A" * 16  # the longest AE title (PS3.5 Table 6.2-1)
LONG = (
    "the first clause of a sentence that is far too long for an LO on its own, "
    "and it goes on; the second clause says what to do about it, at length"
)
OPERATIONS = sorted(ALL_OPERATIONS)  # what an access refusal names (echo, store, ...)
#: Refusals that never reach a DIMSE response (HTTP and HL7 only), and abstract bases whose every
#: concrete refusal has its own row.
NOT_DIMSE = {
    "InvalidWorklistEntry",
    "WorklistEntryChanged",
    "OrderRefused",
    "InvalidNode",
    "DataDirectoryInUse",
    "JobConflict",
    "InvalidJob",
    # labels, corrections, compression, retention, de-identification, rules, media: REST, UI and CLI only
    # (no DIMSE request reaches them; labels= is a QIDO-RS / REST search key, not a C-FIND one)
    "InvalidLabel",
    "InvalidCorrection",
    "CorrectionConflict",
    "InvalidPolicy",
    "Spared",
    "InvalidRetentionRule",
    "InvalidDeidOptions",
    "InvalidPixelRegions",
    "PixelCleanError",
    "RejectionNoteError",  # logged and audited after the note was stored: never a response
    "InvalidRule",
    "RuleConflict",
    "MediaError",
}  # and their subclasses (the job queue and the rest: REST and CLI only)
ABSTRACT = {"StepRefused", "InvalidQuery"}


def assert_whole(comment: str) -> None:
    assert 0 < len(comment) <= 64, (len(comment), comment)
    assert not comment.rstrip().endswith(("...", "\u2026")), comment
    assert comment == comment.strip(), comment
    # ends at the end of a word or a closing mark, not in the middle of a cut one
    assert re.search(r"[A-Za-z0-9)'\"]$", comment), comment


def all_subclasses(base: type) -> Iterator[type]:
    for sub in base.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


def table_comments() -> Iterator[str]:
    yield from (text for _, text in ERROR_COMMENTS)
    yield from STATUS_COMMENTS.values()
    yield from (text for _, text in status._CATEGORY_COMMENTS)
    yield status._DEFAULT_COMMENT
    for template in ACCESS_COMMENTS.values():
        for op in OPERATIONS:
            yield template.format(ae=AE16, op=op)


@pytest.mark.parametrize("comment", sorted(set(table_comments())))
def test_every_table_comment_is_a_whole_sentence_within_64_characters(comment: str) -> None:
    assert_whole(comment)


def test_every_refusal_kind_of_the_core_has_its_short_comment() -> None:
    """A new ArchiveError subclass must get a row in ERROR_COMMENTS (or inherit a specific one)."""
    kinds = [k for k, _ in ERROR_COMMENTS]
    for kind in [*all_subclasses(errors.ArchiveError)]:
        if not kind.__module__.startswith("minipacs."):
            continue  # defined by another test
        if kind.__name__ in ABSTRACT or any(base.__name__ in NOT_DIMSE for base in kind.__mro__):
            continue
        assert any(issubclass(kind, k) for k in kinds), f"{kind.__name__} has no Error Comment in ERROR_COMMENTS"


@pytest.mark.parametrize("kind", [k for k, _ in ERROR_COMMENTS], ids=lambda k: k.__name__)
def test_a_long_refusal_gets_its_kinds_comment(kind: type[BaseException]) -> None:
    exc = kind(LONG)
    expected = next(text for k, text in ERROR_COMMENTS if isinstance(exc, k))
    assert error_comment(0x0110, exc) == expected


STATUSES = sorted({*STATUS_COMMENTS, *status.STORAGE, *status.MOVE, *status.FIND, *status.MPPS, 0xC123, 0xA7FF, 0x0001})


@pytest.mark.parametrize("code", STATUSES, ids=lambda c: f"0x{c:04X}")
def test_any_long_reason_becomes_whole_clauses_or_its_status_sentence(code: int) -> None:
    comment = error_comment(code, LONG)
    assert_whole(comment)
    one_clause = "x" * 70 + " cannot be cut anywhere"
    assert_whole(error_comment(code, one_clause))
    assert error_comment(code, one_clause) != one_clause[:61] + "..."


def test_a_reason_that_fits_is_sent_as_it_is_and_clauses_are_never_cut() -> None:
    assert error_comment(0xA700, "over 5 matches (max_results); narrow the query") == (
        "over 5 matches (max_results); narrow the query"
    )
    text = "storing failed (Permission denied); nothing was acknowledged; see the server log"
    assert error_comment(0x0110, text) == "storing failed (Permission denied); nothing was acknowledged"
    assert error_comment(0x0110, "y" * 65) == STATUS_COMMENTS[0x0110]
    assert error_comment(0x0110, "z" * 61 + "...") == STATUS_COMMENTS[0x0110]


@pytest.mark.parametrize("rule", [*ACCESS_COMMENTS, "some other rule"])
@pytest.mark.parametrize("op", OPERATIONS)
def test_access_refusals_name_the_caller_within_64_characters(rule: str, op: str) -> None:
    comment = access_comment(rule, AE16, op, LONG)
    assert_whole(comment)
    if rule in ACCESS_COMMENTS and len(ACCESS_COMMENTS[rule].format(ae=AE16, op=op)) <= 64:
        assert AE16 in comment


@pytest.mark.parametrize("kind", [errors.UnknownDestination, errors.AmbiguousDestination], ids=lambda k: k.__name__)
def test_move_destination_refusals_name_the_destination(kind: type[errors.ArchiveError]) -> None:
    comment = error_comment(0xA801, destination_comment(kind(LONG), AE16))
    assert_whole(comment)
    assert AE16 in comment


def test_suboperation_comments_fit() -> None:
    import inspect

    from minipacs.services import qr_move, qr_retrieve

    for module in (qr_move, qr_retrieve):
        for literal in re.findall(r'progress\.fail\([^)]*?, (f?"[^"]+")\)', inspect.getsource(module)):
            text = eval(literal, {"node": type("N", (), {"ae_title": AE16})()})
            assert_whole(text)
    assert_whole(f"Cannot connect to {AE16}; check its host and port")
    assert_whole(f"over {10**9} matches (max_results); narrow the query")
