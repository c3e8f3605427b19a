"""REST for Modality Worklist entries (core/worklist.py): list, add, read, remove.

An entry travels as its dataset in the PS3.18 JSON model (Annex F), the form
``Dataset.to_json_dict`` writes and ``Dataset.from_json`` reads, wrapped as
``{"id", "status", "summary", "dataset"}``. A POST body is the dataset itself, or
``{"dataset": {...}}``; it needs what a modality needs (PatientID, one Scheduled
Procedure Step with a Modality), else 400 saying what is missing.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Final

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.errors import NotFound
from minipacs.core.worklist import Worklist, WorklistEntry, check_values
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_json
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits
from minipacs.web.types import ctx

#: Largest worklist entry accepted, in bytes of JSON (an entry is a few kB).
MAX_ENTRY_BYTES: Final = 1 << 20


def entry_json(entry: WorklistEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "status": entry.status,
        "summary": entry.summary(),
        "dataset": entry.dataset.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None),
    }


def _worklist(request: Request) -> Worklist:
    return Worklist(ctx(request).archive)


def _pk(request: Request) -> int:
    raw: str = request.path_params["id"]
    if not ascii_digits(raw) or len(raw) > 18:
        raise NotFound(f"no worklist entry {raw[:30]!r}; entries are named by their numeric id")
    return int(raw)


_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_EXAMPLE = '{"00100020": {"vr": "LO", "Value": ["123"]}}'


def _shape_problem(raw: dict[str, Any], where: str = "") -> str | None:
    """What breaks the PS3.18 F.2 shape of ``raw`` (tag keys; objects with "vr" and a list "Value"; sequence
    items that are objects themselves), as a sentence naming the element; None when the shape is right.
    pydicom's reader answers a wrong shape with Python's own words ("string indices must be integers")."""
    for key, element in raw.items():
        name = f"{where}{key}"
        if not _TAG.match(key):
            return f"{name[:40]!r} is not a tag: keys are 8 hexadecimal digits, as in {_EXAMPLE}"
        if not isinstance(element, dict):
            return f'the element {name} must be an object with a "vr" and a "Value" list, as in {_EXAMPLE}'
        vr = element.get("vr")
        if not isinstance(vr, str) or not re.fullmatch(r"[A-Z]{2}", vr):
            return f'the element {name} needs "vr": its two-letter value representation, such as "LO"'
        unknown = set(element) - {"vr", "Value", "BulkDataURI", "InlineBinary"}
        if unknown:
            extra = sorted(unknown)[0][:20]
            return f"the element {name} has {extra!r}; an element has vr, Value, BulkDataURI or InlineBinary"
        value = element.get("Value", [])
        if not isinstance(value, list):
            return f'the "Value" of {name} must be a list, as in {_EXAMPLE}'
        if vr == "SQ":
            for number, item in enumerate(value, 1):
                if not isinstance(item, dict):
                    return f"item {number} of the sequence {name} must be an object of elements"
                problem = _shape_problem(item, f"{name} item {number} > ")
                if problem:
                    return problem
    return None


def _dataset(raw: Any) -> Dataset:
    """The PS3.18 JSON body (read by web/jsonbody.py: bounded in size and depth) as a dataset; HttpError
    400 saying why it is not one."""
    if isinstance(raw, dict) and set(raw) == {"dataset"}:
        raw = raw["dataset"]
    if not isinstance(raw, dict) or not raw:
        raise HttpError(
            400,
            "invalid_json",
            "the body must be a worklist entry as a PS3.18 JSON object "
            '({"00100020": {"vr": "LO", "Value": ["123"]}, ...})',
        )
    problem = _shape_problem(raw)
    if problem:
        raise HttpError(400, "invalid_dataset", f"the body is not a PS3.18 JSON dataset: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom's complaints about a value become a refusal
            ds = Dataset.from_json(raw)
            check_values(ds)  # the ONE value check of typed entries (core/worklist.py), as `worklist add`
    except (ValueError, UserWarning) as exc:  # pydicom's sentences about a value
        raise HttpError(400, "invalid_dataset", f"the body is not a PS3.18 JSON dataset: {exc}") from None
    except OverflowError:  # 1e400 (infinity) for an IS or US value, a 4000-digit integer for an FD one
        raise HttpError(
            400,
            "invalid_dataset",
            "the body is not a PS3.18 JSON dataset: a number is too large for its element's VR",
        ) from None
    except (TypeError, KeyError, AttributeError, IndexError):  # Python's words, not for a client
        raise HttpError(
            400,
            "invalid_dataset",
            f"the body is not a PS3.18 JSON dataset: a value does not fit its element's VR; values are lists of "
            f'strings or numbers, a PN value a string or an object with "Alphabetic", as in {_EXAMPLE}',
        ) from None
    return ds


async def list_entries(request: Request) -> Response:
    """GET /api/worklist (?open=1: only SCHEDULED and IN PROGRESS)."""
    only_open = request.query_params.get("open", "") in ("1", "true", "yes")
    entries = await _worklist(request).list(include_closed=not only_open)
    return JSONResponse([entry_json(e) for e in entries])


async def add_entry(request: Request) -> Response:
    # bounded before it is read (request.body() read any size, then refused it), depth too, NaN refused
    ds = _dataset(await read_json(request, limit=MAX_ENTRY_BYTES))
    entry = await _worklist(request).add(ds)
    return JSONResponse(entry_json(entry), status_code=201, headers={"Location": f"/api/worklist/{entry.id}"})


async def read_entry(request: Request) -> Response:
    pk = _pk(request)
    entry = await _worklist(request).get(pk)
    if entry is None:
        raise NotFound(f"no worklist entry has the id {pk}")
    return JSONResponse(entry_json(entry))


async def remove_entry(request: Request) -> Response:
    pk = _pk(request)
    worklist = _worklist(request)
    if await worklist.get(pk) is None:
        raise NotFound(f"no worklist entry has the id {pk}")
    return JSONResponse({"removed": await worklist.remove(str(pk))})


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level} would take /worklist)."""
    return [
        Endpoint("/worklist", list_entries, "GET", "read", "Modality worklist entries (?open=1: open ones only)"),
        Endpoint("/worklist", add_entry, "POST", "write", "Add a worklist entry (PS3.18 JSON dataset)"),
        Endpoint("/worklist/{id}", read_entry, "GET", "read", "One worklist entry"),
        Endpoint("/worklist/{id}", remove_entry, "DELETE", "write", "Remove a worklist entry"),
    ]


__all__ = ["entry_json", "routes"]
