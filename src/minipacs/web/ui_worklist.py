"""The Worklist page of the web UI (/ui/worklist): the Modality Worklist entries (core/worklist.py).

The page lists entries; adding (a small form) and deleting are done by app.js against the
REST API (web/rest_worklist.py, ``POST /api/worklist`` with a PS3.18 JSON dataset and
``DELETE /api/worklist/{id}``), so web/auth.py decides them. A viewer sees neither.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.worklist import Worklist
from minipacs.web.pages import date, render
from minipacs.web.types import ctx


def _when(start: str) -> str:
    day, _, time = start.partition(" ")
    if len(time) >= 4 and time[:4].isdigit():
        time = f"{time[:2]}:{time[2:4]}"
    return f"{date(day)} {time}".strip()


async def worklist_page(request: Request) -> Response:
    entries = await Worklist(ctx(request).archive).list()
    summaries = [(s, _when(s["start"])) for s in (entry.summary() for entry in entries)]
    return render(request, "worklist.html", "Worklist", entries=summaries)


__all__ = ["worklist_page"]
