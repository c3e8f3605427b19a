"""The Query/Retrieve page of the web UI (/ui/remote): search a registered node, retrieve from it.

The page is a form and empty tables; app.js does the talking, against the REST API
(web/rest_nodes.py): ``POST /api/nodes/{id}/query`` (C-FIND, PS3.4 C.4.1), then
``POST /api/nodes/{id}/retrieve`` (C-MOVE to us, PS3.4 C.4.2, or C-GET, C.4.3), a job
whose progress it polls at ``/api/jobs/{id}``. web/auth.py decides both (write
permission): a viewer gets the form, no retrieve controls, and the server's 403
sentence if they search anyway.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.web.dicomweb import ctx
from minipacs.web.ui_html import e, may, page

#: The search form: (field name, label, input type, extra attributes); app.js maps them to C-FIND keys.
FIELDS: Final = (
    ("name", "Patient name", "search", 'maxlength="64"'),
    ("pid", "Patient ID", "search", 'maxlength="64"'),
    ("from", "Date from", "date", ""),
    ("to", "to", "date", ""),
    ("modality", "Modality", "search", 'maxlength="16" placeholder="CT"'),
    ("accession", "Accession", "search", 'maxlength="16"'),
)


async def remote_page(request: Request) -> Response:
    registry = ctx(request).nodes
    nodes = await registry.list() if registry is not None else []
    if not nodes:
        return page(request, "Query/Retrieve", '<p class="hint">No DICOM nodes are registered; add one on the '
                    '<a href="/ui/nodes">Nodes page</a> to query it.</p>')
    wanted = request.query_params.get("node", "")
    options = "".join(f'<option value="{e(n.id)}"{" selected" if str(n.id) == wanted else ""}>{e(n.ae_title)} '
                      f'({e(n.address)}){" – " + e(n.description) if n.description else ""}</option>'
                      for n in nodes)
    inputs = "".join(f'<label>{e(label)} <input name="{name}" type="{kind}" {extra}></label>'
                     for name, label, kind, extra in FIELDS)
    form = (f'<form id="remote-query" class="search"><label>Node <select name="node">{options}</select></label>'
            '<label>Level <select name="level"><option value="study">Studies</option>'
            f'<option value="series">Series</option></select></label>{inputs}'
            '<button type="submit">Search</button></form>')
    our_title = ctx(request).settings.ae_title
    if may(request, "write"):
        actions = (f'<div id="retrieve" class="toolbar" hidden><label>How <select name="method">'
                   f'<option value="move">C-MOVE to us ({e(our_title)})</option>'
                   '<option value="get">C-GET (same association)</option></select></label>'
                   '<button type="button" id="retrieve-button" disabled>Retrieve selected</button>'
                   '<progress id="retrieve-progress" max="1" value="0" hidden></progress>'
                   '<span id="retrieve-summary" aria-live="polite"></span></div>')
        hint = (f'<p class="hint">C-MOVE asks the node to send the images to us as {e(our_title)}: the node must '
                'know that AE title with our address and DICOM port. C-GET brings them back on the same '
                'association and needs no such entry.</p>')
    else:
        actions = ""
        hint = ('<p class="hint">Your role may not query or retrieve from other nodes (the server answers 403); '
                'ask an admin for an operator account.</p>')
    results = ('<p id="remote-status" class="status" aria-live="polite"></p>'
               '<table id="remote-results" class="remote" hidden><thead></thead><tbody></tbody></table>')
    return page(request, "Query/Retrieve", form + hint + actions + results)


__all__ = ["remote_page"]
