"""The database engine, its SQLite tuning and the migrations.

SQLite (WAL) is the default, in ``<data_dir>/postwall.db``. Several worker processes and
the web UI open the same file, so every connection waits (``busy_timeout``) instead of
failing when another one writes, and write transactions start with ``BEGIN IMMEDIATE``:
they take the write lock up front, so two writers never deadlock upgrading a read lock
(which SQLite reports at once as ``database is locked``, whatever the timeout).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 15_000
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Serialises migrations between appliances sharing one PostgreSQL database.
_PG_MIGRATION_LOCK_KEY = 0x706F7374  # "post"
_WRITE_OPTION = "postwall_write"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).absolute()}"


def create_storage_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for `url`; SQLite connections get WAL, busy_timeout, synchronous=NORMAL,
    foreign keys and explicit BEGIN (IMMEDIATE for writes)."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(
            engine, busy_timeout_ms, is_file=make_url(url).database not in (None, "", ":memory:")
        )
    return engine


def _tune_sqlite(engine: Engine, busy_timeout_ms: int, *, is_file: bool) -> None:
    timeout = int(busy_timeout_ms)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout}")
            mode = _enable_wal(cursor, timeout / 1000)
            if is_file and str(mode).lower() != "wal":
                log.warning("SQLite refused WAL mode (journal_mode=%s)", mode)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _enable_wal(cursor: Any, patience: float) -> str:
    """Switch to WAL once per database file. Changing the journal mode needs an exclusive
    lock and SQLite answers "database is locked" at once, without waiting out the busy
    timeout, when another process (a second worker, a migration) is busy with a new file;
    so retry for as long as the busy timeout would have waited."""
    mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0])
    if mode.lower() == "wal":
        return mode
    deadline = time.monotonic() + patience
    while True:
        try:
            return str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Database:
    """Connections for the stores: `read()` for queries, `write()` for one transaction
    that commits on success and rolls back on error."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_engine.begin() as conn:
            yield conn


# alembic is imported only where migrations run: a serving worker never needs its ~12 MB.
if TYPE_CHECKING:
    from alembic.config import Config


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_version() -> str:
    """The newest schema revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` in one write transaction, so that concurrent
    processes opening a fresh database wait for each other instead of racing."""
    from alembic import command

    config = _alembic_config()
    with Database(engine).write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_version(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
