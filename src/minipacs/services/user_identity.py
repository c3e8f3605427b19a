"""User Identity Negotiation (PS3.7 D.3.3.7) checked against the configured users (``[[users]]``).

``dicom_user_identity`` (core/users.py ``DICOM_IDENTITY_MODES``):

- ``ignore``: the item is logged, never checked (the default).
- ``optional``: a requestor may send none; one that is sent must be right.
- ``required``: every association must carry one, and it must be proven: a username
  and passcode (type 2). A bare username (type 1) proves nothing, so it is accepted
  under ``required`` only with ``dicom_trust_usernames = true`` (a site that knows its
  modalities send only their operator's name).

Types 1 (username) and 2 (username and passcode) are checked: the username must be a
configured user and the passcode its password (the same users and scrypt hashes as
HTTP). Types 3-5 (Kerberos, SAML, JWT) cannot be checked here and are refused while
checking is on. A refused identity gets A-ASSOCIATE-RJ rejected-permanent,
service-user, no-reason-given (1, 1, 1): PS3.8 Table 9-21 has no reason for identities
(pynetdicom and dcm4chee answer the same). PS3.7 D.3.3.7.2: when the requestor asked
for a positive response and the identity is accepted, the A-ASSOCIATE-AC carries a User
Identity sub-item (59H), whose Server-response is empty for types 1 and 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from minipacs.core.users import DICOM_IDENTITY_MODES, ProvenPasswords, User
from minipacs.net.pdu_items import UserIdentityAC, UserIdentityRQ

# PS3.7 Table D.3-14: User-Identity-Type.
IDENTITY_TYPES: Final[dict[int, str]] = {
    1: "username",
    2: "username and passcode",
    3: "Kerberos service ticket",
    4: "SAML assertion",
    5: "JSON Web Token",
}
#: The types checked against ``[[users]]``; their positive response is empty (PS3.7 D.3.3.7.2).
CHECKED_TYPES: Final = frozenset({1, 2})


@dataclass(frozen=True)
class IdentityCheck:
    """What one A-ASSOCIATE-RQ's identity comes to."""

    accepted: bool
    #: For the log and the association log: the username, and whether it was proven. Never the passcode.
    user: str
    #: Plain words: why it was refused (or how it was accepted).
    why: str
    #: The User Identity AC sub-item to answer with (positive response requested and given).
    response: UserIdentityAC | None = None


class UserIdentityPolicy:
    """Checks the User Identity sub-item of each A-ASSOCIATE-RQ against ``users``."""

    def __init__(self, mode: str, users: Sequence[User], *, trust_usernames: bool = False) -> None:
        if mode not in DICOM_IDENTITY_MODES:
            raise ValueError(f"dicom_user_identity {mode!r} must be one of {', '.join(DICOM_IDENTITY_MODES)}")
        self.mode = mode
        #: Under "required", accept a username without a passcode (type 1) as identity enough.
        self.trust_usernames = trust_usernames
        self.users = {user.name: user for user in users}
        # A modality opening an association per image pays scrypt once (core/users.py).
        self._passwords = ProvenPasswords()

    def check(self, item: UserIdentityRQ | None) -> IdentityCheck:
        if item is None:
            if self.mode == "required":
                return IdentityCheck(
                    False,
                    "",
                    "no user identity was sent and dicom_user_identity is 'required' "
                    "(the requestor must send a username and passcode)",
                )
            return IdentityCheck(True, "", "no user identity sent")
        kind = IDENTITY_TYPES.get(item.identity_type, f"type {item.identity_type}")
        try:
            name = bytes(item.primary_field).decode("utf-8")
        except UnicodeDecodeError:
            name = bytes(item.primary_field).decode("latin-1")
        shown = repr(name[:64]) if item.identity_type in CHECKED_TYPES else f"a {kind}"
        if self.mode == "ignore":
            return IdentityCheck(
                True,
                f"{name[:64]} (not checked)" if item.identity_type in CHECKED_TYPES else "",
                f"{shown} not checked (dicom_user_identity is 'ignore')",
            )
        if item.identity_type not in CHECKED_TYPES:
            return IdentityCheck(
                False, "", f"{shown} cannot be checked here; send a username and passcode (User-Identity-Type 2)"
            )
        if item.identity_type == 1 and self.mode == "required" and not self.trust_usernames:
            return IdentityCheck(
                False,
                name[:64],
                f"user {shown} sent no passcode and dicom_user_identity is "
                "'required': send a username and passcode (User-Identity-Type 2), "
                "or set dicom_trust_usernames = true",
            )
        user = self.users.get(name)
        if user is None:
            return IdentityCheck(False, name[:64], f"user {shown} is not a configured user ([[users]])")
        if item.identity_type == 2 and not self._passcode_ok(user, bytes(item.secondary_field)):
            return IdentityCheck(False, name[:64], f"wrong passcode for user {shown}")
        response = UserIdentityAC(b"") if item.positive_response_requested else None
        proven = "username and passcode" if item.identity_type == 2 else "username only, no passcode"
        return IdentityCheck(True, name[:64], f"user {shown} accepted ({proven})", response)

    def _passcode_ok(self, user: User, passcode: bytes) -> bool:
        try:
            text = passcode.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return self._passwords.verify(user, text)


__all__ = ["CHECKED_TYPES", "IDENTITY_TYPES", "IdentityCheck", "UserIdentityPolicy"]
