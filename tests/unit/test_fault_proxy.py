"""FaultProxy: a TCP forwarder whose wire the tests can cut, checked against the real
PostgreSQL of the ``pg_url`` fixture (TCP from JITGATE_TEST_PG_URL, or the embedded
server's unix socket) and against tiny echo servers for both upstream kinds."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.proxy import FaultProxy, proxied_pg_url, upstream_of


def test_upstream_and_url_rewriting() -> None:
    assert upstream_of("postgresql://postgres@127.0.0.1:5432/postgres") == ("127.0.0.1", 5432)
    assert upstream_of("postgresql://u@db.internal/app") == ("db.internal", 5432)
    assert upstream_of("postgresql://postgres:@/postgres?host=/tmp/pg") == "/tmp/pg/.s.PGSQL.5432"
    assert upstream_of("postgresql://u@/d?host=/run/pg/&port=5433") == "/run/pg/.s.PGSQL.5433"
    with pytest.raises(ValueError, match="one host"):
        upstream_of("postgresql://u@a,b/d")

    class _Fake:
        port = 40123

    fake: FaultProxy = _Fake()  # type: ignore[assignment]
    assert proxied_pg_url("postgresql://postgres:@/postgres?host=/tmp/pg", fake) == (
        "postgresql://postgres@127.0.0.1:40123/postgres"
    )
    rewritten = proxied_pg_url(
        "postgresql://bob:p%40ss@db:6543/my%20db?sslmode=disable&connect_timeout=3", fake
    )
    assert rewritten.startswith("postgresql://bob:p%40ss@127.0.0.1:40123/my%20db?")
    info = psycopg.conninfo.conninfo_to_dict(rewritten)
    assert info == {"user": "bob", "password": "p@ss", "host": "127.0.0.1", "port": "40123",
                    "dbname": "my db", "sslmode": "disable", "connect_timeout": "3"}


def test_postgres_through_the_proxy_goes_down_and_comes_back(pg_url: str) -> None:
    with FaultProxy(upstream_of(pg_url)) as proxy:
        url = proxied_pg_url(pg_url, proxy)
        conn = psycopg.connect(url, connect_timeout=2, autocommit=True)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert proxy.connections == 1

            proxy.down()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(url, connect_timeout=2)
            assert time.monotonic() - started < 2

            proxy.up()
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as again:
                assert again.execute("SELECT 1").fetchone() == (1,)
        finally:
            conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)  # stopped: nothing listens any more


@contextlib.contextmanager
def _echo_server(kind: str) -> Iterator[tuple[str, int] | str]:
    folder = Path(tempfile.mkdtemp(prefix="jg-echo-", dir="/tmp"))  # short: AF_UNIX limit
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(folder / "echo.sock"))
    else:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield str(folder / "echo.sock") if kind == "unix" else server.getsockname()
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def _refused(port: int) -> bool:
    """True if a new connection is reset or closed without an answer (the reset may
    already be seen by connect())."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return _dead(sock)
    except OSError:
        return True


def _dead(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection instead of echoing."""
    try:
        sock.sendall(b"x")
        return sock.recv(16) == b""
    except OSError:
        return True


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_echo_through_the_proxy(kind: str) -> None:
    with _echo_server(kind) as upstream, FaultProxy(upstream) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
        proxy.down()
        assert _dead(client)
        client.close()
        started = time.monotonic()
        assert _refused(proxy.port)
        assert time.monotonic() - started < 1
        proxy.up()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as back:
            back.sendall(b"again")
            assert back.recv(16) == b"again"
            assert proxy.connections == 1
    assert proxy.connections == 0
