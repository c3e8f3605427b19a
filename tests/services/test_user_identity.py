"""User Identity Negotiation (PS3.7 D.3.3.7) enforced: the policy table, then pynetdicom and DCMTK
storescu sending usernames and passcodes to a real listener."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

import minipacs.core.users as users
from minipacs.bootstrap import App, build_app
from minipacs.config import ConfigError, Settings, load_settings
from minipacs.core.model import AssociationRecord
from minipacs.core.users import Role, User, hash_password
from minipacs.dicom.uids import VERIFICATION_SOP_CLASS
from minipacs.net.pdu_items import UserIdentityAC, UserIdentityRQ
from minipacs.services.user_identity import UserIdentityPolicy
from tests.dicomgen import write_ct
from tests.peers import associate_seeing_rejection, dcmtk, run

PASSWORD = "correct horse"
ALICE = User("alice", hash_password(PASSWORD, n=2**10), Role.OPERATOR)


def rq(kind: int, name: str = "alice", passcode: str = "", positive: bool = False) -> UserIdentityRQ:
    return UserIdentityRQ(kind, positive, name.encode(), passcode.encode())


# PS3.7 D.3.3.7 under each dicom_user_identity mode:
# (mode, item, accepted, user recorded, a User Identity AC in the answer, words in the reason)
CASES: list[tuple[str, UserIdentityRQ | None, bool, str, bool, str]] = [
    ("ignore", None, True, "", False, "no user identity sent"),
    ("ignore", rq(2, passcode="wrong"), True, "alice (not checked)", False, "not checked"),
    ("optional", None, True, "", False, "no user identity sent"),
    ("optional", rq(1), True, "alice", False, "username only, no passcode"),
    ("optional", rq(1, positive=True), True, "alice", True, "accepted"),
    ("optional", rq(1, "bob"), False, "bob", False, "user 'bob' is not a configured user"),
    ("optional", rq(2, passcode=PASSWORD, positive=True), True, "alice", True, "username and passcode"),
    ("optional", rq(2, passcode="wrong"), False, "alice", False, "wrong passcode for user 'alice'"),
    ("optional", rq(3, "ticket"), False, "", False, "a Kerberos service ticket cannot be checked here"),
    ("required", None, False, "", False, "no user identity was sent and dicom_user_identity is 'required'"),
    ("required", rq(2, passcode=PASSWORD), True, "alice", False, "accepted"),
    # A bare username proves nothing: "required" refuses it (issue 8 item 13), even a configured user's.
    ("required", rq(1), False, "alice", False, "sent no passcode and dicom_user_identity is 'required'"),
    ("required", rq(1, positive=True), False, "alice", False, "set dicom_trust_usernames = true"),
    ("required", rq(5, "eyJ..."), False, "", False, "a JSON Web Token cannot be checked here"),
]


@pytest.mark.parametrize(("mode", "item", "accepted", "user", "response", "words"), CASES)
def test_policy(mode: str, item: UserIdentityRQ | None, accepted: bool, user: str, response: bool, words: str) -> None:
    check = UserIdentityPolicy(mode, [ALICE]).check(item)
    assert (check.accepted, check.user) == (accepted, user)
    assert check.response == (UserIdentityAC(b"") if response else None)  # empty for types 1 and 2
    assert words in check.why
    assert PASSWORD not in check.why and "wrong" not in check.user


def test_required_trusts_a_bare_username_only_when_configured() -> None:
    trusting = UserIdentityPolicy("required", [ALICE], trust_usernames=True)
    assert trusting.check(rq(1)).accepted
    assert "username only, no passcode" in trusting.check(rq(1)).why
    assert not trusting.check(rq(1, "bob")).accepted  # still a configured user
    assert not trusting.check(rq(2, passcode="wrong")).accepted  # a passcode sent is still checked


def test_a_proven_passcode_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = users.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(users, "verify_password", counting)
    policy = UserIdentityPolicy("required", [ALICE])
    outcomes = [policy.check(rq(2, passcode=p)).accepted for p in (PASSWORD, PASSWORD, "wrong", PASSWORD)]
    assert outcomes == [True, True, False, True]
    assert len(calls) == 2  # the first proof and the wrong one; the repeats come from memory


def test_the_setting() -> None:
    assert Settings().dicom_user_identity == "ignore"
    assert load_settings(env={"MINIPACS_DICOM_USER_IDENTITY": "required"}).dicom_user_identity == "required"
    with pytest.raises(ConfigError, match="dicom_user_identity 'always' must be one of ignore, optional, required"):
        load_settings(env={"MINIPACS_DICOM_USER_IDENTITY": "always"})


# ------------------------------------------------------------------ on the wire


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    base = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title="MINIPACS",
        fsync=False,
        acse_timeout=3.0,
        dimse_timeout=5.0,
        users=(ALICE,),
    )
    app = await build_app(dataclasses.replace(base, **settings))
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


def pynetdicom_echo(
    port: int, kind: int | None, name: str = "alice", passcode: str = "", positive: bool = True
) -> tuple[Any, ...]:
    """(result, source, reason) when rejected, else ("accepted", the User Identity AC's server response)."""
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ext: list[Any] = []
    if kind is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type = kind
        item.primary_field = name.encode()
        if kind == 2:
            item.secondary_field = passcode.encode()
        item.positive_response_requested = positive
        ext.append(item)
    assoc, rj = associate_seeing_rejection(ae, "127.0.0.1", port, ae_title="MINIPACS", ext_neg=ext)
    if assoc.is_established:
        status = assoc.send_c_echo()
        response = assoc.acceptor.user_identity
        assoc.release()
        assert status.Status == 0
        return ("accepted", None if response is None else bytes(response.server_response or b""))
    assert rj is not None, f"neither accepted nor rejected (aborted {assoc.is_aborted})"
    return rj


async def association_log(app: App, count: int) -> list[AssociationRecord]:
    for _ in range(100):
        records = await app.archive.list_associations(20)
        if len(records) >= count:
            return records
        await asyncio.sleep(0.05)
    return await app.archive.list_associations(20)


def test_pynetdicom_identities_against_a_required_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def main() -> tuple[list[tuple[Any, ...]], list[AssociationRecord]]:
        async with serving(tmp_path, dicom_user_identity="required") as app:
            port = app.dicom.port
            calls = [
                (2, "alice", PASSWORD, True),
                (2, "alice", "guessing", True),
                (None, "", "", False),
                (1, "alice", "", False),
                (1, "mallory", "", True),
            ]
            out = [await asyncio.to_thread(pynetdicom_echo, port, *call) for call in calls]
            return out, await association_log(app, len(calls))

    results, records = asyncio.run(main())
    assert results[0] == ("accepted", b"")  # PS3.7 D.3.3.7.2: asked for, and empty for username/passcode
    assert results[1] == (1, 1, 1) and results[2] == (1, 1, 1)  # rejected-permanent, service-user, no reason
    assert results[3] == (1, 1, 1)  # a bare username is not a proven identity (issue 8 item 13)
    assert results[4] == (1, 1, 1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "guessing" not in text and PASSWORD not in text  # never the passcode
    assert "[PYNETDICOM@127.0.0.1:" in text
    assert "association rejected: user identity refused: wrong passcode for user 'alice'" in text
    # a bare username is refused before the user is looked up: the answer tells nothing of who exists
    assert "user identity refused: user 'mallory' sent no passcode" in text
    assert "user identity refused: user 'alice' sent no passcode" in text
    assert "user identity refused: no user identity was sent and dicom_user_identity is 'required'" in text
    by_user = {r.user_identity: r for r in records if r.accepted}
    assert set(by_user) == {"alice"}
    rejected = [r for r in records if not r.accepted]
    assert len(rejected) >= 4 and all("user identity refused" in r.reject_reason for r in rejected)
    assert all(PASSWORD not in r.reject_reason for r in records)


def test_a_slow_passcode_check_does_not_stall_other_associations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scrypt of a passcode runs off the event loop: a peer guessing passwords must not hold
    up everybody else's associations while each guess is hashed."""

    hashing = threading.Event()

    def slow_verify(password: str, hashed: str) -> bool:
        hashing.set()
        time.sleep(3.0)  # a blocking hash, as scrypt is
        return False

    monkeypatch.setattr(users, "verify_password", slow_verify)

    async def main() -> tuple[tuple[Any, ...], tuple[Any, ...], float]:
        async with serving(tmp_path, dicom_user_identity="optional", acse_timeout=10.0) as app:
            port = app.dicom.port

            def another() -> tuple[tuple[Any, ...], float]:
                # Timed in its own thread: the server's loop is what must not be blocked.
                assert hashing.wait(10)  # the guess is being hashed now
                start = time.monotonic()
                answer = pynetdicom_echo(port, None)
                return answer, time.monotonic() - start

            guess = asyncio.to_thread(pynetdicom_echo, port, 2, "alice", "guessing")
            guessed, (other, took) = await asyncio.gather(guess, asyncio.to_thread(another))
            return guessed, other, took

    guessed, other, took = asyncio.run(main())
    assert guessed == (1, 1, 1)
    assert other == ("accepted", None)
    assert took < 2.0, f"an association without identity waited {took:.2f}s behind a passcode check"


def test_ignore_accepts_whatever_is_sent_and_records_it_unchecked(tmp_path: Path) -> None:
    async def main() -> tuple[tuple[Any, ...], list[AssociationRecord]]:
        async with serving(tmp_path) as app:
            result = await asyncio.to_thread(pynetdicom_echo, app.dicom.port, 2, "alice", "nonsense", True)
            return result, await association_log(app, 1)

    result, records = asyncio.run(main())
    assert result == ("accepted", None)  # as before: not checked, so no positive response
    assert records[0].user_identity == "alice (not checked)"


def test_dcmtk_storescu_with_username_and_password(tmp_path: Path) -> None:
    sent = write_ct(tmp_path / "in" / "ct.dcm")

    async def main() -> tuple[Any, Any, Any]:
        async with serving(tmp_path, dicom_user_identity="required") as app:
            base = [dcmtk("storescu"), "-aec", "MINIPACS", "127.0.0.1", str(app.dicom.port), str(sent)]
            right = await asyncio.to_thread(
                run, base[:1] + ["--user", "alice", "--password", PASSWORD, "--pos-response"] + base[1:]
            )
            wrong = await asyncio.to_thread(run, base[:1] + ["--user", "alice", "--password", "nope"] + base[1:])
            none = await asyncio.to_thread(run, base)
            return right, wrong, none

    right, wrong, none = asyncio.run(main())
    assert right.returncode == 0, right.stdout + right.stderr
    assert wrong.returncode != 0 and "Association Rejected" in wrong.stdout + wrong.stderr
    assert none.returncode != 0
