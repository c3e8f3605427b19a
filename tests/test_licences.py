"""Every runtime dependency of minipacs is permissively licensed (issue 12 item 9): minipacs is MIT.

The closure starts at pyproject.toml's ``[project] dependencies`` (this worktree's, not the
installed metadata, which may be older) and follows each installed distribution's
``Requires-Dist`` (importlib.metadata), leaving out extras nobody asked for and markers that
do not hold here. A distribution's licence is its ``License-Expression`` (SPDX), else its
``License ::`` classifiers, else a short ``License`` field. Policy:

- permissive (MIT, BSD, Apache-2.0, ISC, PSF, Zlib, ...): fine;
- GPL, AGPL and LGPL: a failure. LGPL too: minipacs ships as a Python package whose users
  install the dependencies themselves, so LGPL would mostly be harmless, but the project's
  brief says "no GPL" and a permissive decoder exists for every syntax;
- anything else (unknown, other copyleft such as MPL), and a GNU licence's *text* among the
  licence files a distribution ships (a bundled library's): a failure unless the distribution is in
  :data:`REVIEWED` with that exact licence and a reason, so a licence change upstream comes back for review.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT: Final = Path(__file__).resolve().parents[1] / "pyproject.toml"

# SPDX identifiers (lower case) of permissive licences, and the names some packages use instead
PERMISSIVE: Final = frozenset(
    {
        "mit",
        "mit-0",
        "mit-cmu",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "0bsd",
        "apache-2.0",
        "apache 2.0",
        "apache software license",
        "isc",
        "psf-2.0",
        "python-2.0",
        "zlib",
        "cc0-1.0",
        "hpnd",
        "unlicense",
        "bsl-1.0",
        "mit license",
        "bsd license",
    }
)
COPYLEFT: Final = re.compile(r"\b(A|L)?GPL|GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC", re.IGNORECASE)
# the heading of a GNU licence's own text (a mere mention, "GPL-compatible", is not one)
COPYLEFT_TEXT: Final = re.compile(r"GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE\s+Version \d")
# Trove "License ::" classifiers (their last part) -> SPDX
CLASSIFIERS: Final[dict[str, str]] = {
    "MIT License": "MIT",
    "BSD License": "BSD",
    "Apache Software License": "Apache-2.0",
    "ISC License (ISCL)": "ISC",
    "Python Software Foundation License": "PSF-2.0",
    "zlib/libpng License": "Zlib",
    "The Unlicense (Unlicense)": "Unlicense",
    "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0",
    "GNU Affero General Public License v3": "AGPL-3.0",
}
# Reviewed exceptions: distribution -> (its licence exactly as licence_of() reports it, with "+copyleft text"
# when its licence files carry GPL-family text; why it is acceptable for an MIT project)
REVIEWED: Final[dict[str, tuple[str, str]]] = {
    "tqdm": (
        "MPL-2.0 AND MIT",
        "MPL-2.0 is file-level copyleft: minipacs uses tqdm unmodified as a library, "
        "which puts no obligation on minipacs' own files",
    ),
    "numpy": (
        "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0 +copyleft text",
        "the wheel's LICENSE.txt also covers the GCC runtime libraries it links dynamically: libgfortran "
        "(GPL-3.0 with the GCC Runtime Library Exception, which lets any program use it) and libquadmath "
        "(LGPL-2.1-or-later, a separate shared library that can be replaced); numpy itself is BSD",
    ),
}


@dataclass(frozen=True)
class Licence:
    name: str  # the distribution
    licence: str  # as declared
    copyleft_text: bool  # a GNU licence's text among the licence files it ships

    @property
    def reported(self) -> str:
        return self.licence + (" +copyleft text" if self.copyleft_text else "")


def runtime_requirements() -> list[str]:
    """minipacs' runtime dependencies as pyproject.toml lists them (no optional ones)."""
    with PYPROJECT.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def closure(roots: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` need, recursively: canonical name -> distribution."""
    found: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in roots]
    missing: list[str] = []
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key in found:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.append(req.name)
            continue
        found[key] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    if missing:
        pytest.fail(f"runtime dependencies not installed: {sorted(missing)}; install them with: pip install -e .")
    return found


def licence_of(dist: md.Distribution) -> Licence:
    meta = dist.metadata
    declared = (meta.get("License-Expression") or "").strip()
    if not declared:
        classifiers = [
            c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
        ]
        declared = " OR ".join(CLASSIFIERS.get(c, c) for c in classifiers if c != "OSI Approved")
    if not declared:
        field = (meta.get("License") or "").strip()
        declared = field if field and "\n" not in field and len(field) <= 60 else "UNKNOWN"
    texts = [f for f in dist.files or [] if re.search(r"LICEN[CS]E|COPYING|NOTICE", f.name, re.IGNORECASE)]
    copyleft_text = any(
        COPYLEFT_TEXT.search(Path(str(dist.locate_file(f))).read_text(errors="ignore"))
        for f in texts
        if Path(str(dist.locate_file(f))).is_file()
    )
    return Licence(str(meta["Name"]), declared, copyleft_text)


def verdict(licence: str) -> str:
    """``permissive``, ``copyleft`` or ``unknown`` for a licence expression (SPDX AND/OR, parentheses ignored)."""
    alternatives = [a.strip(" ()") for a in re.split(r"\s+OR\s+|\s*/\s*", licence, flags=re.IGNORECASE)]
    verdicts = []
    for alternative in alternatives:
        terms = [t.strip(" ()") for t in re.split(r"\s+AND\s+", alternative, flags=re.IGNORECASE)]
        if any(COPYLEFT.search(t) for t in terms):
            verdicts.append("copyleft")
        elif all(t.lower() in PERMISSIVE for t in terms):
            verdicts.append("permissive")
        else:
            verdicts.append("unknown")
    if "permissive" in verdicts:  # a choice: we take the permissive one
        return "permissive"
    return "copyleft" if "copyleft" in verdicts else "unknown"


def problems(licences: list[Licence]) -> list[str]:
    out = []
    for lic in licences:
        key = canonicalize_name(lic.name)
        if key in REVIEWED:
            if REVIEWED[key][0] != lic.reported:
                out.append(f"{lic.name}: reviewed as {REVIEWED[key][0]!r}, now {lic.reported!r}: review it again")
        elif verdict(lic.licence) != "permissive" or lic.copyleft_text:
            out.append(f"{lic.name}: {lic.reported} ({verdict(lic.licence)})")
    return out


def test_every_runtime_dependency_is_permissively_licensed() -> None:
    licences = sorted(
        (licence_of(d) for key, d in closure(runtime_requirements()).items() if key != "minipacs"),
        key=lambda lic: lic.name.lower(),
    )
    table = "\n".join(f"  {lic.name:<24} {lic.reported}" for lic in licences)
    found = problems(licences)
    assert not found, "licences minipacs (MIT) cannot take:\n  " + "\n  ".join(found) + "\nall of them:\n" + table


def test_the_decoders_are_in_the_closure_and_the_gpl_one_is_not() -> None:
    names = set(closure(runtime_requirements()))
    assert {"python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg", "pyjpegls"} <= names
    assert "pylibjpeg-libjpeg" not in names  # GPL-3.0


@pytest.mark.parametrize(
    "licence,expected",
    [
        ("MIT", "permissive"),
        ("BSD-3-Clause AND 0BSD AND MIT", "permissive"),
        ("Apache-2.0", "permissive"),
        ("MIT OR GPL-3.0-or-later", "permissive"),
        ("(MIT OR Apache-2.0)", "permissive"),
        ("GPL-3.0", "copyleft"),
        ("GPL-3.0-or-later", "copyleft"),
        ("AGPL-3.0-only", "copyleft"),
        ("LGPL-2.1-or-later", "copyleft"),
        ("MIT AND GPL-2.0", "copyleft"),
        ("GNU General Public License v3", "copyleft"),
        ("MPL-2.0 AND MIT", "unknown"),
        ("UNKNOWN", "unknown"),
        ("Proprietary", "unknown"),
    ],
)
def test_verdict(licence: str, expected: str) -> None:
    assert verdict(licence) == expected


def test_problems_flags_copyleft_unknown_text_and_a_changed_reviewed_licence() -> None:
    assert problems([Licence("pylibjpeg-libjpeg", "GPL-3.0", False)]) == ["pylibjpeg-libjpeg: GPL-3.0 (copyleft)"]
    assert problems([Licence("x", "UNKNOWN", False)]) == ["x: UNKNOWN (unknown)"]
    assert problems([Licence("y", "MIT", True)]) == ["y: MIT +copyleft text (permissive)"]
    assert problems([Licence("tqdm", "MPL-2.0 AND MIT", False), Licence("z", "BSD-3-Clause", False)]) == []
    assert problems([Licence("tqdm", "MPL-2.0", False)]) == [
        "tqdm: reviewed as 'MPL-2.0 AND MIT', now 'MPL-2.0': review it again"
    ]
