"""`minipacs jobs` names every kind of job the queue runs: its list is the modules' own constants,
and a server's queue registers exactly those kinds."""

from __future__ import annotations

import subprocess
import sys

from minipacs.cli.jobs import KINDS
from minipacs.core import anonymize, backup, compression_jobs, corrections, retention, routing
from minipacs.hl7 import adt, sequence
from minipacs.services import job_kinds


def test_the_help_lists_every_job_kind() -> None:
    constants = {
        job_kinds.SEND,
        job_kinds.RETRIEVE,
        routing.ROUTE,
        routing.PREFETCH,
        compression_jobs.COMPRESS,
        retention.KIND,
        anonymize.ANONYMIZE,
        corrections.JOB_KIND,
        backup.KIND,
        adt.JOB_KIND,
        sequence.ORDER_JOB_KIND,
    }
    assert set(KINDS) == constants and len(KINDS) == len(constants)
    shown = subprocess.run(
        [sys.executable, "-m", "minipacs.cli.main", "--help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    shown = " ".join(shown.split())  # argparse wraps the line
    assert f"background jobs ({', '.join(KINDS)})" in shown
