"""The DICOM Conformance Statement (services/conformance.py, docs/CONFORMANCE.md): the committed file is
what `minipacs conformance` generates from the running services, and what it claims a server accepts
is what a real peer (pynetdicom) gets accepted over an association, context by context."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from pynetdicom import AE, build_context

from minipacs.cli.conformance import generate
from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES
from minipacs.services.conformance import STORE_STATUS_USES
from minipacs.services.status import NOT_AUTHORIZED, PROCESSING_FAILURE, STORE_ERROR_STATUS, describe
from tests.peers import ServerProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFORMANCE.md"


@pytest.fixture(scope="module")
def generated() -> str:
    return asyncio.run(generate())


def test_the_committed_statement_is_the_generated_one(generated: str) -> None:
    assert DOC.read_text() == generated + "\n", (
        "docs/CONFORMANCE.md is out of date: regenerate it with `minipacs conformance > docs/CONFORMANCE.md`"
    )


def _scp_rows(text: str) -> dict[str, str]:
    """UID -> SOP class name of the acceptor table."""
    section = text.split("## Network services: as an Association Acceptor (SCP)")[1].split("\n## ")[0]
    return {m.group(2): m.group(1) for m in re.finditer(r"^\| (.+?) \| `([0-9.]+)` \| yes \|", section, re.M)}


def _groups(text: str) -> list[tuple[list[str], list[str]]]:
    """(names or 'N Storage SOP Classes', transfer syntax UIDs) of each acceptor group line."""
    section = text.split("Transfer syntaxes accepted, per group of SOP classes:")[1].split("\nA C-GET")[0]
    found = []
    for line in section.strip().splitlines():
        what, _, syntaxes = line[2:].partition(": ")
        found.append((what.split(", "), re.findall(r"`([0-9.]+)`", syntaxes)))
    return found


def test_every_storage_sop_class_is_claimed(generated: str) -> None:
    rows = _scp_rows(generated)
    assert set(STORAGE_SOP_CLASSES) <= set(rows)
    assert f"{len(rows)} SOP classes." in generated


def test_what_the_statement_claims_a_peer_gets_accepted(generated: str, server: ServerProcess) -> None:
    """One SOP class of each group, in every transfer syntax the statement lists for it, proposed by
    pynetdicom: each context accepted; a transfer syntax it does not list (a private one): rejected."""
    rows = _scp_rows(generated)
    by_name = {name: uid for uid, name in rows.items()}
    proposals: list[tuple[str, str]] = []
    for names, syntaxes in _groups(generated):
        first = names[0]
        uid = (
            STORAGE_SOP_CLASSES and next(iter(sorted(STORAGE_SOP_CLASSES)))
            if "Storage SOP Classes" in first
            else by_name[first]
        )
        proposals += [(uid, ts) for ts in syntaxes]
    assert 10 < len(proposals) <= 127
    storage = next(iter(sorted(STORAGE_SOP_CLASSES)))
    ae = AE(ae_title="CONFORMANCE")
    ae.requested_contexts = [build_context(uid, ts) for uid, ts in proposals] + [
        build_context(storage, "1.2.3.4.5.6.7")
    ]
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    try:
        assert assoc.is_established
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        rejected = [c.abstract_syntax for c in assoc.rejected_contexts]  # an AC names no syntax for these
    finally:
        assoc.release()
    assert accepted == set(proposals)
    assert rejected == [storage]  # the private syntax, the one the statement does not list


def test_every_c_store_status_is_stated_with_its_meaning(generated: str) -> None:
    """docs/CONFORMANCE.md lists every status the Storage SCP answers (services/status.py
    STORE_ERROR_STATUS, the class mismatch, access and success), each with its PS3.4/PS3.7 meaning."""
    stated = {code for code, _when in STORE_STATUS_USES}
    assert {code for _kind, code in STORE_ERROR_STATUS} | {0x0000, 0xA900, NOT_AUTHORIZED, PROCESSING_FAILURE} == stated
    section = generated.split("## C-STORE statuses")[1].split("\n## ")[0]
    for code in stated:
        assert f"- {describe(code)}: " in section
        assert "Unknown" not in describe(code) and "Failure: Failure" not in describe(code)
