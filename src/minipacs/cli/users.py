"""`minipacs users hash-password | new-token`: secrets for the config file's [[users]] and [[tokens]]."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from minipacs.config import Settings
from minipacs.core.users import hash_password, new_token

NEEDS_SETTINGS = False


def register(sub: Any) -> None:
    p = sub.add_parser("users", help="hash a password or make an API token for the config file")
    actions = p.add_subparsers(dest="users_action", required=True, metavar="ACTION")
    h = actions.add_parser("hash-password", help="print a password_hash for a [[users]] entry")
    h.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    actions.add_parser("new-token", help="print a new API token and the token_hash for a [[tokens]] entry")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.users_action == "new-token":
        token, token_hash = new_token()
        print(f"token (give it to the script; shown once): {token}")
        print(f'token_hash = "{token_hash}"')
        print("# optional: expires = 2027-12-31  (refused from 00:00 UTC that day; README [[tokens]])")
        return 0
    if args.password_stdin or not sys.stdin.isatty():
        # A pipe (`echo pw | minipacs users hash-password`): one line, no prompt, no confirmation.
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("minipacs: the passwords differ; nothing printed", file=sys.stderr)
            return 2
    if not password:
        print("minipacs: an empty password is refused", file=sys.stderr)
        return 2
    print(f'password_hash = "{hash_password(password)}"')
    return 0
