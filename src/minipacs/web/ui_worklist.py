"""The Worklist page of the web UI (/ui/worklist): the Modality Worklist entries (core/worklist.py).

The page lists entries; adding (a small form) and deleting are done by app.js against the
REST API (web/rest_worklist.py, ``POST /api/worklist`` with a PS3.18 JSON dataset and
``DELETE /api/worklist/{id}``), so web/auth.py decides them. A viewer sees neither.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.worklist import Worklist
from minipacs.web.dicomweb import ctx
from minipacs.web.ui_html import date, e, may, page, person, table

#: The add form: (field name, label, input type, required, extra attributes).
FIELDS = (
    ("patient_id", "Patient ID", "text", True, 'maxlength="64"'),
    ("patient_name", "Patient name (Family^Given)", "text", False, 'maxlength="64"'),
    ("accession", "Accession", "text", False, 'maxlength="16"'),
    ("modality", "Modality", "text", True, 'maxlength="16" placeholder="CT"'),
    ("date", "Scheduled date", "date", False, ""),
    ("time", "Scheduled time", "time", False, ""),
    ("station", "Station AE", "text", False, 'maxlength="16"'),
    ("procedure", "Procedure description", "text", False, 'maxlength="64"'),
)


def _when(start: str) -> str:
    day, _, time = start.partition(" ")
    if len(time) >= 4 and time[:4].isdigit():
        time = f"{time[:2]}:{time[2:4]}"
    return f"{date(day)} {time}".strip()


def _add_form() -> str:
    inputs = "".join(
        f'<label>{e(label)} <input name="{name}" type="{kind}"{" required" if required else ""} {extra}></label>'
        for name, label, kind, required, extra in FIELDS)
    return (f'<h2>Add an entry</h2><form id="add-worklist" class="add-node">{inputs}'
            f'<button type="submit">Add</button></form>')


async def worklist_page(request: Request) -> Response:
    entries = await Worklist(ctx(request).archive).list()
    write = may(request, "write")
    rows = []
    for entry in entries:
        s = entry.summary()
        delete = (f'<button class="danger remove-worklist" data-id="{e(s["id"])}" '
                  f'data-what="{e(s["accession"] or s["patient_id"])}">Delete</button>') if write else ""
        rows.append([e(person(s["patient_name"])), e(s["patient_id"]), e(s["accession"]), e(s["modality"]),
                     e(_when(s["start"])), e(s["station"]), e(s["procedure"]), e(s["status"]), delete])
    listing = table(("Patient", "Patient ID", "Accession", "Modality", "Scheduled", "Station AE", "Procedure",
                     "Status", ""), rows, "The worklist is empty.", "worklist")
    return page(request, "Worklist", listing + (_add_form() if write else ""))


__all__ = ["worklist_page"]
