"""The storage policy pages of the web UI (issue 13, "Storage policy"): Retention and Storage.

- ``/ui/retention`` (admin): the ``[[retention]]`` rules of the configuration, the dry run of
  core/retention.py (what a run would delete now, and why; nothing is deleted by looking) and a
  "Run now" button: app.js posts ``POST /api/retention/run`` (web/rest_retention.py) and follows the
  job. The rules are read-only here, as in the config file (docs/RETENTION.md).
- ``/ui/storage`` (read): the disk the archive uses and what compression saved (the figures of
  ``GET /api/storage``), the ``[[compression]]`` policies, and for writers a form that compresses
  one study now: app.js posts ``POST /api/storage/compress`` (web/rest_storage.py) and follows the job.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core import retention
from minipacs.core.compression import SYNTAXES, Compressor
from minipacs.web.pages import render
from minipacs.web.types import ctx

#: Studies of the dry run the Retention page lists (the counts and bytes cover all of them).
PREVIEW_SHOWN: Final = 200


def _match(match: dict[str, Any]) -> str:
    return json.dumps(match, sort_keys=True) if match else ""


async def retention_page(request: Request) -> Response:
    context = ctx(request)
    rules = list(context.settings.retention)
    planned = (
        (await retention.plan(context.archive, rules, max_deletions=context.settings.retention_max_deletions)).to_json()
        if rules
        else None
    )
    shown = [{**rule.to_json(), "match": _match(dict(rule.match))} for rule in rules]
    return render(
        request,
        "retention.html",
        "Retention",
        rules=shown,
        plan=planned,
        studies=planned["studies"][:PREVIEW_SHOWN] if planned else [],
        more=max(len(planned["studies"]) - PREVIEW_SHOWN, 0) if planned else 0,
        interval=context.settings.retention_interval_seconds,
        max_deletions=context.settings.retention_max_deletions,
    )


async def storage_page(request: Request) -> Response:
    context = ctx(request)
    figures = await Compressor(context.archive).savings()
    stored = figures["stored_bytes"]
    policies = [{**p.to_json(), "match": _match(dict(p.match))} for p in context.settings.compression]
    return render(
        request,
        "storage.html",
        "Storage",
        figures=figures,
        ratio=round(figures["original_bytes"] / stored, 3) if stored else 1.0,
        policies=policies,
        syntaxes=[(s.name, s.section) for s in SYNTAXES.values()],
    )


__all__ = ["PREVIEW_SHOWN", "retention_page", "storage_page"]
