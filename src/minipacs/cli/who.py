"""Who runs a command, for the audit trail and the corrections log."""

from __future__ import annotations

import getpass


def login_name() -> str:
    """The login name of the user running the command, or "?" when the system cannot say: a
    container started with a numeric user that /etc/passwd does not know makes ``getpass.getuser``
    raise (KeyError), and that must not stop an export or a correction."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
