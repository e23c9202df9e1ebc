"""Alembic migrations produce exactly ``worker.ledger.schema.metadata``, idempotently,
on SQLite and on PostgreSQL (the ``ledger_url`` fixture runs each test on both)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select, text

from worker.ledger import db as ledger_db
from worker.ledger.audit import append
from worker.ledger.db import Ledger, migrate
from worker.ledger.schema import audit_events, audit_head, metadata

ALEMBIC = "alembic_version"


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(ledger_db._MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _layout(engine: Engine) -> dict[str, Any]:
    """Tables → (column names, index names) of the live database, without alembic's table.

    Indexes that only back a UNIQUE constraint (PostgreSQL reports those too) are left out:
    the metadata declares them as ``unique=True`` columns, not as ``Index`` objects."""
    inspector = inspect(engine)
    layout: dict[str, Any] = {}
    for table in inspector.get_table_names():
        if table == ALEMBIC:
            continue
        columns = {c["name"] for c in inspector.get_columns(table)}
        indexes = {
            i["name"]
            for i in inspector.get_indexes(table)
            if "duplicates_constraint" not in i and i["name"]
        }
        layout[table] = (columns, indexes)
    return layout


def _expected() -> dict[str, Any]:
    return {
        name: ({c.name for c in table.columns}, {i.name for i in table.indexes})
        for name, table in metadata.tables.items()
    }


def _unique_columns(engine: Engine, table: str) -> set[tuple[str, ...]]:
    inspector = inspect(engine)
    found = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
    found |= {tuple(i["column_names"]) for i in inspector.get_indexes(table) if i["unique"]}
    return found


@pytest.fixture
def engine(ledger_url: str) -> Any:
    instance = Ledger.from_url(ledger_url)
    yield instance.engine
    instance.dispose()


def test_migrated_tables_columns_and_indexes_match_metadata(engine: Engine) -> None:
    assert _layout(engine) == {}
    migrate(engine)
    layout = _layout(engine)
    expected = _expected()
    assert set(layout) == set(expected)
    for table, (columns, indexes) in expected.items():
        assert layout[table][0] == columns, table
        assert layout[table][1] == indexes, table


def test_unique_keys_exist(engine: Engine) -> None:
    migrate(engine)
    assert ("grant_key",) in _unique_columns(engine, "grants")
    assert ("event_key",) in _unique_columns(engine, "audit_events")
    assert ("marker",) in _unique_columns(engine, "comments")
    assert ("source", "delivery_key") in _unique_columns(engine, "inbox")


def test_autogenerate_sees_no_difference(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_migrating_twice_is_a_no_op(engine: Engine) -> None:
    migrate(engine)
    ledger = Ledger(engine)
    with ledger.tx() as conn:
        stored = append(ledger, conn, event="grant.issued", key="k1",
                        ts=datetime(2026, 1, 1, tzinfo=UTC), fields={"principal": "ctr_bob"})
    assert stored is not None
    before = _layout(engine)

    migrate(engine)
    migrate(engine)

    assert _layout(engine) == before
    with engine.connect() as conn:
        versions = conn.execute(text(f"SELECT version_num FROM {ALEMBIC}")).scalars().all()
        head_rows = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).all()
        events = conn.execute(select(func.count()).select_from(audit_events)).scalar_one()
    assert versions == [_head_revision()]
    assert [(r.seq, r.hash) for r in head_rows] == [(1, stored["hash"])]
    assert events == 1
