"""The Diagnostics page (issue 15): the findings of the association log with their evidence and fixes,
the AE registry's warnings, and a button per node that runs the doctor's steps through
``POST /api/nodes/{id}/doctor`` (web/rest_diagnostics.py); admin only, as the API is."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.web.pages import render
from minipacs.web.rest_diagnostics import site_findings
from minipacs.web.types import ctx


async def diagnostics_page(request: Request) -> Response:
    context = ctx(request)
    if context.nodes is None:
        return render(request, "diagnostics.html", "Diagnostics", registry_missing=True)
    found = await site_findings(context)
    return render(
        request,
        "diagnostics.html",
        "Diagnostics",
        registry_missing=False,
        report=found,
        nodes=await context.nodes.list(),
        can_check=context.outbound is not None,
    )


__all__ = ["diagnostics_page"]
