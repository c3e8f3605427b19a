"""The package type-checks under mypy --strict (STYLE.md habit 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "src/minipacs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"MYPYPATH": "src", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
