"""Each vocabulary table is defined once, in dicom/ (issue 9, point 1; STYLE.md habit 10).

The source outside dicom/ is parsed and searched for the telltale literals of each
table: the VR families, the level spellings, the PS3.8 reason terms, DICOM UIDs.
A second copy anywhere fails here; import the table from dicom/ instead.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from minipacs.dicom import reasons
from minipacs.dicom.levels import LEVEL_NAMES, LEVEL_SPELLINGS
from minipacs.dicom.vr import CHARSET_VRS, LONG_LENGTH_VRS

SRC = Path(__file__).resolve().parents[2] / "src" / "minipacs"
DICOM = SRC / "dicom"
MIGRATIONS = SRC / "index" / "migrations"  # frozen history: table names as they were created
#: Files outside dicom/ that still spell UIDs out, each for a reason of its own.
UID_LITERALS_ALLOWED = {
    # the transfer syntaxes a C-GET proposes, in our order of preference (a policy, not a definition)
    "services/retrieve_scu.py",
    # PS3.18 Table 8.7.3-5: the media type of each compressed transfer syntax
    "web/accept.py",
}


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if DICOM not in path.parents and MIGRATIONS not in path.parents:
            yield str(path.relative_to(SRC)), ast.parse(path.read_text(), str(path))


def _literal_strings(node: ast.AST) -> set[str]:
    """The str/bytes constants directly inside a collection literal (a dict: its keys)."""
    items: list[ast.expr | None]
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        items = list(node.elts)
    elif isinstance(node, ast.Dict):
        items = list(node.keys)
    else:
        return set()
    found = set()
    for item in items:
        if isinstance(item, ast.Constant) and isinstance(item.value, (str, bytes)):
            value = item.value
            found.add(value.decode("latin-1") if isinstance(value, bytes) else value)
    return found


def _collections(min_common: int, family: set[str]) -> list[str]:
    hits = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            common = _literal_strings(node) & family
            if len(common) >= min_common:
                hits.append(f"{name}:{getattr(node, 'lineno', '?')} {sorted(common)}")
    return hits


def test_the_scan_sees_a_copy() -> None:
    """The telltale search finds a copy when there is one (it can fail)."""
    tree = ast.parse('X = frozenset({"OB", "OD", "OW", "SQ", "UN", "UT"})\nY = ("PATIENT", "STUDY", "SERIES")')
    assert len(_literal_strings(tree.body[0].value.args[0]) & LONG_LENGTH_VRS) == 6  # type: ignore[attr-defined]
    assert len(_literal_strings(tree.body[1].value) & set(LEVEL_NAMES)) == 3  # type: ignore[attr-defined]


def test_vr_families_are_defined_once() -> None:
    assert _collections(5, set(LONG_LENGTH_VRS)) == []
    assert _collections(5, set(CHARSET_VRS)) == []


@pytest.mark.parametrize(
    "family",
    [
        set(LEVEL_NAMES),
        {s.resource for s in LEVEL_SPELLINGS.values()},
        {s.noun for s in LEVEL_SPELLINGS.values()},
    ],
    ids=["dicom", "resource", "noun"],
)
def test_level_spellings_are_defined_once(family: set[str]) -> None:
    assert _collections(3, family) == []


def test_reason_terms_are_defined_once() -> None:
    terms = {*reasons.REJECT_REASONS.values(), *reasons.ABORT_REASONS.values(), *reasons.REJECT_RESULTS.values()}
    terms.discard("reserved")
    spellings = {t.lower() for t in terms} | {reasons.in_words(t).lower() for t in terms}
    hits = [
        f"{name}:{node.lineno} {node.value!r}"
        for name, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in spellings
    ]
    assert hits == []


def test_uids_are_defined_once() -> None:
    hits = {
        name
        for name, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("1.2.840.10008.")
    }
    assert hits <= UID_LITERALS_ALLOWED, sorted(hits - UID_LITERALS_ALLOWED)


def test_dicom_imports_only_the_standard_library_pydicom_and_itself() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"pydicom", "minipacs"}
    for path in sorted(DICOM.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed, f"{path.name} imports {name}"
                if top == "minipacs":
                    assert name.startswith("minipacs.dicom"), f"{path.name} imports {name}: dicom/ imports no layer"
