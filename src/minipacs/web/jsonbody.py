"""JSON request bodies of the control API (rules, corrections, compression, nodes): bounded and strict.

RFC 8259 JSON, read with three explicit limits so that a hostile body is a 4xx with a
sentence, never a 500 or a process that reads 10 MB into memory:

- at most :data:`MAX_JSON_BYTES` bytes (413 as soon as the Content-Length or the count passes it);
- nesting at most :data:`MAX_JSON_DEPTH` arrays/objects deep (400; Python's decoder would raise
  RecursionError, a 500, at about a thousand);
- ``NaN``, ``Infinity`` and ``-Infinity``, which Python's decoder accepts but RFC 8259 6 does not,
  are refused (400);
- a string (value or member name) holding an unpaired surrogate escape such as ``"\\ud800"`` is
  refused (400): Python's decoder accepts it, but no UTF-8 text holds it (RFC 8259 8.1, 8.2; RFC 3629),
  so it failed later, in SQLite or in a page, as a 500 -- and a worklist entry holding one broke
  every later listing.

A control body names a few settings; none of the bodies these endpoints take comes near the
limits, so they are named constants rather than settings (docs/HOSTILE_INPUT.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any, Final

from starlette.requests import ClientDisconnect, Request

from minipacs.web.errors import HttpError
from minipacs.web.limits import refuse_declared_length

#: Largest JSON control body, in bytes (a rule, a correction, a node: a few hundred bytes each).
MAX_JSON_BYTES: Final = 1024 * 1024
#: Deepest nesting of arrays and objects in a control body (the deepest one we take, a rule's match, is 3).
MAX_JSON_DEPTH: Final = 32


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259 6)")


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Collection[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if level + 1 <= MAX_JSON_DEPTH:  # deeper than the limit: refused anyway, no need to walk on
            stack.extend((child, level + 1) for child in children)
    return deepest


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The first string of ``value`` (member names included) holding a surrogate code point, or None.
    Python's decoder pairs escaped surrogate pairs into one character, so what is left is unpaired."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


async def read_json(request: Request, *, limit: int = MAX_JSON_BYTES, empty: Any = None) -> Any:
    """The request body as JSON, within the limits above; ``empty`` for a body of only white space
    (None: refused as not JSON). HttpError 413 / 400 saying which limit and what to send."""
    refuse_declared_length(request, limit, "the JSON body", f"at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "too_large", f"the JSON body exceeds {limit} bytes; nothing was changed")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "incomplete_body", "the client left before the body was complete") from None
    raw = b"".join(chunks)
    if not raw.strip() and empty is not None:
        return empty
    try:
        value = json.loads(raw, parse_constant=_constant)
    except RecursionError:
        raise HttpError(
            400, "invalid_json", f"the JSON body nests more than {MAX_JSON_DEPTH} arrays or objects deep"
        ) from None
    except ValueError as exc:  # also UnicodeDecodeError: RFC 8259 8.1 says UTF-8
        raise HttpError(400, "invalid_json", f"the body is not JSON: {str(exc)[:200]}") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise HttpError(400, "invalid_json", f"the JSON body nests more than {MAX_JSON_DEPTH} arrays or objects deep")
    bad = lone_surrogate(value)
    if bad is not None:
        raise HttpError(
            400,
            "invalid_json",
            f"the string {ascii(bad[:40])} holds "
            "an unpaired surrogate escape (\\ud800-\\udfff), which no UTF-8 text can hold (RFC 8259 8.2): "
            "send the character itself, or both halves of its surrogate pair",
        )
    return value


async def read_object(
    request: Request, what: str, *, allowed: Collection[str] | None = None, limit: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """The body as a JSON object (``what`` says what it should hold, for the error); with ``allowed``,
    a key not in it is refused (400) rather than ignored, so a misspelt option is not silently dropped."""
    value = await read_json(request, limit=limit)
    if not isinstance(value, dict):
        raise HttpError(400, "invalid_json", f"the body must be a JSON object: {what}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise HttpError(
                400,
                "invalid_parameter",
                f"unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; this body takes "
                f"{', '.join(sorted(allowed))}",
            )
    return value


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "depth", "lone_surrogate", "read_json", "read_object"]
