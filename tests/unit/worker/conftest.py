"""Fixtures for the worker unit tests: a clean ``JITGATE_*`` environment and ledgers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.ledger.db import Ledger, migrate
from worker.settings import _sqlalchemy_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``JITGATE_*`` variable from the developer's shell leaks into a test (the
    ``JITGATE_TEST_*`` server pointers stay), and relative paths land in tmp_path."""
    for name in list(os.environ):
        if name.startswith("JITGATE_") and not name.startswith("JITGATE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture
def pg_ledger_url(fresh_database: str) -> str:
    """A fresh PostgreSQL database as a SQLAlchemy (psycopg 3) URL."""
    url = _sqlalchemy_url(fresh_database)
    assert url.startswith("postgresql+psycopg://")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite ledger file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_ledger_url"))


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A migrated, empty ledger."""
    instance = Ledger.from_url(ledger_url)
    migrate(instance.engine)
    yield instance
    instance.dispose()
