from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from minipacs.config import ConfigError, Settings
from minipacs.core.archive import Archive
from minipacs.core.users import ApiToken, Role, User, hash_password, hash_token, verify_password
from minipacs.web.app import create_app
from minipacs.web.auth import PERMISSIONS
from minipacs.web.routing import Endpoint, GuardedMount, UndeclaredRoute, declared
from minipacs.web.server import check_access
from minipacs.web.types import AppContext
from tests.web.conftest import part10

FAST = {"n": 2**4}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


USERS = (
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
)
TOKENS = (ApiToken("script", hash_token("tok-123"), Role.OPERATOR),)


def app_of(tmp_path: Path) -> Starlette:
    """The app's routes need no open archive: a context whose archive is never used."""
    settings = Settings(data_dir=tmp_path)
    return create_app(AppContext(settings, archive=None, metadata=None))  # type: ignore[arg-type]


def test_password_hash_roundtrip() -> None:
    stored = hash_password("secret", **FAST)
    assert verify_password("secret", stored) and not verify_password("Secret", stored)
    assert not verify_password("x", "garbage")


@pytest.mark.parametrize(
    "method,path,needed",
    [
        ("GET", "/dicom-web/studies", "read"),
        ("POST", "/dicom-web/studies", "write"),
        ("DELETE", "/api/{level}/{id}", "write"),
        ("POST", "/api/nodes", "admin"),
        ("GET", "/api/nodes", "read"),
        ("PUT", "/api/nodes/{id}", "admin"),
        ("DELETE", "/api/nodes/{ae_title}", "admin"),
        ("POST", "/api/nodes/{id}/echo", "write"),
        ("POST", "/api/nodes/{id}/retrieve", "write"),
        ("POST", "/api/send", "write"),
        ("GET", "/api/openapi.json", "public"),
        ("GET", "/ui/upload", "write"),
        ("GET", "/ui/", "read"),
        ("GET", "/ohif", "read"),
    ],
)
def test_permission_declared_with_each_route(tmp_path: Path, method: str, path: str, needed: str) -> None:
    found = {
        (route.method, full): route.permission
        for full, route in declared(app_of(tmp_path).routes)
        if isinstance(route, Endpoint)
    }
    assert found[(method, path)] == needed


def test_every_route_declares_a_permission(tmp_path: Path) -> None:
    routes = list(declared(app_of(tmp_path).routes))
    assert len(routes) > 60 and all(route.permission in PERMISSIONS for _, route in routes)
    mounts = {path: route.permission for path, route in routes if isinstance(route, GuardedMount)}
    # the UI's own script and style sheet hold no patient data, and the login page needs them
    assert mounts == {"/ui/static": "public", "/ohif": "read"}


@pytest.mark.parametrize(
    "undeclared",
    [
        Route("/plain", lambda request: None, methods=["GET"]),
        Mount("/app", app=Starlette()),  # an ASGI app, not routes
    ],
)
def test_a_route_without_a_permission_fails_app_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undeclared: Route | Mount
) -> None:
    from minipacs.web import rest_worklist

    real = rest_worklist.routes
    monkeypatch.setattr(rest_worklist, "routes", lambda: [*real(), undeclared])
    with pytest.raises(UndeclaredRoute, match=f"the route /api{undeclared.path} .* declares no permission"):
        app_of(tmp_path)


def test_a_permission_or_summary_must_be_real() -> None:
    with pytest.raises(ValueError, match="not one of admin, public, read, write"):
        Endpoint("/x", lambda request: None, "GET", "readonly", "X")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="summary"):
        Endpoint("/x", lambda request: None, "GET", "read", " ")


def test_roles_401_403(web: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/dicom-web/studies")).status_code == 401
        assert (await client.get("/dicom-web/studies", headers=basic("vic", "wrong"))).status_code == 401
        assert (await client.get("/dicom-web/studies", headers=basic("vic", "v-pass"))).status_code == 200
        data = part10()
        r = await client.post("/api/instances", content=data, headers=basic("vic", "v-pass"))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await client.post("/api/instances", content=data, headers={"Authorization": "Bearer tok-123"})
        assert r.status_code == 200
        assert (await client.post("/api/nodes", json={}, headers=basic("oli", "o-pass"))).status_code == 403
        assert (await client.get("/api/openapi.json")).status_code == 200
        assert await archive.count_instances() == 1

    web(body, users=USERS, tokens=TOKENS)
    assert "HTTP 401" in caplog.text and "HTTP 403" in caplog.text


def test_mounted_apps_are_guarded_and_a_wrong_method_is_405_for_anyone(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/ui/static/app.js")  # public: the login page needs it
        assert r.status_code == 200 and "XMLHttpRequest" in r.text
        assert (await client.get("/ohif/")).status_code == 401
        r = await client.put("/api/stats")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        r = await client.get("/ui/upload", headers=basic("vic", "v-pass"))
        assert r.status_code == 403 and "write permission needed" in r.json()["error"]["message"]
        assert (await client.get("/ui/upload", headers=basic("oli", "o-pass"))).status_code == 200

    web(body, users=USERS)


def test_refuses_open_http_beyond_loopback() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[users\\]\\]"):
        check_access(Settings(http_host="0.0.0.0"))
    check_access(Settings(http_host="127.0.0.1"))
    check_access(Settings(http_host="0.0.0.0", users=USERS))


def test_basic_passwords_are_hashed_once_and_off_the_event_loop(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """scrypt per request would block the loop that also serves DICOM: a proven password is
    remembered, and an unproven one is hashed in a worker thread."""
    import threading

    import minipacs.core.users as users

    real = users.verify_password
    hashed_on: list[str] = []

    def spying(password: str, stored: str) -> bool:
        hashed_on.append(threading.current_thread().name)
        return real(password, stored)

    monkeypatch.setattr(users, "verify_password", spying)
    loop_thread: list[str] = []

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        loop_thread.append(threading.current_thread().name)
        for _ in range(5):
            assert (await client.get("/dicom-web/studies", headers=basic("vic", "v-pass"))).status_code == 200
        for _ in range(2):
            assert (await client.get("/dicom-web/studies", headers=basic("vic", "wrong"))).status_code == 401

    web(body, users=USERS)
    assert len(hashed_on) == 3  # the first good password, then each wrong one; the repeats from memory
    assert loop_thread[0] not in hashed_on
