"""The Query/Retrieve page of the web UI (/ui/remote): search a registered node, retrieve from it.

The page is a form and empty tables; app.js does the talking, against the REST API
(web/rest_nodes.py): ``POST /api/nodes/{id}/query`` (C-FIND, PS3.4 C.4.1), then
``POST /api/nodes/{id}/retrieve`` (C-MOVE to us, PS3.4 C.4.2, or C-GET, C.4.3), a job
whose progress it polls at ``/api/jobs/{id}``. web/auth.py decides both (write
permission): a viewer gets the form, no retrieve controls, and the server's 403
sentence if they search anyway.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.web.pages import render
from minipacs.web.types import ctx


async def remote_page(request: Request) -> Response:
    registry = ctx(request).nodes
    nodes = await registry.list() if registry is not None else []
    return render(
        request,
        "remote.html",
        "Query/Retrieve",
        nodes=nodes,
        wanted=request.query_params.get("node", ""),
        our_title=ctx(request).settings.ae_title,
    )


__all__ = ["remote_page"]
