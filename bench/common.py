"""Shared plumbing of the benchmark: configuration, processes, databases, brokers, stats.

Everything the harness starts is recorded in a ``Procs`` registry and stopped by
process group in a ``finally`` (and at interpreter exit), so a failed section leaves
no worker, web server or beat behind. Databases and roles carry a random prefix and
are dropped at the end of the run.
"""

# ruff: noqa: PLC0415, TID251 - the harness reads its own env and imports lazily

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    scale: float
    smoke: bool
    redis_url: str
    pg_url: str
    amqp_url: str | None
    out: Path
    work: Path
    prefix: str
    sweep_interval: float
    profile: bool
    keep: bool = False
    scales: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, *, smoke: bool, out: Path, work: Path) -> Config:
        env = os.environ
        scale = float(env.get("JITGATE_BENCH_SCALE", "0.01" if smoke else "1.0"))
        amqp = env.get("JITGATE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
        return cls(
            scale=scale,
            smoke=smoke,
            redis_url=env.get("JITGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
            pg_url=env.get("JITGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
            amqp_url=amqp if amqp and amqp.lower() not in ("none", "off", "0") else None,
            out=out,
            work=work,
            prefix="jgb" + uuid.uuid4().hex[:8],
            sweep_interval=float(env.get("JITGATE_BENCH_SWEEP_INTERVAL", "1")),
            profile=env.get("JITGATE_BENCH_PROFILE", "0" if smoke else "1") not in ("0", ""),
            keep=env.get("JITGATE_BENCH_KEEP", "") not in ("0", ""),
            scales={name: float(env[f"JITGATE_BENCH_{name.upper()}_SCALE"])
                    for name in ("revoke", "sweep")
                    if env.get(f"JITGATE_BENCH_{name.upper()}_SCALE")},
        )

    def n(self, full: int, minimum: int = 1, section: str | None = None) -> int:
        """``full`` scaled (by the section's own scale if set), at least ``minimum``."""
        scale = self.scales.get(section, self.scale) if section else self.scale
        return max(minimum, round(full * scale))

    def seconds(self, full: float, smoke: float) -> float:
        return smoke if self.smoke else full


# --------------------------------------------------------------------------- processes


class Procs:
    """Every child process of the run, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)

    def start(self, args: Sequence[str], *, env: dict[str, str],
              log: Path) -> subprocess.Popen[bytes]:
        handle = log.open("ab")
        proc = subprocess.Popen(
            list(args), env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )
        handle.close()
        self.procs.append(proc)
        return proc

    def signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            self.signal(proc, signal.SIGCONT)
            self.signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        # prefork children left behind by a killed parent share its group
        self.signal(proc, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str,
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import httpx

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=timeout, what=f"HTTP server on {port}", interval=0.1)


def wait_log(proc: subprocess.Popen[bytes], log: Path, needle: bytes, timeout: float = 90) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {log.read_text(errors='replace')[-3000:]}")
        return needle in log.read_bytes()

    wait_for(ready, timeout=timeout, what=f"{needle!r} in {log.name}", interval=0.1)


# --------------------------------------------------------------------------- PostgreSQL


def with_database(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = info.get("user", "postgres")
    host = str(info.get("host") or "127.0.0.1")
    if host.startswith("/"):
        return f"postgresql://{user}@/{name}?host={host}"
    return f"postgresql://{user}@{host}:{info.get('port', 5432)}/{name}"


def create_database(pg_url: str, name: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(pg_url, name)


def drop_database(pg_url: str, name: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def drop_roles(pg_url: str, prefix: str) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"%{prefix}%",))]
        # In chunks: one transaction dropping 10,000+ roles runs out of lock slots.
        for start in range(0, len(names), 500):
            with conn.transaction():
                for name in names[start:start + 500]:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    return len(names)


def create_roles(pg_url: str, names: Sequence[str], *, member_of: str | None = None) -> None:
    """Login roles in one transaction (optionally members of ``member_of``)."""
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            if member_of:
                conn.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(member_of), sql.Identifier(name)))


def migrate_ledger(url: str) -> None:
    from worker.ledger.db import create_ledger_engine, migrate
    from worker.settings import _sqlalchemy_url

    engine = create_ledger_engine(_sqlalchemy_url(url))
    try:
        migrate(engine)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- brokers


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url.replace("redis+socket://", "unix://"))


def broker_reachable(url: str) -> str | None:
    """None when reachable, else why not."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"[:200]
    return None


def queue_depth(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, unacked) of a queue. Unacked is exact on Redis only."""
    if url.startswith(("redis", "unix")):
        client = redis_client(url)
        return int(client.llen(queue)), int(client.hlen("unacked"))
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.default_channel
        try:
            _, count, _ = channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return 0, 0
        return int(count), 0


def purge(url: str, queue: str) -> None:
    if url.startswith(("redis", "unix")):
        redis_client(url).flushdb()
        return
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.default_channel
        with contextlib.suppress(Exception):
            channel.queue_purge(queue)


# --------------------------------------------------------------------------- stats


def pct(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return float(ordered[k])


def median(values: Sequence[float]) -> float | None:
    return pct(values, 50)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- CPU accounting


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class CpuMeter:
    """CPU seconds by component over a window: our children by role, servers by name."""

    roles: dict[int, str] = field(default_factory=dict)  # pid (group leader) -> role
    start: dict[int, tuple[str, float]] = field(default_factory=dict)
    t0: float = 0.0

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        groups: dict[int, str] = {}
        for leader, role in self.roles.items():
            groups[leader] = role
        out: dict[int, tuple[str, float]] = {}
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            comm = _comm(pid)
            try:
                pgid = os.getpgid(pid)
            except OSError:
                continue
            if pgid in groups:
                label = groups[pgid]
            elif pid == me:
                label = "bench process (Jira double, pollers)"
            elif comm.startswith("postgres"):
                label = "postgresql"
            elif comm.startswith("redis"):
                label = "redis-server"
            elif comm.startswith(("beam", "erl")):
                label = "rabbitmq"
            else:
                continue
            out[pid] = (label, _cpu_of(pid))
        return out

    def begin(self) -> None:
        self.start = self._snapshot()
        self.t0 = time.monotonic()

    def end(self) -> dict[str, float]:
        now = self._snapshot()
        wall = max(1e-6, time.monotonic() - self.t0)
        totals: dict[str, float] = {}
        for pid, (label, cpu) in now.items():
            before = self.start.get(pid, (label, 0.0))[1]
            totals[label] = totals.get(label, 0.0) + max(0.0, cpu - before)
        result = {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
        result["_wall_s"] = round(wall, 2)
        return result


def cpu_probe() -> dict[str, float]:
    """A fixed CPU probe (as perf-baseline.md's cpu_probe) to normalise reruns."""
    import hashlib
    import hmac

    t = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    loop_ms = (time.perf_counter() - t) * 1000
    body = b"x" * 4096
    t = time.perf_counter()
    for _ in range(50_000):
        hmac.new(b"k", body, hashlib.sha256).digest()
    hmac_ms = (time.perf_counter() - t) * 1000
    return {"python_loop_2M_ms": round(loop_ms, 1), "hmac_50k_4KB_ms": round(hmac_ms, 1)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def timed(store: dict[str, Any], key: str) -> Iterator[None]:
    t = time.monotonic()
    try:
        yield
    finally:
        store[key] = round(time.monotonic() - t, 2)
