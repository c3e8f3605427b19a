"""The import layers of ARCHITECTURE.md hold: no cycle between packages, no import upward.

ARCHITECTURE.md, bottom first: `dicom` → `net`, `blobs` → `index` → `core` →
`services`, `hl7` → `web` → `bootstrap` → `cli`. A module imports its own
package and the packages below it, never above. Read as a graph, not one line:

- ``net`` and ``blobs`` both sit on ``dicom`` and know nothing of each other;
  net "knows nothing of the archive", so it sits on dicom only.
- ``index`` sits on ``blobs``; ``core`` on ``index`` and, through it, on blobs
  and dicom. Not on ``net``: the core has "no SQL, no network or web code".
- ``services`` are "PS3.4 service classes on top of net/" and call the core:
  they sit on ``core`` and ``net``. ``hl7`` is the other protocol edge beside
  them: it "maps core outcomes to HL7 codes", so it sits on ``core`` only.
- ``web`` sits on ``services`` (the one outbound module serves CLI and web) and
  ``hl7``; ``bootstrap`` on everything; ``cli`` on ``bootstrap``.
- The package root (``minipacs/__init__.py``: version, Implementation Class UID)
  is shared vocabulary below everything, like ``dicom``. Beneath it only
  ``lazy_gdcm``, which the root uses to import pydicom with GDCM deferred.

Where ``config`` belongs: above ``core``, below the edges (``web``) and
``bootstrap``. Settings holds core values (``Node``, ``User``,
``DuplicatePolicy``) that config.py parses and validates, so config imports core;
the web edge is built from Settings by bootstrap and reads its own limits and
users from it. The core never reads Settings: it takes the values it needs as
parameters from bootstrap, so core → config is a violation.

Imports are read with ``ast`` from every module under src/minipacs, including
imports inside functions, ``try`` blocks and ``if TYPE_CHECKING:`` blocks (a
type-only import still ties the layers together).

``KNOWN_VIOLATIONS`` lists the edges that break the rule today, each to be
removed by its fix. The test fails on a violation not in the list, and on an
entry that no longer occurs, so the list only shrinks and can hide nothing new.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Set
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "minipacs"

#: Layer → the layers it imports directly; a layer may also import what those
#: import (transitively), and itself. "root" is minipacs/__init__.py.
ALLOWED: dict[str, frozenset[str]] = {
    "lazy_gdcm": frozenset(),
    "root": frozenset({"lazy_gdcm"}),
    "dicom": frozenset({"root"}),
    "net": frozenset({"dicom"}),
    "blobs": frozenset({"dicom"}),
    "index": frozenset({"blobs"}),
    "core": frozenset({"index"}),
    "services": frozenset({"core", "net"}),
    "hl7": frozenset({"core"}),
    "config": frozenset({"core"}),
    "web": frozenset({"services", "hl7", "config"}),
    "bootstrap": frozenset({"web"}),
    "cli": frozenset({"bootstrap"}),
}

# The import edges (importing module, imported module) that run against the
# layers today. Delete an entry when its import is gone; never add one.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()  # all fixed; keep it empty


# ------------------------------------------------------------------ reading
def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    modules: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from X import ...``, relative imports included."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every module of the package that ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, is_package, node)
            for alias in node.names:
                # ``from minipacs import config`` imports a module, ``from minipacs
                # import __version__`` a name of the package.
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in known else target


def import_edges(src: Path = SRC) -> set[tuple[str, str]]:
    """(importing module, imported module) for every import inside the package."""
    modules = module_files(src)
    known = set(modules)
    edges: set[tuple[str, str]] = set()
    for module, path in modules.items():
        for target in imported_modules(module, path, known):
            if (target == PACKAGE or target.startswith(PACKAGE + ".")) and target != module:
                edges.add((module, target))
    return edges


def layer_of(module: str) -> str:
    """``minipacs.core.archive`` → "core"; ``minipacs.config`` → "config"; ``minipacs`` → "root"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def allowed_below(layer: str) -> set[str]:
    """The layers ``layer`` may import: itself and, transitively, what ALLOWED lists."""
    seen = {layer}
    todo = [layer]
    while todo:
        for below in ALLOWED[todo.pop()]:
            if below not in seen:
                seen.add(below)
                todo.append(below)
    return seen


def violations(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if layer_of(b) not in allowed_below(layer_of(a))}


def package_cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        la, lb = layer_of(a), layer_of(b)
        graph.setdefault(la, set())
        graph.setdefault(lb, set())
        if la != lb:
            graph[la].add(lb)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _listing(edges: Set[tuple[str, str]]) -> str:
    return "\n".join(f"    ({a!r}, {b!r}),  # {layer_of(a)} -> {layer_of(b)}" for a, b in sorted(edges))


# ------------------------------------------------------------------ tests
EDGES = import_edges()


def test_every_package_has_a_layer() -> None:
    unplaced = {layer_of(m) for m in module_files()} - set(ALLOWED)
    assert not unplaced, f"new package(s) {sorted(unplaced)}: place them in ALLOWED (and ARCHITECTURE.md)"


def test_no_import_runs_up_the_layers() -> None:
    new = violations(EDGES) - KNOWN_VIOLATIONS
    assert not new, (
        "these imports run up the layers of ARCHITECTURE.md; import downward only, or move the code:\n" + _listing(new)
    )


def test_known_violations_still_occur() -> None:
    fixed = KNOWN_VIOLATIONS - violations(EDGES)
    assert not fixed, "these imports are fixed (or gone): delete them from KNOWN_VIOLATIONS:\n" + _listing(fixed)


def test_no_import_cycle_between_packages() -> None:
    """Without the known violations the package graph has no cycle; as they are fixed the
    check covers every edge."""
    cycles = package_cycles(EDGES - KNOWN_VIOLATIONS)
    assert not cycles, f"import cycles between packages: {cycles}"


# ------------------------------------------------- the checker itself, on a made-up package
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_every_kind_of_import(tmp_path: Path) -> None:
    """Imports in functions, under TYPE_CHECKING, relative, and ``from package import module``."""
    src = _write(
        tmp_path,
        {
            "__init__.py": "VERSION = '1'\n",
            "config.py": "",
            "net/__init__.py": "",
            "net/dul.py": "from minipacs import VERSION\nfrom . import fsm\nfrom .fsm import State\n",
            "net/fsm.py": "",
            "core/__init__.py": "",
            "core/archive.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from minipacs.web.app import App\n"
                "def f() -> None:\n    import minipacs.net.dul as dul\n"
                "from minipacs import config\n"
                "from ..index import repo\n"
            ),
            "index/__init__.py": "",
            "index/repo.py": "",
            "web/__init__.py": "",
            "web/app.py": "",
        },
    )
    edges = import_edges(src)
    assert edges == {
        ("minipacs.net.dul", "minipacs"),
        ("minipacs.net.dul", "minipacs.net.fsm"),
        ("minipacs.core.archive", "minipacs.web.app"),
        ("minipacs.core.archive", "minipacs.net.dul"),
        ("minipacs.core.archive", "minipacs.config"),
        ("minipacs.core.archive", "minipacs.index.repo"),
    }
    assert violations(edges) == {
        ("minipacs.core.archive", "minipacs.web.app"),
        ("minipacs.core.archive", "minipacs.net.dul"),
        ("minipacs.core.archive", "minipacs.config"),
    }


def test_checker_finds_cycles() -> None:
    edges = {
        ("minipacs.web.rest", "minipacs.bootstrap"),
        ("minipacs.bootstrap", "minipacs.web.server"),
        ("minipacs.core.a", "minipacs.index.b"),
        ("minipacs.index.b", "minipacs.blobs.c"),
        ("minipacs.blobs.c", "minipacs.core.d"),
        ("minipacs.core.a", "minipacs.core.d"),
    }
    assert package_cycles(edges) == [["blobs", "core", "index"], ["bootstrap", "web"]]
    assert package_cycles({("minipacs.cli.main", "minipacs.bootstrap")}) == []


def test_layer_order() -> None:
    """Spot checks of ARCHITECTURE.md's order as ALLOWED encodes it."""
    assert allowed_below("cli") == set(ALLOWED)
    assert allowed_below("services") == {"services", "core", "index", "blobs", "net", "dicom", "root", "lazy_gdcm"}
    assert "net" not in allowed_below("core") and "core" not in allowed_below("net")
    assert "net" not in allowed_below("hl7") and "services" not in allowed_below("hl7")
    assert "config" in allowed_below("web") and "config" not in allowed_below("core")
