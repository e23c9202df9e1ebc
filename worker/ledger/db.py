"""Engine set-up, migrations and transactions for the ledger (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import NullPool

from worker.ledger.schema import audit_head

__all__ = ["Ledger", "create_ledger_engine", "insert_unless_present", "migrate"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def insert_unless_present(conn: Connection, table: Table, conflict: list[str]) -> Any:
    """``INSERT`` that skips rows whose ``conflict`` key exists (both dialects take
    ``ON CONFLICT DO NOTHING``): one statement where a savepoint costs three."""
    stmt = pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)
    return stmt.on_conflict_do_nothing(index_elements=conflict)


def create_ledger_engine(url: str) -> Engine:
    """An engine whose transactions are serializable enough for the ledger.

    SQLite: every transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time,
    no lock-upgrade deadlocks), WAL so readers never block, and a busy timeout so
    concurrent processes wait instead of failing. PostgreSQL: row locks do the work.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": 10, "application_name": "jitgate"},
    )


def migrate(engine: Engine) -> None:
    """Bring the ledger schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Two processes starting at once must not both create the tables.
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
        try:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()


class Ledger:
    """The ledger's engine plus the few helpers every flow needs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    @classmethod
    def from_url(cls, url: str) -> Ledger:
        return cls(create_ledger_engine(url))

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction; commits on success, rolls back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    def now(self, conn: Connection) -> datetime:
        """Time from the database server, so every worker agrees on expiry."""
        return self._server_time(conn, "now()")

    def current_time(self, conn: Connection) -> datetime:
        """The database's wall clock now (``now()`` is frozen at transaction start)."""
        return self._server_time(conn, "clock_timestamp()")

    def _server_time(self, conn: Connection, function: str) -> datetime:
        if not self.is_postgres:
            return datetime.now(UTC)
        value = conn.execute(text(f"SELECT {function}")).scalar_one()  # our constant
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def lock_audit_head(self, conn: Connection) -> tuple[int, str]:
        stmt = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        if self.is_postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one()
        return int(row.seq), str(row.hash)

    def dispose(self) -> None:
        self.engine.dispose()
