"""Cross-site request forgery: a state-changing request must show it was not started by another site.

A page on another site can make the browser send a POST with a form's content types
(``application/x-www-form-urlencoded``, ``multipart/form-data``, ``text/plain``: the
"CORS-safelisted" ones, Fetch §2.2.2) without asking first, and the browser adds any
cached Basic credentials; that is how a form elsewhere once registered a node with
get/move rights. Any other content type, header or method (JSON, ``application/dicom``,
``multipart/related``, ``X-CSRF-Token``, DELETE, PUT) needs a CORS preflight that this
server never grants. So every POST, PUT, PATCH and DELETE:

1. is refused when the browser says another site started it: ``Sec-Fetch-Site`` other
   than ``same-origin`` or ``none`` (Fetch Metadata), or, from a browser too old to send
   that, an ``Origin`` (RFC 6454 §7) that is not this server's own (``null`` included).
   Clients that are not browsers send neither and pass.
2. passes with the session's CSRF token in ``X-CSRF-Token`` (app.js sends it), or with an
   ``Authorization: Bearer`` token: a browser never adds one by itself, and a page that sets
   it needs a preflight (Authorization is not CORS-safelisted), so it proves a script, which
   may then post ``multipart/form-data`` (``curl -F``) like any other type. Not Basic: a browser
   sends cached Basic credentials with any site's form;
3. with a form content type, passes only with a same-origin ``Origin`` or
   ``Sec-Fetch-Site``, or on the login and logout forms, which check their own token.
   Scripts send JSON, ``application/dicom`` or ``multipart/related``. A body without a
   Content-Type is a script's: a browser sends ``Origin`` with every cross-origin POST,
   and a form always names its type.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final

from starlette.types import Scope

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: Content types a cross-site form or a no-cors fetch may send without a preflight (Fetch §2.2.2).
FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
HEADER: Final = "x-csrf-token"
#: Sec-Fetch-Site values that mean "not started by another site"
OWN: Final = frozenset({"same-origin", "none"})


def own_origin(scope: Scope, headers: Mapping[str, str]) -> str:
    """This server's origin as the browser names it: scheme://host[:port] from the Host header."""
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()


def refusal(scope: Scope, session_token: str | None, form_checks_itself: bool = False) -> str | None:
    """Why this request may not change anything (a sentence), or None if it may."""
    if scope["method"] in SAFE_METHODS:
        return None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    site = headers.get("sec-fetch-site", "").lower()
    origin = headers.get("origin", "").lower()
    if site:  # the browser's own word (Fetch Metadata): pages cannot set it
        if site not in OWN:
            return (
                f"this request was started by another site (Sec-Fetch-Site: {site[:20]}); changes come only "
                "from this server's own pages or from scripts"
            )
        same_origin = site == "same-origin"
    else:  # older browsers: the Origin header
        if origin and origin != own_origin(scope, headers):
            return (
                f"this request comes from the page of another site ({origin[:100]}); changes come only from "
                "this server's own pages or from scripts"
            )
        same_origin = bool(origin)
    if headers.get("authorization", "")[:7].lower() == "bearer ":
        return None
    token = headers.get(HEADER)
    if token is not None:
        if session_token and hmac.compare_digest(token.encode(), session_token.encode()):
            return None
        return "the X-CSRF-Token header does not match this session; reload the page and try again"
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in FORM_TYPES or form_checks_itself or same_origin:
        return None
    return (
        f"a change sent as {media} (what a form on any site can send) must come from this server's pages "
        "or carry the X-CSRF-Token header; scripts: send JSON (Content-Type: application/json), "
        "application/dicom or multipart/related"
    )


__all__ = ["FORM_TYPES", "HEADER", "SAFE_METHODS", "own_origin", "refusal"]
