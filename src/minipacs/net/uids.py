"""UID constants and transfer syntax properties used on the wire (PS3.5 §10, PS3.6 Table A-1)."""

from __future__ import annotations

from dataclasses import dataclass

from minipacs.net.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class TransferSyntax:
    """How a transfer syntax encodes the dataset (PS3.5 §10 and Annex A)."""

    uid: str
    implicit_vr: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool


_NATIVE = {
    IMPLICIT_VR_LITTLE_ENDIAN: TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, True, True, False, False),
    EXPLICIT_VR_LITTLE_ENDIAN: TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, False, True, False, False),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: TransferSyntax(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, False, True, True, False),
    EXPLICIT_VR_BIG_ENDIAN: TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, False, False, False, False),
}


def transfer_syntax(uid: str) -> TransferSyntax | None:
    """Properties of a transfer syntax we can store, or None if unknown to us.

    Every non-native syntax of PS3.6 Table A-1 is encapsulated Explicit VR
    Little Endian (PS3.5 A.4), which is all the header parser needs.
    """
    if uid in _NATIVE:
        return _NATIVE[uid]
    if uid in TRANSFER_SYNTAXES:
        return TransferSyntax(uid, False, True, False, True)
    return None


def uid_name(uid: str) -> str:
    """Human name of a UID for logs, the UID itself when unknown."""
    if uid == VERIFICATION_SOP_CLASS:
        return "Verification SOP Class"
    return STORAGE_SOP_CLASSES.get(uid) or TRANSFER_SYNTAXES.get(uid) or uid
