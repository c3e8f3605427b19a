"""A C-STORE from DCMTK's storescu with Nagle's algorithm on (no TCP_NODELAY=1, its default) is not
held by the server's delayed ACK.

storescu writes each PDU in two writes, its PDU and PDV headers first. With Nagle on, the second
write leaves only once the first is acknowledged; a server that re-arms TCP_QUICKACK only after a
whole PDU (before issue 10's reader change) let Linux delay that ACK, ~40 ms per C-STORE: 200
instances took ~9.5 s instead of ~0.5 s. The server now re-arms it after every read.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, run

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not hasattr(socket, "TCP_QUICKACK"),
        reason="delayed ACK timing and TCP_QUICKACK are Linux's",
    ),
]

#: Linux delays an ACK by at least 40 ms (TCP_DELACK_MIN); a stalled C-STORE costs that much or more.
PER_INSTANCE_LIMIT = 0.020


def _send(server: ServerProcess, folder: Path) -> float:
    started = time.perf_counter()
    res = run(
        [
            dcmtk("storescu"),
            "-aec",
            "MINIPACS",
            "-aet",
            "NAGLE",
            "-xe",
            "+sd",
            "+r",
            "127.0.0.1",
            str(server.port),
            str(folder),
        ],
        env={"TCP_NODELAY": "0"},  # DCMTK's default: Nagle on
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return time.perf_counter() - started


def test_storescu_with_nagle_on_is_not_held_by_delayed_acks(server: ServerProcess, tmp_path: Path) -> None:
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    few, many = tmp_path / "few", tmp_path / "many"
    for i in range(2):
        write_ct(few / f"f{i}.dcm", study_uid=study, series_uid=series)
    for i in range(42):
        write_ct(many / f"f{i}.dcm", study_uid=study, series_uid=series)
    base = min(_send(server, few) for _ in range(2))  # storescu's start-up, association, release
    took = _send(server, many)
    per_instance = (took - base) / 40
    assert per_instance < PER_INSTANCE_LIMIT, f"{per_instance * 1000:.1f} ms per C-STORE ({took:.2f} s for 42)"
