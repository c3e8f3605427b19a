"""services/doctor.py against our own listeners in process (issue 15): the issue's sentence for a node that
does not know our AE title (PS3.8 A-ASSOCIATE-RJ 1/1/3), a called title it does not answer to (1/1/7),
a node at its association limit (2/3/2, transient), step 1's time-out, and every rejection reason worded."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from minipacs.core.access import AccessPolicy, AccessRules
from minipacs.dicom.reasons import REJECT_REASONS
from minipacs.net.association import AssociationSettings
from minipacs.net.dul import Timeouts
from minipacs.services import doctor_verdicts as words
from minipacs.services.doctor import Doctor, DoctorSettings, NodeReport
from minipacs.services.outbound import Address, Outbound, OutboundSettings
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP

TIMEOUTS = Timeouts(acse=5, dimse=5, idle=5)


def _doctor(connect_timeout: float = 5.0) -> Doctor:
    outbound = Outbound(OutboundSettings(AssociationSettings("MINIPACS", timeouts=TIMEOUTS), connect_timeout=5.0))
    return Doctor(outbound, DoctorSettings("MINIPACS", 11112, connect_timeout=connect_timeout))


def _check(server_kw: dict[str, object], called: str = "PEER", steps: Sequence[str] = ()) -> NodeReport:
    async def run() -> NodeReport:
        server = DicomServer("PEER", [VerificationSCP()], host="127.0.0.1", port=0, timeouts=TIMEOUTS, **server_kw)  # type: ignore[arg-type]
        await server.start()
        try:
            return await _doctor().check(Address(called, "127.0.0.1", server.port))
        finally:
            await server.close(grace=1.0)

    return asyncio.run(run())


def test_node_that_does_not_know_our_title_says_so_in_the_issues_words() -> None:
    closed = AccessPolicy(AccessRules(ae_title="PEER", allow_unregistered=frozenset()))
    report = _check({"access": closed})
    step = report.failed
    assert step is not None and (step.number, step.name) == (2, "associate")
    assert step.verdict.startswith("the node rejected the association permanently: calling AE title not recognized")
    assert f"{step.cause}: {step.fix}".startswith(
        "the node does not know our AE title MINIPACS: register it there with our address 127.0.0.1 and port 11112"
    )


def test_called_title_not_answered_and_association_limit() -> None:
    report = _check({"check_called_aet": True}, called="WRONG")
    step = report.failed
    assert step is not None and "called AE title not recognized" in step.verdict
    assert "does not answer to the title WRONG" in step.cause
    full = _check({"max_associations": 0})
    step = full.failed
    assert step is not None and step.verdict.startswith("the node rejected the association for now (transient)")
    assert step.cause == "the node has reached its limit of simultaneous associations"


def test_a_verification_only_node_passes_steps_1_to_3_and_fails_4() -> None:
    report = _check({})
    assert [(s.number, s.outcome) for s in report.steps] == [(1, "ok"), (2, "ok"), (3, "ok"), (4, "failed")]
    assert report.steps[2].details["median_ms"] < 20  # our own listener sets TCP_NODELAY
    assert report.steps[3].verdict.startswith("the node accepts none of the query/retrieve models")


def test_step_1_times_out_and_says_what_it_usually_means() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        port = listening.getsockname()[1]
        report = asyncio.run(_doctor(connect_timeout=1e-9).check(Address("SLOW", "127.0.0.1", port)))
    (step,) = report.steps
    assert step.outcome == "failed" and step.verdict == f"no answer from 127.0.0.1:{port} within 1e-09 s"
    assert "firewall silently drops" in step.cause


@pytest.mark.parametrize("source_reason", sorted(REJECT_REASONS))
def test_every_rejection_reason_has_a_cause_and_a_fix(source_reason: tuple[int, int]) -> None:
    source, reason = source_reason
    w = words.rejected(source, reason, True, ours="MINIPACS", us=words.us("", 104), theirs="PACS", host="h", wire="...")
    assert w.cause and w.fix and "{" not in w.cause + w.fix


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [
        ("doctor_parallel", 0, 1),
        ("diagnostics_window", 0, 1),
        ("doctor_move_wait", 0.0, 0.001),
        ("diagnostics_interval", 0.0, 0.001),
    ],
)
def test_doctor_settings_at_their_limits(key: str, bad: float, good: float) -> None:
    from minipacs.config import ConfigError, Settings

    Settings(**{key: good}).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=key):
        Settings(**{key: bad}).validate()  # type: ignore[arg-type]


def test_cli_refuses_parallel_below_one(tmp_path: object) -> None:
    from minipacs.cli.main import main

    assert main(["doctor", "--data", str(tmp_path), "--parallel", "0"]) == 2
    assert main(["doctor", "--data", str(tmp_path), "--wait", "0"]) == 2
