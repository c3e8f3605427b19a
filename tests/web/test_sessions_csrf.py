"""Issue 8 item 8 in process: the CSRF rules (web/csrf.py), the login page and sessions."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.metadata import MetadataStore
from minipacs.core.nodes import NodeRegistry
from minipacs.core.users import Role, User, hash_password
from minipacs.web.app import create_app
from minipacs.web.login import safe_next
from minipacs.web.sessions import SessionStore
from minipacs.web.types import AppContext

USERS = (
    User("ada", hash_password("a-pass", n=2**4), Role.ADMIN),
    User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),
)
NODE = {"ae_title": "EVIL", "host": "10.6.6.6", "port": 104}
OWN = "http://testserver"


@pytest.fixture
def web(tmp_path: Path) -> Callable[..., Any]:
    """tests/web/conftest.py's ``web``, with an AE registry (POST /api/nodes is the issue's request)."""

    def run(body: Callable[[httpx.AsyncClient, Archive], Awaitable[Any]], **settings: Any) -> Any:
        async def main() -> Any:
            config = Settings(data_dir=tmp_path / "data", fsync=False, **settings)
            archive = await open_archive(config)
            metadata = MetadataStore(archive)
            app = create_app(AppContext(config, archive, metadata, NodeRegistry(archive)))
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            try:
                async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
                    return await body(client, archive)
            finally:
                await archive.close()

        return asyncio.run(main())

    return run


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


# (extra headers, content type, expected status) for POST /api/nodes with a JSON body, as admin by Basic
@pytest.mark.parametrize(
    "headers,content_type,status",
    [
        ({}, "application/json", 201),  # a script
        ({}, "", 201),  # a script that names no type
        ({"Origin": OWN, "Sec-Fetch-Site": "same-origin"}, "application/json", 201),  # our own page
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9999"}, "application/json", 403),
        ({"Sec-Fetch-Site": "cross-site"}, "application/json", 403),
        ({"Origin": "http://evil.example"}, "application/json", 403),  # an older browser: no Sec-Fetch-Site
        ({"Origin": "null"}, "application/json", 403),
        ({}, "text/plain", 403),  # what a cross-site form sends, even with no Origin
        ({}, "application/x-www-form-urlencoded", 403),
        ({}, "multipart/form-data; boundary=x", 403),
        ({"Origin": OWN}, "text/plain", 201),  # a form type from our own origin
        ({"Sec-Fetch-Site": "same-origin"}, "text/plain", 201),
        ({"Sec-Fetch-Site": "none"}, "application/json", 201),  # typed by the user (no page started it)
        ({"X-CSRF-Token": "forged"}, "application/json", 403),  # a token that is not the session's
    ],
)
def test_csrf_rules(web: Callable[..., Any], headers: dict[str, str], content_type: str, status: int) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        sent = {**basic("ada", "a-pass"), **headers}
        if content_type:
            sent["Content-Type"] = content_type
        r = await client.post(
            "/api/nodes", content=b'{"ae_title": "EVIL", "host": "10.6.6.6", "port": 104}', headers=sent
        )
        assert r.status_code == status, r.text
        if status == 403:
            assert r.json()["error"]["code"] == "cross_site_request"
        assert len((await client.get("/api/nodes", headers=basic("ada", "a-pass"))).json()) == (status == 201)

    web(body, users=USERS)


@pytest.mark.parametrize(
    "method,url",
    [
        ("DELETE", "/api/studies/1.2.3"),
        ("PUT", "/api/nodes/1"),
        ("POST", "/api/instances"),
        ("POST", "/dicom-web/studies"),
    ],
)
def test_cross_site_is_refused_before_credentials_on_every_change(
    web: Callable[..., Any], method: str, url: str
) -> None:
    """No password is checked (nor a failure counted) for a forged request; in open mode too."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.request(
            method, url, content=b"x", headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "application/dicom"}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", r.text

    web(body)  # open mode: no users, loopback


def login_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_login_form_session_cookie_csrf_token_and_logout(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        # a page without credentials: to the login page, with where it was going
        r = await client.get("/ui/nodes?x=1", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fnodes%3Fx%3D1"
        page = await client.get("/ui/login?next=/ui/nodes")
        assert page.status_code == 200 and "minipacs_login=" in page.headers["set-cookie"]
        token = login_token(page.text)
        form = {"csrf_token": token, "next": "/ui/nodes", "name": "ada", "password": "a-pass"}
        r = await client.post("/ui/login", data=form, headers={"Origin": OWN})
        assert r.status_code == 303 and r.headers["location"] == "/ui/nodes", r.text
        cookie = r.headers["set-cookie"]
        assert "minipacs_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain http here; https adds Secure
        # the cookie works on pages, and the page carries the session's CSRF token
        r = await client.get("/ui/nodes")
        assert r.status_code == 200 and 'data-role="admin"' in r.text and "Log out" in r.text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', r.text)
        assert csrf and csrf.group(1)
        # a change with the cookie alone, from no page (no Origin): JSON passes, a form type needs the token
        assert (await client.post("/api/nodes", json=NODE)).status_code == 201
        r = await client.post("/api/nodes", content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 403
        r = await client.post(
            "/api/nodes",
            json={**NODE, "ae_title": "B"},
            headers={"X-CSRF-Token": csrf.group(1), "Content-Type": "text/plain"},
        )
        assert r.status_code == 201, r.text
        # logout needs the token; then the cookie is worth nothing
        assert (await client.post("/ui/logout", data={"csrf_token": "wrong"})).status_code == 403
        r = await client.post("/ui/logout", data={"csrf_token": csrf.group(1)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        client.cookies.set("minipacs_session", cookie.split("=", 1)[1].split(";", 1)[0])
        assert (await client.get("/api/nodes")).status_code == 401

    web(body, users=USERS)


def test_login_form_needs_its_own_token(web: Callable[..., Any]) -> None:
    """Login CSRF: another site posting our login form (with a name and password of its choosing)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.get("/ui/login")
        r = await client.post("/ui/login", data={"csrf_token": "guessed", "name": "ada", "password": "a-pass"})
        assert r.status_code == 403 and "minipacs_session" not in r.headers.get("set-cookie", "")
        assert "expired or was not sent by this page" in r.text

    web(body, users=USERS)


def test_login_json_wrong_password_and_throttle(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/ui/login", json={"name": "vic", "password": "v-pass"})
        assert r.status_code == 200 and r.json()["role"] == "viewer" and r.json()["csrf_token"]
        r = await client.delete("/api/studies/1.2.3", headers={"X-CSRF-Token": r.json()["csrf_token"]})
        assert r.status_code == 403 and "viewer role" in r.json()["error"]["message"]
        client.cookies.clear()
        r = await client.post("/ui/login", json={"name": "vic", "password": "wrong"})
        assert r.status_code == 401 and "wrong" in r.json()["error"]["message"]
        page = await client.get("/ui/login")
        r = await client.post(
            "/ui/login", data={"csrf_token": login_token(page.text), "name": "vic", "password": "wrong"}
        )
        assert r.status_code == 401 and "user name or password is wrong" in r.text
        r = await client.post("/ui/login", json={"name": "vic", "password": "v-pass"})
        assert r.status_code == 429 and r.headers["Retry-After"]  # login_attempts = 2, from this address

    web(body, users=USERS, login_attempts=2)


def test_a_page_fetch_gets_no_basic_challenge(web: Callable[..., Any]) -> None:
    """app.js's own fetch after the session ended: a 401 without WWW-Authenticate (no Basic pop-up)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/api/studies", headers={"Sec-Fetch-Mode": "cors"})
        assert r.status_code == 401 and "www-authenticate" not in r.headers
        r = await client.get("/api/studies")  # a script: the challenge, as before
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="minipacs"'

    web(body, users=USERS)


def test_session_idle_timeout_and_max_sessions() -> None:
    now = [0.0]
    store = SessionStore(idle_timeout=60, max_sessions=2, clock=lambda: now[0])
    first = store.create("ada", Role.ADMIN)
    now[0] = 59.0
    assert store.get(first.id) is first  # seen again: the idle time starts over
    now[0] = 119.0
    assert store.get(first.id) is first
    now[0] = 179.5
    assert store.get(first.id) is None  # 60.5 s unused
    a, b = store.create("ada", Role.ADMIN), store.create("vic", Role.VIEWER)
    store.get(a.id)
    c = store.create("ada", Role.ADMIN)  # a third: the least recently used (b) ends
    assert store.get(b.id) is None and store.get(a.id) is a and store.get(c.id) is c and len(store) == 2


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("/ui/nodes?x=1", "/ui/nodes?x=1"),
        (None, "/ui/"),
        ("", "/ui/"),
        ("//evil.example/x", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("https://evil.example", "/ui/"),
        ("/ui/\r\nSet-Cookie: x", "/ui/"),
    ],
)
def test_after_login_only_paths_of_this_server(raw: str | None, expected: str) -> None:
    assert safe_next(raw) == expected


def test_open_mode_has_no_login(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/ui/login")
        assert r.status_code == 303 and r.headers["location"] == "/ui/"

    web(body)


def test_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    async def main() -> None:
        config = Settings(data_dir=tmp_path / "data", fsync=False, users=USERS)
        archive = await open_archive(config)
        app = create_app(AppContext(config, archive, MetadataStore(archive)))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="https://pacs.example") as client:
                r = await client.post(
                    "/ui/login", json={"name": "ada", "password": "a-pass"}, headers={"Origin": "https://pacs.example"}
                )
                assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower(), r.headers
        finally:
            await archive.close()

    asyncio.run(main())
