"""`minipacs modify`: see cli/corrections.py."""

from __future__ import annotations

from minipacs.cli.corrections import NEEDS_SETTINGS
from minipacs.cli.corrections import register_modify as register
from minipacs.cli.corrections import run_modify as run

__all__ = ["NEEDS_SETTINGS", "register", "run"]
