"""HL7 v2 acknowledgement codes and the error the HL7 edge raises (HL7 v2.5 2.9, 2.15.5, 2.15.8).

The core raises its own exceptions (core/errors.py); hl7/orders.py maps them to these codes.
"""

from __future__ import annotations

from typing import Final

#: MSA-1 acknowledgment codes (HL7 v2.5 Table 0008, original acknowledgment mode).
ACCEPT: Final = "AA"
ERROR: Final = "AE"
REJECT: Final = "AR"

#: ERR-3 error codes (HL7 v2.5 Table 0357), the ones an order receiver uses.
ERROR_CODES: Final[dict[int, str]] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    207: "Application internal error",
}


class HL7Error(ValueError):
    """A message that cannot be parsed or applied; the text says why, for MSA-3 / ERR-8.

    ``ack_code`` is AR (rejected: not a message we take) or AE (error in its content);
    ``error_code`` an HL7 Table 0357 code; ``location`` like ``PID-3``.
    """

    def __init__(self, reason: str, *, ack_code: str = ERROR, error_code: int = 207, location: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.ack_code = ack_code
        self.error_code = error_code
        self.location = location


__all__ = ["ACCEPT", "ERROR", "ERROR_CODES", "REJECT", "HL7Error"]
