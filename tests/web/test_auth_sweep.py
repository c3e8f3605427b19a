"""The authorization sweep: every route the app mounts, enumerated from the app itself, refuses whoever
lacks the permission it declares (web/routing.py, web/auth.py, README "Users and security").

For each route a request is sent as: nobody (a script: 401 with a Basic challenge; a browser opening a UI
page: a redirect to the login page), an unknown and an expired API token (401), a viewer by password and by
read-only token (403 on "write" and "admin"), an operator by password and by token (403 on "admin").
Only requests that must be refused are sent, so no endpoint runs and nothing changes. A spy on
web/routing.authorize also checks that the route the request was built for is the one that decides: an
earlier route whose pattern shadows a later one (with another permission) would fail here.
A route added later is swept without anyone listing it; a state-changing route that declares only "read"
or "public" fails unless it is listed in STATE_CHANGING_OPEN with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.users import ApiToken, InvalidUser, Role, User, hash_password, hash_token, token_from_mapping
from minipacs.web import routing
from minipacs.web.app import create_app
from minipacs.web.auth import LOGIN_PATH, UI_PAGES
from minipacs.web.routing import Endpoint, GuardedMount, declared
from minipacs.web.types import AppContext
from tests.web.conftest import part10

FAST = {"n": 2**4}
USERS = (
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
)
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
TOKENS = (
    ApiToken("reader", hash_token("tok-read"), Role.VIEWER),
    ApiToken("script", hash_token("tok-write"), Role.OPERATOR),
    ApiToken("old", hash_token("tok-old"), Role.ADMIN, expires=PAST),
)
STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: State-changing routes anyone (or any reader) may call, and why.
STATE_CHANGING_OPEN: Final = {
    ("POST", "/ui/login"): "logging in needs no login; throttled (login_attempts), its own CSRF token",
    ("POST", "/ui/logout"): "ends only the caller's own session, and only with that session's CSRF token",
}
#: Every route anyone may call without credentials, and why (the archive holds patient data: a new public
#: route must be added here on purpose).
PUBLIC: Final = {
    **STATE_CHANGING_OPEN,
    ("GET", "/ui/login"): "the login page",
    ("GET", "/ui/static/index.html"): "the UI's own script and style sheet, which the login page needs",
    ("GET", "/api/openapi.json"): "the API's description: routes and permissions, no data",
}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


#: (who, headers, the permissions they hold, the status a refusal gets)
CALLERS: Final[tuple[tuple[str, dict[str, str], frozenset[str], int], ...]] = (
    ("nobody", {}, frozenset({"public"}), 401),
    ("an unknown token", bearer("tok-nope"), frozenset({"public"}), 401),
    ("an expired token", bearer("tok-old"), frozenset({"public"}), 401),
    ("a viewer (password)", basic("vic", "v-pass"), frozenset({"public", "read"}), 403),
    ("a read-only token", bearer("tok-read"), frozenset({"public", "read"}), 403),
    ("an operator (password)", basic("oli", "o-pass"), frozenset({"public", "read", "write"}), 403),
    ("an operator token", bearer("tok-write"), frozenset({"public", "read", "write"}), 403),
)


def concrete(path: str) -> str:
    """A path the route's pattern matches: each ``{param}`` a UID-like value; a mount gets a file under it."""
    return re.sub(r"\{[a-z_]+\}", "1.2.840.99", path)


def routes_of(tmp_path: Path) -> list[tuple[str, str, Endpoint | GuardedMount]]:
    settings = Settings(data_dir=tmp_path / "routes")
    app = create_app(AppContext(settings, archive=None, metadata=None))  # type: ignore[arg-type]
    out: list[tuple[str, str, Endpoint | GuardedMount]] = []
    for path, route in declared(app.routes):
        if isinstance(route, GuardedMount):
            out.append(("GET", path.rstrip("/") + "/index.html", route))
        else:
            out.append((route.method, path, route))
    return out


def test_a_state_changing_route_needs_write_or_admin(tmp_path: Path) -> None:
    """A POST/PUT/PATCH/DELETE declared "read" or "public" must be listed above with its reason: a new
    route that changes something cannot become open to readers (or to anyone) by a slip."""
    open_changes = {
        (method, path)
        for method, path, route in routes_of(tmp_path)
        if method in STATE_CHANGING and route.permission in ("public", "read")
    }
    assert open_changes == set(STATE_CHANGING_OPEN)


def test_a_public_route_is_public_on_purpose(tmp_path: Path) -> None:
    public = {(method, path) for method, path, route in routes_of(tmp_path) if route.permission == "public"}
    assert public == set(PUBLIC)


def test_every_route_refuses_who_lacks_its_permission(
    web: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = routes_of(tmp_path)
    assert len(routes) > 100
    asked: list[str] = []
    real = routing.authorize  # type: ignore[attr-defined]

    async def spy(scope: Any, receive: Any, send: Any, needed: Any) -> bool:
        asked.append(needed)
        return await real(scope, receive, send, needed)

    monkeypatch.setattr(routing, "authorize", spy)
    failures: list[str] = []

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for method, path, route in routes:
            url = concrete(path)
            for who, headers, held, refusal in CALLERS:
                if route.permission in held:
                    continue
                asked.clear()
                r = await client.request(method, url, headers=headers)
                what = f"{method} {path} ({route.permission}) as {who}"
                if asked != [route.permission]:
                    failures.append(f"{what}: decided by a route needing {asked}")
                if r.status_code != refusal:
                    failures.append(f"{what}: HTTP {r.status_code}, not {refusal}")
                elif refusal == 401 and r.headers.get("www-authenticate") != 'Basic realm="minipacs"':
                    failures.append(f"{what}: 401 without a Basic challenge")
                elif refusal == 403 and r.json()["error"]["code"] != "forbidden":
                    failures.append(f"{what}: {r.text[:200]}")
                for secret in ("v-pass", "o-pass", "tok-"):
                    if secret in r.text:
                        failures.append(f"{what}: the answer echoes {secret!r}")
            if route.permission != "public" and method == "GET" and (path == "/" or path.startswith(UI_PAGES)):
                # a browser opening a page without a login is sent to the login page, which comes back here
                r = await client.get(url, headers={"Accept": "text/html", "Sec-Fetch-Dest": "document"})
                location = r.headers.get("location", "")
                if r.status_code != 303 or not location.startswith(f"{LOGIN_PATH}?next="):
                    failures.append(f"{method} {path} in a browser, logged out: {r.status_code} {location}")

    web(body, users=USERS, tokens=TOKENS, login_attempts=100_000)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "expires,moment",
    [
        (dt.date(2027, 6, 30), dt.datetime(2027, 6, 30, tzinfo=dt.UTC)),  # TOML date: from 00:00 UTC
        (dt.datetime(2027, 6, 30, 12, 0), dt.datetime(2027, 6, 30, 12, tzinfo=dt.UTC)),  # no offset: UTC
        ("2027-06-30", dt.datetime(2027, 6, 30, tzinfo=dt.UTC)),
        ("2027-06-30T12:00:00+02:00", dt.datetime(2027, 6, 30, 10, tzinfo=dt.UTC)),
        (None, None),
    ],
)
def test_token_expires(expires: Any, moment: dt.datetime | None) -> None:
    table = {"name": "t", "token_hash": hash_token("x"), "role": "viewer", "expires": expires}
    token = token_from_mapping(table)
    assert token.expires == moment
    if moment is not None:
        assert not token.expired(moment - dt.timedelta(seconds=1)) and token.expired(moment)


@pytest.mark.parametrize("expires", ["soon", "2027-13-01", 20270630])
def test_token_expires_must_be_a_date(expires: Any) -> None:
    with pytest.raises(InvalidUser, match="token 't': expires .* is not a date"):
        token_from_mapping({"name": "t", "token_hash": hash_token("x"), "expires": expires})


def test_an_expired_token_is_refused_and_audited(web: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> list[dict[str, Any]]:
        r = await client.get("/api/stats", headers=bearer("tok-old"))
        assert r.status_code == 401 and "tok-old" not in r.text
        assert (await client.get("/api/stats", headers=bearer("tok-read"))).status_code == 200
        return await archive.audit.query()

    rows = web(body, users=USERS, tokens=TOKENS)
    refused = [row for row in rows if row["outcome"] != 0]
    assert [(row["actor_kind"], row["actor"]) for row in refused] == [("token", "old")]
    assert "the expired token old not accepted" in caplog.text and "tok-old" not in caplog.text


@pytest.mark.parametrize(
    "headers,status",
    [
        (bearer("tok-write"), 200),  # a script: no browser sends a Bearer token by itself
        ({**bearer("tok-write"), "Sec-Fetch-Site": "cross-site"}, 403),  # the browser's word still counts
        ({**bearer("tok-write"), "Origin": "http://evil.example"}, 403),
        (basic("oli", "o-pass"), 403),  # a browser sends cached Basic credentials with any site's form
    ],
)
def test_a_bearer_token_needs_no_csrf_token(web: Callable[..., Any], headers: dict[str, str], status: int) -> None:
    """``curl -H "Authorization: Bearer ..." -F file=@ct.dcm /api/instances``: a form content type, sent by a
    script. A page of another site cannot add an Authorization header without a CORS preflight, which this
    server never grants, so a Bearer token proves a script (web/csrf.py)."""
    data = part10()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        files = {"file": ("ct.dcm", data, "application/dicom")}
        r = await client.post("/api/instances", files=files, headers=headers)
        assert r.status_code == status, r.text
        if status == 403:
            assert r.json()["error"]["code"] == "cross_site_request"

    web(body, users=USERS, tokens=TOKENS)


def test_a_login_ends_the_session_the_browser_had(web: Callable[..., Any]) -> None:
    """Session fixation (OWASP Session Management): a login always makes a new id, and the session the
    browser carried before (another user's, on a shared workstation) ends on the server, not only in
    this browser's cookie jar."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/ui/login", json={"name": "vic", "password": "v-pass"})
        before = r.cookies["minipacs_session"]
        r = await client.post("/ui/login", json={"name": "ada", "password": "a-pass"})
        after = r.cookies["minipacs_session"]
        assert r.status_code == 200 and after != before
        assert (await client.get("/ui/session")).json()["user"] == "ada"
        client.cookies.set("minipacs_session", before)
        assert (await client.get("/api/stats", headers={"Accept": "application/json"})).status_code == 401
        # a made-up id is never adopted: the login answers with an id of its own
        client.cookies.set("minipacs_session", "chosen-by-the-attacker")
        r = await client.post("/ui/login", json={"name": "vic", "password": "v-pass"})
        assert r.cookies["minipacs_session"] not in ("chosen-by-the-attacker", before, after)

    web(body, users=USERS)


def test_the_audit_trail_tells_a_user_from_a_token_by_how_they_logged_in(web: Callable[..., Any]) -> None:
    """The actor's kind comes from the credentials, not from the name: a user named "token script" is a user,
    and is not mistaken for the token "script"."""
    users = (User("token script", hash_password("t-pass", **FAST), Role.ADMIN),)
    tokens = (ApiToken("script", hash_token("tok-admin"), Role.ADMIN),)

    async def body(client: httpx.AsyncClient, archive: Archive) -> list[dict[str, Any]]:
        assert (await client.get("/api/audit", headers=basic("token script", "t-pass"))).status_code == 200
        assert (await client.get("/api/audit?limit=5", headers=bearer("tok-admin"))).status_code == 200
        return await archive.audit.query()

    rows = web(body, users=users, tokens=tokens)
    assert sorted((r["actor_kind"], r["actor"]) for r in rows if r["action"] == "audit_read") == [
        ("token", "script"),
        ("user", "token script"),
    ]


def test_a_cheap_password_hash_is_named_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """scrypt n=2**14, r=8, p=1 (RFC 7914 section 2's interactive-login cost, ~16 MiB) is what
    `minipacs users hash-password` makes; a hash made cheaper (by hand, or by an old tool) is accepted but
    named, since a leaked config file gives it up sooner."""
    users = (*USERS, User("strong", hash_password("s-pass"), Role.VIEWER))
    settings = Settings(data_dir=tmp_path / "d", users=users)
    create_app(AppContext(settings, archive=None, metadata=None))  # type: ignore[arg-type]
    named = {r.getMessage().split("'")[1] for r in caplog.records if "cheaper to guess" in r.getMessage()}
    assert named == {"ada", "vic", "oli"}
    assert "s-pass" not in caplog.text
