"""`minipacs conformance`: the DICOM Conformance Statement (PS3.2) of this build, in Markdown, generated
from the services the server runs (services/conformance.py), with the settings' defaults."""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK
from minipacs.config import Settings

NEEDS_SETTINGS = False


def register(sub: Any) -> None:
    sub.add_parser("conformance", help="print the DICOM Conformance Statement of this build (Markdown)")


async def generate() -> str:
    """The statement of the services a default server runs (built on a throwaway data folder, not started)."""
    quiet = logging.getLogger("minipacs")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the throwaway archive's start-up notes are not the reader's business
    try:
        with tempfile.TemporaryDirectory(prefix="minipacs-conformance-") as folder:
            return await _generate(Path(folder))
    finally:
        quiet.setLevel(level)


async def _generate(folder: Path) -> str:
    from minipacs.bootstrap import build_app
    from minipacs.services.conformance import statement
    from minipacs.web.conformance_web import sections

    app = await build_app(Settings(data_dir=folder, fsync=False))
    try:
        return statement(app.dicom.services, Settings()) + "\n" + sections()
    finally:
        await app.close(grace=0.1)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    print(asyncio.run(generate()))
    return EXIT_OK
