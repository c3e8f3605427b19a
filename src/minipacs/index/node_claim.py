"""One running node per node id on an index, and one node at all on a SQLite index.

Several nodes share one PostgreSQL index (docs/SCALE-OUT.md); each names itself with its
``node_id`` in the association log, the changes journal, the statistics and the job queue,
and a node that starts again takes back the running jobs of its id. Two live nodes with one id
would take each other's jobs, so a serving node holds a claim for its whole life:

- PostgreSQL: a session advisory lock keyed on the node id, on a connection of its own (the
  server drops it when the process dies, however it dies);
- SQLite: an exclusive ``flock`` on ``<database>.node-lock`` beside the database file. A SQLite
  index serves one node: its single writer lock and the data folder's own recovery lock are
  made for one process, so a second ``minipacs serve`` is refused whatever its node id.

Commands that only read or add a few rows (``minipacs import``, ``jobs``, ``changes``) take no claim.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

#: Seconds a starting node waits for its own claim, which another node may hold for a moment while it
#: routes what this one stored before it stopped (hold_if_gone).
CLAIM_WAIT: Final = 10.0
#: Suffix of the lock file beside a SQLite database.
SQLITE_LOCK_SUFFIX: Final = ".node-lock"
#: First half of the PostgreSQL advisory lock key of node claims (the second is the node id's hash);
#: distinct from the migration lock's single-key space.
_PG_CLAIM_CLASS: Final = 0x6D706E64  # "mpnd"


class NodeClaimRefused(RuntimeError):
    """Another live process holds the claim; the message says who, why it matters and what to do."""


def _pg_key(node_id: str, schema: str = "") -> int:
    """The 32-bit signed hash of the index's schema and the node id: the second key of
    ``pg_try_advisory_lock(int, int)``. Advisory locks are per database, and one database may hold
    several indexes in their own schemas (separate archives): each schema's nodes claim their own ids."""
    return int.from_bytes(hashlib.blake2b(f"{schema}\0{node_id}".encode(), digest_size=4).digest(), "big", signed=True)


@dataclass
class NodeClaim:
    """Held while the node serves; ``release`` gives it back (also done by the process's end)."""

    node_id: str
    _fd: int | None = None
    _conn: Connection | None = None
    _owns_engine: bool = True  # False: a connection of a shared engine (hold_if_gone)
    _engine: Engine | None = None  # PostgreSQL, this node's own claim: to take it again (keep)
    #: keep (a worker thread) and release (the shutdown) never use the connection at once.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def keep(self) -> bool:
        """Whether this node still holds its claim (PostgreSQL; elsewhere always). A session that was
        lost (PostgreSQL restarted, the connection cut) took the advisory lock with it: the claim is
        taken again on a new connection. False while another process holds it: a node routing what
        this one stored while it looked gone (core/routing.py), which lets go after its pass."""
        with self._lock:
            return self._keep()

    def _keep(self) -> bool:
        """The work of :meth:`keep`, under the lock."""
        if self._engine is None:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
                return True
            except Exception:  # noqa: BLE001 - the session is gone, and its lock with it
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
                self._conn = None
        try:
            conn = self._engine.connect()
        except Exception:  # noqa: BLE001 - PostgreSQL not back yet: the next look tries again
            return False
        try:
            if _try_lock(conn, self.node_id):
                self._conn = conn
                return True
        except Exception:  # noqa: BLE001
            pass
        conn.close()
        return False

    def release(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # Unlocked explicitly, in every case: a closed session's advisory locks go only once its
            # backend has finished ending, a moment after the client closed it, so a node looking at
            # once (hold_if_gone) could still find this one alive
            try:
                schema = str(conn.execute(text("SELECT current_schema()")).scalar() or "")
                conn.execute(
                    text("SELECT pg_advisory_unlock(:cls, :key)"),
                    {"cls": _PG_CLAIM_CLASS, "key": _pg_key(self.node_id, schema)},
                )
                conn.commit()
            except Exception:
                if not self._owns_engine:
                    conn.invalidate()  # its session ends, and the lock with it: never pooled still held
                    conn.close()
                    raise
                # our own session: closing it below ends it, and the lock with it
            if not self._owns_engine:  # a pooled connection goes back, unlocked
                conn.close()
                return
            engine = conn.engine
            try:
                conn.close()
            finally:
                engine.dispose()
        elif self._engine is not None:  # lost and not taken again: nothing held, the engine goes
            self._engine.dispose()
        self._engine = None


def _claim_sqlite(database: Path, node_id: str) -> NodeClaim:
    lock_path = database.with_name(database.name + SQLITE_LOCK_SUFFIX)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise NodeClaimRefused(
            f"another minipacs node ({holder}) is already serving the SQLite index {database}: a SQLite "
            "index serves one node only (one writer, one data folder). Stop the other node, give this one "
            "its own data folder, or run several nodes on one PostgreSQL index (index_url = "
            "postgresql+psycopg://..., each with its own node_id; see docs/SCALE-OUT.md)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"node {node_id}, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return NodeClaim(node_id, _fd=fd)


def _try_lock(conn: Connection, node_id: str) -> bool:
    """``pg_try_advisory_lock`` of ``node_id``'s claim on this session; no transaction stays open."""
    schema = str(conn.execute(text("SELECT current_schema()")).scalar() or "")
    got = conn.execute(
        text("SELECT pg_try_advisory_lock(:cls, :key)"), {"cls": _PG_CLAIM_CLASS, "key": _pg_key(node_id, schema)}
    ).scalar()
    conn.commit()  # the session lock outlives the transaction
    return bool(got)


def _claim_postgresql(url: str, node_id: str, wait: float = CLAIM_WAIT) -> NodeClaim:
    engine = create_engine(url, poolclass=NullPool)
    try:
        conn = engine.connect()
    except Exception:
        engine.dispose()
        raise
    try:
        # another node may hold our claim for a moment: routing what we stored before we stopped
        # (hold_if_gone); a second live process with our id holds it for good
        deadline = time.monotonic() + wait
        while not (got := _try_lock(conn, node_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
    except Exception:
        conn.close()
        engine.dispose()
        raise
    if not got:
        conn.close()
        engine.dispose()
        raise NodeClaimRefused(
            f"another running minipacs node already uses node_id {node_id!r} on this PostgreSQL index (its "
            f"claim stayed taken for {wait:g} s): two "
            "live nodes with one id would take each other's jobs and mix their records. Give each node its "
            "own node_id (setting node_id, environment MINIPACS_NODE_ID; the default is the host name), "
            "or stop the other node first"
        )
    return NodeClaim(node_id, _conn=conn, _engine=engine)


def hold_if_gone(engine: Engine, node_id: str) -> NodeClaim | None:
    """``node_id``'s claim, held by this process on a connection of ``engine`` (PostgreSQL), if no live
    process holds it: its node is gone (stopped, crashed, decommissioned), so another node may do the
    work it left (core/routing.py: route what it stored). None if the node is alive. Release it soon:
    the node, starting again, waits at most CLAIM_WAIT seconds for it."""
    conn = engine.connect()
    try:
        if _try_lock(conn, node_id):
            return NodeClaim(node_id, _conn=conn, _owns_engine=False)
    except Exception:
        conn.close()
        raise
    conn.close()
    return None


def claim_node(url: str, node_id: str) -> NodeClaim:
    """Claim ``node_id`` on the index at ``url`` for this process (blocking), or NodeClaimRefused."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return NodeClaim(node_id)  # a private in-memory index: nobody else can open it
        return _claim_sqlite(Path(database).resolve(), node_id)
    return _claim_postgresql(url, node_id)


__all__ = ["CLAIM_WAIT", "SQLITE_LOCK_SUFFIX", "NodeClaim", "NodeClaimRefused", "claim_node", "hold_if_gone"]
