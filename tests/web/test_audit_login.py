"""User Authentication in the audit trail: UI logins accepted and refused (wrong password, unknown
name, a lockout recorded once), logouts; shown by /api/audit and /ui/audit, and as PS3.15 A.5
User Authentication messages (EventID 110114, EventTypeCode 110122 / 110123, outcome 0 / 4)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

import httpx

from minipacs.core.archive import Archive
from minipacs.core.atna import audit_message
from tests.web.test_auth import TOKENS, USERS

SECRET_NAME = "typed-my-s3cret-as-name"


def _codes(row: dict[str, Any]) -> tuple[str | None, str | None, str | None, list[tuple[str | None, str | None]]]:
    root = ET.fromstring(audit_message(row, "MINIPACS"))
    ident = root.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "E"
    event, kind = ident.find("EventID"), ident.find("EventTypeCode")
    assert event is not None and kind is not None
    users = [(p.get("UserID"), p.get("UserIsRequestor")) for p in root.iter("ActiveParticipant")]
    assert [p.get("NetworkAccessPointID") for p in root.iter("ActiveParticipant")][0] == "127.0.0.1"
    return event.get("csd-code"), kind.get("csd-code"), ident.get("EventOutcomeIndicator"), users


def test_logins_refusals_lockout_and_logout_are_audited(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/ui/login", json={"name": "ada", "password": "a-pass"})
        assert r.status_code == 200
        csrf = r.json()["csrf_token"]
        # requests with a session (or Basic) are not logins: no login row each
        assert (await client.get("/api/audit")).status_code == 200
        anon = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
        assert (await anon.post("/ui/login", json={"name": "ada", "password": "wrong-pw"})).status_code == 401
        r = await anon.post("/ui/login", json={"name": SECRET_NAME, "password": "other-pw"})
        assert r.status_code == 401

        rows = [r for r in (await client.get("/api/audit")).json() if r["action"] != "audit_read"]
        got = [(r["action"], r["actor_kind"], r["actor"], r["address"], r["outcome"]) for r in rows]
        unknown = rows[0]["actor"]
        assert got == [
            ("login", "user", unknown, "127.0.0.1", 4),
            ("login", "user", "ada", "127.0.0.1", 4),
            ("login", "user", "ada", "127.0.0.1", 0),
        ], got
        assert unknown.startswith("unknown #") and [r["detail"] for r in rows] == [
            "refused: unknown user name",
            "refused: wrong password",
            "UI login (JSON), role admin",
        ]
        page = (await client.get("/ui/audit")).text
        assert "refused: wrong password" in page and "failed (outcome 4)" in page and "UI login (JSON)" in page

        r = await client.post("/ui/logout", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 303
        # the third failure locks the address out (login_attempts = 3); refusals then: one row per lockout
        assert (await anon.post("/ui/login", json={"name": "vic", "password": "nope"})).status_code == 401
        for _ in range(4):
            assert (await anon.post("/ui/login", json={"name": "vic", "password": "v-pass"})).status_code == 429
        await anon.aclose()

        rows = [r for r in await archive.audit.query() if r["action"] != "audit_read"]  # test_audit_read.py
        assert [(r["action"], r["actor"], r["outcome"]) for r in rows[:3]] == [
            ("login", "vic", 4),
            ("login", "vic", 4),
            ("logout", "ada", 0),
        ]
        assert rows[0]["detail"].startswith("refused: locked out for 60 s") and rows[1]["detail"] == (
            "refused: wrong password"
        )
        assert len(rows) == 6
        text = json.dumps([{**r, "time": ""} for r in rows])
        for secret in ("a-pass", "wrong-pw", "other-pw", "nope", "v-pass", "s3cret"):
            assert secret not in text  # no password, nor a name that is not a user's, is kept

        by_action = {(r["action"], r["outcome"], r["actor"]): _codes(r) for r in rows}
        assert by_action[("login", 0, "ada")] == ("110114", "110122", "0", [("ada", "true"), ("MINIPACS", "false")])
        assert by_action[("login", 4, "vic")] == ("110114", "110122", "4", [("vic", "true"), ("MINIPACS", "false")])
        assert by_action[("logout", 0, "ada")] == ("110114", "110123", "0", [("ada", "true"), ("MINIPACS", "false")])

    web(body, users=USERS, login_attempts=3, login_lockout_seconds=60)


def test_refused_basic_and_bearer_credentials_are_audited_and_bounded(web: Callable[..., Any]) -> None:
    """PS3.15 A.5.3 User Authentication: a wrong Basic password, an unknown Basic name (as its fingerprint),
    unreadable Basic credentials and an unknown Bearer token each get a refused login row (outcome 4) with
    the request it came with; accepted ones get none (a row per request proves nothing a login row does not).
    Token and unreadable-credential refusals count towards the address's lockout like wrong passwords: past
    ``login_attempts`` the address gets 429s and the trail one row for the lockout, not one per attempt."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        def basic(name: str, password: str) -> dict[str, str]:
            token = base64.b64encode(f"{name}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}

        assert (await client.get("/api/studies", headers=basic("ada", "a-pass"))).status_code == 200
        assert (await client.get("/api/studies", headers={"Authorization": "Bearer tok-123"})).status_code == 200
        assert (await client.get("/api/studies", headers=basic("ada", "wrong-pw"))).status_code == 401
        assert (await client.get("/api/stats", headers=basic(SECRET_NAME, "x"))).status_code == 401
        assert (await client.get("/api/studies", headers={"Authorization": "Basic %%%"})).status_code == 401
        assert (await client.get("/dicom-web/studies", headers={"Authorization": "Bearer guessed"})).status_code == 401
        for _ in range(5):  # locked out now (login_attempts = 4): refused unseen, one row for the lockout
            r = await client.get("/api/studies", headers={"Authorization": "Bearer guessed-again"})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        rows = [r for r in await archive.audit.query() if r["action"] == "login"]
        got = [(r["actor_kind"], r["actor"], r["outcome"], r["detail"]) for r in reversed(rows)]
        assert got[:4] == [
            ("user", "ada", 4, "refused: HTTP Basic credentials on GET /api/studies"),
            ("user", got[1][1], 4, "refused: HTTP Basic credentials on GET /api/stats"),
            ("user", "malformed Basic credentials", 4, "refused: HTTP Basic credentials on GET /api/studies"),
            ("token", "unknown token", 4, "refused: HTTP Bearer credentials on GET /dicom-web/studies"),
        ], got
        assert got[1][1].startswith("unknown #")
        assert len(got) == 5 and got[4][0] == "token" and got[4][3].startswith("refused: locked out for 60 s")
        text = json.dumps([{**r, "time": ""} for r in rows])
        for secret in ("a-pass", "wrong-pw", "s3cret", "guessed", "tok-123"):
            assert secret not in text

    web(body, users=USERS, tokens=TOKENS, login_attempts=4, login_lockout_seconds=60)
