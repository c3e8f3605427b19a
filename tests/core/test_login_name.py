"""core/audit.py login_name: the login name for the audit trail, also where the system has none."""

from __future__ import annotations

import getpass

import pytest

from minipacs.core.audit import login_name


def test_the_login_name_is_the_users() -> None:
    assert login_name() == getpass.getuser()


@pytest.mark.parametrize("error", [KeyError("getpwuid(): uid not found: 12345"), OSError("no login")])
def test_a_user_the_system_does_not_know_is_a_question_mark(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def unknown() -> str:
        raise error

    monkeypatch.setattr(getpass, "getuser", unknown)
    assert login_name() == "?"
