"""What the SCU commands print: a DIMSE status with its meaning and Error Comment (PS3.7 C.4:
(0000,0902) says why), and the ``--json`` documents of ``echo``, ``store``, ``move``, ``get`` and
``import`` — one JSON object on stdout, also when the command fails (then with ``"error"``)."""

from __future__ import annotations

import json
from typing import Any

from minipacs.services.status import Status, describe


def status_text(status: int, error_comment: str = "", table: dict[int, Status] | None = None) -> str:
    """'0xA700 Failure: Refused: Out of Resources (disk full)'; 'no response' for -1."""
    if status < 0:
        return "no response"
    return describe(status, table) + (f" ({error_comment})" if error_comment else "")


def status_json(status: int, error_comment: str = "", table: dict[int, Status] | None = None) -> dict[str, Any]:
    """The status as JSON: the number, its hex form, its meaning (PS3.7 Annex C / PS3.4) and the comment."""
    if status < 0:
        return {"status": None, "status_hex": None, "meaning": "no response", "error_comment": error_comment}
    return {
        "status": status,
        "status_hex": f"0x{status:04X}",
        "meaning": describe(status, table),
        "error_comment": error_comment,
    }


def print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False, default=str))


__all__ = ["print_json", "status_json", "status_text"]
