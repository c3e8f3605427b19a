"""The Rules page of the web UI (/ui/rules, admin) and the deliveries section of the study page.

The page lists every auto-routing rule in force (core/rules.py): the config file's, read-only, and
those made through ``/api/rules``, which it can delete and create (app.js posts the JSON of a
``[[rules]]`` table to ``POST /api/rules``; the server checks it and says what is wrong).
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.routing import STATUS_WORDS, study_receipts, summarise
from minipacs.core.rules import RULE_KEYS, TRIGGERS, RuleBook
from minipacs.web.pages import render
from minipacs.web.types import ctx

#: Receipts not delivered that the study page lists one by one (the summary counts them all).
STUDY_PAGE_PROBLEMS: Final = 50
EXAMPLE: Final = {
    "name": "ct-to-ai",
    "when": "stable",
    "stable_seconds": 30,
    "match": {"Modality": "CT"},
    "calling_aet": "CT01",
    "send_to": ["AI_NODE"],
}


async def rules_page(request: Request) -> Response:
    context = ctx(request)
    rules = await RuleBook(context.archive, context.settings.rules, context.nodes).all()
    shown = []
    for rule in rules:
        data = rule.to_json()
        what = {k: v for k, v in data.items() if k not in ("name", "when", "source", "read_only")}
        shown.append({**data, "what": json.dumps(what, sort_keys=True)})
    return render(
        request,
        "rules.html",
        "Routing rules",
        rules=shown,
        triggers=[(t.value, words) for t, words in TRIGGERS.items()],
        keys=RULE_KEYS,
        example=json.dumps(EXAMPLE, indent=2),
    )


async def study_deliveries(request: Request, uid: str) -> dict[str, Any]:
    """What the study page's Deliveries section shows."""
    receipts = await study_receipts(ctx(request).archive, uid)
    problems = [r for r in receipts if r["status"] != "sent"]
    return {
        "summary": summarise(receipts),
        "problems": problems[:STUDY_PAGE_PROBLEMS],
        "more_problems": max(len(problems) - STUDY_PAGE_PROBLEMS, 0),
        "legend": {s.value: words for s, words in STATUS_WORDS.items()},
    }


__all__ = ["rules_page", "study_deliveries"]
