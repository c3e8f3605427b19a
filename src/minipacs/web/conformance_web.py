"""The DICOMweb (PS3.18) and HL7 v2 sections of the conformance statement (services/conformance.py
writes the DIMSE part; this layer sees the routes and the HL7 edge), generated from the declared
DICOMweb routes and the HL7 message tables."""

from __future__ import annotations

from minipacs.hl7.adt import EVENTS
from minipacs.hl7.message import CHARSETS
from minipacs.hl7.orders import ORDER_MESSAGES
from minipacs.web import dicomweb
from minipacs.web.routing import Endpoint


def sections() -> str:
    out: list[str] = []
    add = out.append
    add("## DICOMweb (PS3.18), under `/dicom-web`")
    add("")
    add("| Method | Resource | What | Permission |")
    add("|---|---|---|---|")
    for route in dicomweb.routes():
        if isinstance(route, Endpoint):
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                add(f"| {method} | `{route.path}` | {route.summary} | {route.permission} |")
    add("")
    add(
        "Also WADO-URI (PS3.18 9) at `/dicom-web/wado` and `/wado`. Media types and transfer syntaxes as "
        'README "HTTP: REST and DICOMweb" describes; `OPTIONS /dicom-web/` answers the Retrieve '
        "Capabilities (WADL, PS3.18 8.9)."
    )
    add("")
    add("## HL7 v2 (MLLP), on `hl7_port`")
    add("")
    orders = ", ".join(f"{kind}^{trigger}" for kind, trigger in sorted(ORDER_MESSAGES))
    add(f"- Orders into the Modality Worklist: {orders}; answered AA, AE or AR (original acknowledgment mode).")
    events = ", ".join(f"ADT^{code} ({event.summary})" for code, event in sorted(EVENTS.items()))
    add(f"- Patient updates and merges applied to the stored studies: {events}.")
    add("- MSH-18 character sets (HL7 Table 0211): " + ", ".join(f"`{code}`" for code in sorted(CHARSETS)) + ".")
    add("")
    return "\n".join(out)


__all__ = ["sections"]
