"""The ``-k KEY[=VALUE]`` flags of ``find``, ``move``, ``get`` and ``worklist query`` (as DCMTK's
findscu/movescu/getscu take them) -> the structured keys services/outbound.py takes.

The CLI is the only place that reads ``"k=v"`` text; the web passes its JSON keys as they are.
"""

from __future__ import annotations

from collections.abc import Iterable


def parse_keys(specs: Iterable[str]) -> dict[str, str]:
    """``["PatientName=Doe*", "StudyDate"]`` -> ``{"PatientName": "Doe*", "StudyDate": ""}``.

    Only the first ``=`` separates the key from its value, so a value keeps any ``=`` (a PN's
    component groups, PS3.5 6.2.1.1) and ``\\`` (several values, PS3.5 6.4). No ``=``, or
    nothing after it: a return key (universal matching, PS3.4 C.2.2.2.3). A key given twice: the
    last value counts, as when the identifier was built flag by flag.
    """
    keys: dict[str, str] = {}
    for spec in specs:
        path, _, value = spec.partition("=")
        keys[path] = value
    return keys


__all__ = ["parse_keys"]
