"""Engine construction and schema migration for the index.

SQLite: WAL journal, ``synchronous`` FULL when fsync is on (NORMAL otherwise),
foreign keys on, and transactions begun by us (pysqlite's own BEGIN handling
would break SAVEPOINT, which group commit relies on). The writer begins with
``BEGIN IMMEDIATE`` so it never has to upgrade a read lock.
PostgreSQL: psycopg 3; migrations serialise on an advisory lock so several
nodes can start at once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
log = logging.getLogger(__name__)

#: An open connection to the index, as the core passes it around: the core never looks
#: inside, it hands it to the index's repository functions (``Archive.read`` / ``write``).
IndexConnection: TypeAlias = Connection
#: Where the migration scripts live inside the installed package.
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
#: Execution option a connection sets to begin SQLite transactions with IMMEDIATE.
WRITER_OPTION: Final = "minipacs_writer"
#: Key in the writer connection's ``info``: the node (``node_id``) whose writes it carries; the
#: changes journal records it with each row (index/journal_repo.py).
NODE_INFO: Final = "minipacs_node"
#: Any constant shared by all nodes; the key of the migration advisory lock.
_MIGRATION_LOCK_KEY: Final = 0x6D696E69  # "mini"


#: How long a SQLite statement waits for another connection's write lock.
SQLITE_BUSY_TIMEOUT_MS: Final = 30000


def _sqlite_pragmas(fsync: bool) -> list[str]:
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    ]


def create_index_engine(url: str, fsync: bool = True) -> Engine:
    """An engine for the index at ``url``, configured for our access pattern."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8, max_overflow=8)
        pragmas = _sqlite_pragmas(fsync)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(WRITER_OPTION, False)
            # Straight on the DBAPI connection: a statement without parameters or
            # results needs none of SQLAlchemy's execution machinery (~30 us per
            # transaction, i.e. per C-STORE on a sequential association).
            statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
            driver = conn.connection.driver_connection
            if driver is None:  # pragma: no cover - a checked-out connection always has one
                conn.exec_driver_sql(statement)
            elif not (immediate and driver.in_transaction):  # else begun by IndexWriter.begin_if_free
                driver.execute(statement)

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code, pointing inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
        url = connection.engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser syntax
    return config


def head_revision() -> str:
    """The newest migration's revision: every script is ``NNNN_what.py`` with revision ``"NNNN"``, each
    revising the one before (tests/index/test_migrations_head.py holds Alembic's own graph to it)."""
    return max(path.name[:4] for path in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def at_head(connection: Connection) -> bool:
    """Whether the index's schema is already at :func:`head_revision` (Alembic's version table)."""
    try:
        if not inspect(connection).has_table("alembic_version"):
            return False
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        connection.rollback()  # Alembic begins its own transaction on this connection
    return versions == [head_revision()]


def upgrade_schema(engine: Engine) -> None:
    """Run ``alembic upgrade head`` on the index.

    An index already at head is left without importing Alembic at all: Alembic, Mako and Pygments
    cost a running server ~11 MiB of memory it would never use again (bench/RESULTS.md).
    """
    with engine.connect() as connection:
        if at_head(connection):
            return
        from alembic import command

        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                connection.commit()


#: SQLSTATEs of a transaction PostgreSQL aborted so that another could go on (serialization_failure,
#: deadlock_detected): nothing of it was written, and the same transaction may pass when tried again.
TRANSIENT_SQLSTATES: Final = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a serialization failure or a deadlock (the DBAPI error under SQLAlchemy's)."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES


class IndexWriter:
    """The one connection every index write goes through (SQLite: ``BEGIN IMMEDIATE``),
    kept open across transactions; dropped after a failed transaction, opened again on the next.
    Used by one thread at a time (the archive's writer thread)."""

    def __init__(self, engine: Engine, *, fsync: bool = True, node: str = "") -> None:
        self._engine = engine
        self._node = node
        self._conn: Connection | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        self._durable_setting = "FULL" if fsync else "NORMAL"
        self._synchronous: str | None = None  # the SQLite connection's setting; None: not known
        self._pg_async = False  # PostgreSQL: synchronous_commit is off for this connection's session
        #: SQLite: whether a commit that takes the WAL past 1000 pages copies them into the database
        #: file itself (SQLite's default). False: the archive's checkpointer does it every second
        #: (IndexDatabase.checkpoint_wal), so no C-STORE waits for ~4 MB of writes and two fsyncs.
        self.autocheckpoint = True
        self._autocheckpoint_set: bool | None = None  # what the open connection has; None: not known

    def begin_if_free(self) -> bool:
        """SQLite: begin the next transaction now (``BEGIN IMMEDIATE``), unless another connection (another
        process on the same index: ``minipacs import``, a command) holds the database's write lock: then
        False at once, without waiting for it. The next :meth:`transaction` (``durable=False``) continues
        the one begun here; :meth:`end_begun` rolls it back when none came. True on PostgreSQL (nothing
        begun), and when unsure (the transaction finds and reports what is wrong).

        One statement where a look (begin, roll back) and then the transaction's own BEGIN were three:
        each BEGIN IMMEDIATE reads the WAL index and takes the write lock (~13 us, per C-STORE)."""
        if not self._sqlite:
            return True
        conn = self._connection()
        driver = conn.connection.driver_connection
        if driver is None:  # pragma: no cover - a checked-out connection always has one
            return True
        self._set_pragmas(conn, durable=False)  # outside the transaction, as transaction() does
        driver.execute("PRAGMA busy_timeout=0")
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # SQLITE_BUSY: another connection is writing
            return False
        finally:
            driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return True

    def end_begun(self) -> None:
        """Roll back a transaction :meth:`begin_if_free` began that no :meth:`transaction` continued (it
        holds the write lock: other processes would wait for it)."""
        if not self._sqlite or self._conn is None or self._conn.closed:
            return
        driver = self._conn.connection.driver_connection
        if driver is not None and driver.in_transaction:
            driver.execute("ROLLBACK")

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._engine.connect().execution_options(**{WRITER_OPTION: True})
            self._conn.info[NODE_INFO] = self._node
            self._synchronous = None
            self._pg_async = False
            self._autocheckpoint_set = None
        return self._conn

    def _set_pragmas(self, conn: Connection, *, durable: bool) -> None:
        """SQLite: the connection's ``synchronous`` for this kind of transaction and its autocheckpoint
        (each a statement only when it changes; outside a transaction: there they may not change)."""
        wanted = self._durable_setting if durable else "NORMAL"
        driver = conn.connection.driver_connection
        if driver is None:  # pragma: no cover - a checked-out connection always has one
            return
        if self._autocheckpoint_set is self.autocheckpoint and wanted == self._synchronous:
            return
        if driver.in_transaction:  # begun by begin_if_free for another kind: nothing done in it yet
            driver.execute("ROLLBACK")
        if self._autocheckpoint_set is not self.autocheckpoint:
            # the connection goes back to the pool with it: only this writer commits index writes
            driver.execute(f"PRAGMA wal_autocheckpoint={1000 if self.autocheckpoint else 0}")
            self._autocheckpoint_set = self.autocheckpoint
        if wanted != self._synchronous:
            driver.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[IndexConnection]:
        """One transaction: committed when the block ends, rolled back (and the connection
        dropped) when it raises.

        ``durable=False``: the commit does not wait for the disk (SQLite ``synchronous=NORMAL``,
        PostgreSQL ``synchronous_commit=off``); the caller keeps what it commits durable another
        way (core/intake.py) and any later durable commit flushes it too. An index opened with
        ``fsync=False`` never waits anyway.
        """
        conn = self._connection()
        if self._sqlite:
            self._set_pragmas(conn, durable=durable)
        try:
            with conn.begin():
                # PostgreSQL: the setting of the more frequent kind (logged ingests) is the session's,
                # so only the other kind pays a statement (a round trip) to change it
                if not self._sqlite and durable == self._pg_async:
                    if durable:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO ON")
                    else:
                        conn.exec_driver_sql("SET synchronous_commit TO OFF")  # the session, from its commit
                        self._pg_async = True
                yield conn
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                if self._pg_async and not self._conn.invalidated:
                    # back to the pool as it came out of it: no other user commits without waiting
                    self._conn.exec_driver_sql("RESET synchronous_commit")
                    self._conn.commit()
            except Exception:  # noqa: BLE001 - broken: the pool discards it
                pass
            self._pg_async = False
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is broken anyway
                pass
            self._conn = None


class IndexDatabase:
    """The index as the core receives it from bootstrap.py: pooled reads, one writer, disposal."""

    #: How long ``dispose`` waits for reads still running (seconds): a read whose caller was cancelled
    #: goes on in its thread, and its connection, returned after the pool was disposed, would be left open.
    DISPOSE_WAIT_SECONDS = 30.0

    def __init__(self, engine: Engine, *, fsync: bool = True) -> None:
        self.engine = engine
        self.fsync = fsync
        self._reading = 0
        self._idle = threading.Condition()

    @classmethod
    def open(cls, url: str, *, fsync: bool = True) -> IndexDatabase:
        """The index at ``url``, migrated to head (blocking: call it off the event loop)."""
        engine = create_index_engine(url, fsync=fsync)
        try:
            upgrade_schema(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine, fsync=fsync)

    def read(self, call: Callable[[IndexConnection], T]) -> T:
        """Run a read-only ``call`` on a pooled connection (blocking)."""
        with self._idle:
            self._reading += 1
        try:
            return self._read(call)
        finally:
            with self._idle:
                self._reading -= 1
                if not self._reading:
                    self._idle.notify_all()

    def _read(self, call: Callable[[IndexConnection], T]) -> T:
        with self.engine.connect() as conn:
            result = call(conn)
            # A read ends with COMMIT, the same as a ROLLBACK for a read-only transaction, so that the
            # pool's reset finds nothing to roll back: psycopg forgets its prepared statements on every
            # ROLLBACK, and the query engine's statements (index/query_sql.py) are then parsed and
            # planned afresh each time instead of prepared after psycopg's prepare_threshold (5) uses.
            conn.commit()
            return result

    def writer(self, node: str = "") -> IndexWriter:
        """The writer of the node named ``node`` (its ``node_id``: the journal records it)."""
        return IndexWriter(self.engine, fsync=self.fsync, node=node)

    def checkpoint_wal(self) -> None:
        """SQLite: copy what the WAL holds into the database file, as far as no reader needs the old
        pages (``PRAGMA wal_checkpoint(PASSIVE)``: it waits for no one), so the next write can start
        the WAL over from its beginning. For a writer with ``autocheckpoint`` off. Elsewhere nothing."""
        if self.engine.dialect.name != "sqlite":
            return
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            if driver is not None:
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            raw.close()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def snapshot(self, dest: Path) -> None:
        """SQLite: a consistent copy of the whole index written to ``dest`` by SQLite's online backup,
        in one read transaction (``Connection.backup`` with every page at once), so the writer goes on
        meanwhile (WAL) and the copy is the index as of one commit. Blocking. ValueError elsewhere."""
        if not self.is_sqlite:
            raise ValueError("only a SQLite index can be copied this way")
        raw = self.engine.raw_connection()
        try:
            source = raw.driver_connection
            target = sqlite3.connect(dest)
            try:
                source.backup(target)  # type: ignore[union-attr]
                # a file of its own, not in WAL mode: no -wal or -shm beside it (the server sets WAL when it opens it)
                target.execute("PRAGMA journal_mode=DELETE").fetchall()
            finally:
                target.close()
        finally:
            raw.close()

    def dispose(self) -> None:
        """Close the pool's connections, once the reads still running have given theirs back
        (blocking, at most ``DISPOSE_WAIT_SECONDS``)."""
        with self._idle:
            if not self._idle.wait_for(lambda: not self._reading, timeout=self.DISPOSE_WAIT_SECONDS):
                log.warning("index: %d read(s) still running at close; their connections are left", self._reading)
        self.engine.dispose()


__all__ = [
    "IndexConnection",
    "IndexDatabase",
    "IndexWriter",
    "MIGRATIONS_DIR",
    "NODE_INFO",
    "TRANSIENT_SQLSTATES",
    "WRITER_OPTION",
    "alembic_config",
    "at_head",
    "create_index_engine",
    "head_revision",
    "is_transient",
    "upgrade_schema",
]
