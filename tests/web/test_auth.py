from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.config import ConfigError, Settings
from minipacs.core.archive import Archive
from minipacs.core.users import ApiToken, Role, User, hash_password, hash_token, verify_password
from minipacs.web.auth import permission_for
from minipacs.web.server import check_access
from tests.web.conftest import part10

FAST = {"n": 2**4}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


USERS = (User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
         User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
         User("oli", hash_password("o-pass", **FAST), Role.OPERATOR))
TOKENS = (ApiToken("script", hash_token("tok-123"), Role.OPERATOR),)


def test_password_hash_roundtrip() -> None:
    stored = hash_password("secret", **FAST)
    assert verify_password("secret", stored) and not verify_password("Secret", stored)
    assert not verify_password("x", "garbage")


@pytest.mark.parametrize("method,path,needed", [
    ("GET", "/dicom-web/studies", "read"), ("POST", "/dicom-web/studies", "write"),
    ("DELETE", "/api/studies/1.2", "write"), ("POST", "/api/nodes", "admin"), ("GET", "/api/nodes", "read"),
    ("POST", "/api/nodes/X/store", "write"), ("GET", "/api/openapi.json", "public"),
])
def test_permission_table(method: str, path: str, needed: str) -> None:
    assert permission_for(method, path) == needed


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


def test_refuses_open_http_beyond_loopback() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[users\\]\\]"):
        check_access(Settings(http_host="0.0.0.0"))
    check_access(Settings(http_host="127.0.0.1"))
    check_access(Settings(http_host="0.0.0.0", users=USERS))


def test_basic_passwords_are_hashed_once_and_off_the_event_loop(
        web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
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
