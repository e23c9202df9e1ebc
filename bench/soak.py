"""Soak run (issue 9, item 5): N tickets through approve → close on the real stack with
random faults, then count what was lost, what happened twice and how late revocations were.

Stack (bench/stack.py, assembled as tests/integration/conftest.py does): a redis-server
this script starts itself (so FLUSHALL hurts nobody else) as broker, the machine's
PostgreSQL as ledger (a fresh database) and as grant target (reached through
tests/support/proxy.py's FaultProxy, so it can be cut off), the Jira REST double, and
``python -m worker web|worker|beat`` processes.

Faults: duplicate deliveries (same webhook identifier twice), out-of-order deliveries
(deliveries shuffled, and an approval replayed with a new identifier after the close),
target outages (proxy down for a few seconds), worker SIGKILLs (process group, children
included) with a replacement started, and one Redis FLUSHALL with work queued.

Usage: ``make soak`` or ``JITGATE_SOAK_TICKETS=1000 .venv/bin/python -m bench.soak``.
Environment: ``JITGATE_SOAK_TICKETS`` (default 10000), ``JITGATE_SOAK_SEED``,
``JITGATE_SOAK_BATCH`` (tickets per approve/close wave, default 200),
``JITGATE_BENCH_PG_URL`` (default postgresql://postgres@127.0.0.1:5432/postgres).
Writes bench/results/soak.json; exits 1 when anything was lost or duplicated.
"""

# ruff: noqa: TID251 - the harness reads its own environment

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.common import (
    ROOT,
    Config,
    CpuMeter,
    Procs,
    create_database,
    create_roles,
    drop_database,
    drop_roles,
    free_port,
    migrate_ledger,
    pct,
    redis_client,
    rnd,
    wait_for,
    write_json,
)
from bench.stack import SECRET, Stack
from tests.support.proxy import FaultProxy, proxied_pg_url, upstream_of
from worker.doubles.jira import DONE, jira_delivery
from worker.ledger.audit import verify_chain
from worker.ledger.db import Ledger
from worker.settings import _sqlalchemy_url

# Short timers so recovery happens within a soak: re-drive stuck work after 10 s, sweep
# every second, retry target calls quickly.
SOAK_ENV = {
    "JITGATE_STUCK_AFTER": "10",
    "JITGATE_RETRY_BASE_DELAY": "0.5",
    "JITGATE_REVOKE_RETRY_MAX_BACKOFF": "5",
    "JITGATE_POLL_INTERVAL": "3600",
    "JITGATE_DRIFT_INTERVAL": "3600",
}


class SoakStack(Stack):
    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**SOAK_ENV, **extra})


class Soak:
    def __init__(self, tickets: int, seed: int, batch: int) -> None:
        self.n = tickets
        self.seed = seed
        self.rng = random.Random(seed)
        self.batch = batch
        self.work = Path(tempfile.mkdtemp(prefix="jg-soak-"))
        self.cfg = Config.from_env(smoke=False, out=ROOT / "bench" / "results", work=self.work)
        self.procs = Procs()
        self.faults: Counter[str] = Counter()
        self.close_at: dict[str, float] = {}
        self.approved: list[str] = []
        self.grant_timeouts: list[str] = []
        self.replays: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    # ----------------------------------------------------------------- set-up
    def start(self) -> None:
        port = free_port()
        self.redis = self.procs.start(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.work)],
            env=dict(os.environ), log=self.work / "redis.log")
        self.broker = f"redis://127.0.0.1:{port}/0"
        wait_for(self._redis_up, timeout=30, what="redis-server")
        self.proxy = FaultProxy(upstream_of(self.cfg.pg_url))
        self.ledger_db = f"{self.cfg.prefix}_ledger"
        self.ledger_url = create_database(self.cfg.pg_url, self.ledger_db)
        migrate_ledger(self.ledger_url)
        self.role = f"{self.cfg.prefix}_analytics_ro"
        with psycopg.connect(self.cfg.pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(self.role)))
        target_cfg = dataclasses.replace(
            self.cfg, pg_url=proxied_pg_url(self.cfg.pg_url, self.proxy), redis_url=self.broker)
        self.stack = SoakStack(cfg=target_cfg, procs=self.procs, meter=CpuMeter(),
                               ledger_url=self.ledger_url, broker_url=self.broker,
                               role=self.role, folder=self.work)
        self.principals = self.stack.new_principals(self.n)
        for i in range(0, self.n, 1000):
            create_roles(self.cfg.pg_url, self.principals[i:i + 1000])
        port = self.stack.start_web()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.stack.start_workers(2, concurrency=2)
        self.stack.start_beat(1.0)

    def _redis_up(self) -> bool:
        try:
            return bool(redis_client(self.broker).ping())
        except Exception:
            return False

    def stop(self) -> None:
        self.stack.close()
        self.proxy.stop()
        self.procs.stop_all()
        drop_database(self.cfg.pg_url, self.ledger_db)
        drop_roles(self.cfg.pg_url, self.cfg.prefix)

    # ----------------------------------------------------------------- deliveries
    def post(self, body: bytes, headers: dict[str, str], *, dup_p: float = 0.1) -> None:
        for attempt in range(1 + (self.rng.random() < dup_p)):
            if attempt:
                self.faults["duplicate_delivery"] += 1
            for _ in range(50):  # the sender retries what we refuse (Jira retries 429/5xx)
                status = self.http.post("/webhooks/jira", content=body, headers=headers)
                if status.status_code in (200, 202):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"delivery refused: {status.status_code} {status.text}")

    # ----------------------------------------------------------------- faults
    def kill_worker(self) -> None:
        # [python, -m, worker, worker|beat, ...]: workers only, never the beat
        workers = [p for p in self.stack.workers
                   if p.poll() is None and list(p.args)[3] == "worker"]
        if not workers:
            return
        victim = self.rng.choice(workers)
        self.procs.signal(victim, signal.SIGKILL)
        victim.wait(timeout=10)
        self.stack.workers.remove(victim)
        self.procs.stop(victim)
        self.faults["worker_sigkill"] += 1
        self.stack.start_workers(1, concurrency=2)

    def outage(self, seconds: float) -> None:
        self.proxy.down()
        self.faults["target_outage"] += 1
        self.faults["target_outage_ms"] += int(seconds * 1000)
        threading.Timer(seconds, self.proxy.up).start()

    def flush_redis(self) -> None:
        redis_client(self.broker).flushall()
        self.faults["redis_flushall"] += 1

    def maybe_fault(self, batch_no: int, batches: int, phase: str) -> None:
        """Random faults, plus each kind at least once at fixed points of the run."""
        kill_at, outage_at, flush_at = 0, max(0, batches // 3), max(0, batches // 2)
        if phase == "approve" and (batch_no == kill_at or self.rng.random() < 0.3):
            threading.Timer(self.rng.uniform(0.2, 2.0), self.kill_worker).start()
        if phase == "close" and (batch_no == outage_at or self.rng.random() < 0.3):
            self.outage(self.rng.uniform(2.0, 6.0))
        if phase == "close" and batch_no == flush_at:
            threading.Timer(0.5, self.flush_redis).start()

    # ----------------------------------------------------------------- ledger reads
    def grant_states(self, keys: list[str]) -> dict[str, list[str]]:
        with psycopg.connect(self.ledger_url, autocommit=True) as conn:
            rows = conn.execute("SELECT ticket_key, state FROM grants WHERE ticket_key = ANY(%s)",
                                (keys,)).fetchall()
        out: dict[str, list[str]] = {}
        for key, state in rows:
            out.setdefault(key, []).append(state)
        return out

    def all_active(self, keys: list[str]) -> bool:
        states = self.grant_states(keys)
        return len(states) == len(keys) and all("active" in s for s in states.values())

    # ----------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        batches = (self.n + self.batch - 1) // self.batch
        for b in range(batches):
            principals = self.principals[b * self.batch:(b + 1) * self.batch]
            items = self.stack.approvals(principals)
            keys = [key for key, _, _ in items]
            self.approved.extend(keys)
            self.maybe_fault(b, batches, "approve")
            order = list(items)
            self.rng.shuffle(order)  # deliveries of different tickets out of order
            for _, body, headers in order:
                self.post(body, headers)
            try:
                wait_for(lambda keys=keys: self.all_active(keys), timeout=300,
                         what=f"grants of batch {b}", interval=0.5)
            except TimeoutError:
                states = self.grant_states(keys)
                self.grant_timeouts.extend(k for k in keys if "active" not in states.get(k, []))
            self.maybe_fault(b, batches, "close")
            closes = []
            for key, body, headers in items:
                if key in self.grant_timeouts:
                    continue
                payload = self.stack.jira.transition(key, DONE, author=self.stack.approver)
                self.close_at[key] = time.time()
                cbody, cheaders = jira_delivery(payload, secret=SECRET,
                                                identifier=f"{self.cfg.prefix}-{key}-close")
                closes.append((cbody, cheaders))
                if self.rng.random() < 0.05:
                    # the approval's webhook again, new identifier, after the close
                    replay = {**headers, "X-Atlassian-Webhook-Identifier":
                              f"{self.cfg.prefix}-{key}-replay"}
                    self.replays.append((body, replay))
            self.rng.shuffle(closes)
            for cbody, cheaders in closes:
                self.post(cbody, cheaders)
            for body, replay in self.replays:
                self.post(body, replay, dup_p=0)
                self.faults["late_replayed_approval"] += 1
            self.replays.clear()
            print(f"batch {b + 1}/{batches} done at {time.monotonic() - t0:.0f}s "
                  f"faults={dict(self.faults)}", flush=True)
        drive_s = time.monotonic() - t0
        closed = list(self.close_at)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: all(s and all(x == "revoked" for x in s)
                                 for s in self.grant_states(closed).values()),
                     timeout=600, what="every revocation", interval=1.0)
        return self.report(drive_s, time.monotonic() - t0)

    # ----------------------------------------------------------------- the report
    def report(self, drive_s: float, total_s: float) -> dict[str, Any]:
        prefix = f"{self.cfg.prefix}-"
        with psycopg.connect(self.ledger_url, autocommit=True) as conn:
            grants = conn.execute(
                "SELECT id, ticket_key, state, granted_at, revoked_at FROM grants").fetchall()
            events = conn.execute(
                "SELECT grant_id, event, count(*) FROM audit_events "
                "WHERE grant_id IS NOT NULL GROUP BY grant_id, event").fetchall()
            stuck_inbox = conn.execute(
                "SELECT count(*) FROM inbox WHERE processed_at IS NULL").fetchone()
        with psycopg.connect(self.cfg.pg_url, autocommit=True) as conn:
            members = [r[0] for r in conn.execute(
                "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s", (self.role,))]
        ledger = Ledger.from_url(_sqlalchemy_url(self.ledger_url))
        with ledger.tx() as conn:
            broken = next(iter(verify_chain(conn)), None)
        ledger.dispose()

        per_ticket: dict[str, list[Any]] = {}
        for row in grants:
            per_ticket.setdefault(row[1], []).append(row)
        counts: dict[str, Counter[str]] = {}
        for grant_id, event, n in events:
            counts.setdefault(grant_id, Counter())[event] = n

        never_granted = [k for k in self.approved
                         if not any(r[3] is not None for r in per_ticket.get(k, []))]
        not_revoked = [k for k in self.close_at
                       if not per_ticket.get(k) or any(r[2] != "revoked" for r in per_ticket[k])]
        duplicate_grants = [k for k, rows in per_ticket.items() if len(rows) > 1]
        issued_twice = [g for g, c in counts.items() if c["grant.issued"] > 1]
        revoked_twice = [g for g, c in counts.items() if c["grant.revoked"] > 1]
        unaudited = [r[0] for r in grants if (r[3] is not None) != (counts.get(
            r[0], Counter())["grant.issued"] == 1) or (r[2] == "revoked") != (counts.get(
                r[0], Counter())["grant.revoked"] == 1)]
        lateness = sorted(
            (r[4].timestamp() - self.close_at[r[1]])
            for r in grants if r[4] is not None and r[1] in self.close_at)
        lost = len(set(never_granted) | set(not_revoked)) + len(members)
        dups = len(duplicate_grants) + len(issued_twice) + len(revoked_twice)
        return {
            "tickets": self.n,
            "seed": self.seed,
            "batch": self.batch,
            "prefix": prefix,
            "drive_seconds": round(drive_s, 1),
            "total_seconds": round(total_s, 1),
            "faults": dict(self.faults),
            "events_lost": lost,
            "lost_detail": {
                "approved_never_granted": len(never_granted),
                "closed_not_revoked": len(not_revoked),
                "memberships_left_on_target": len(members),
                "unprocessed_inbox_rows": int(stuck_inbox[0]) if stuck_inbox else 0,
                "examples": (never_granted + not_revoked + members)[:10],
            },
            "duplicate_effects": dups,
            "duplicate_detail": {
                "tickets_with_two_grants": len(duplicate_grants),
                "grants_issued_twice": len(issued_twice),
                "grants_revoked_twice": len(revoked_twice),
                "grants_with_audit_mismatch": len(unaudited),
            },
            "audit_chain": "intact" if broken is None else f"broken at {broken.seq}: "
                                                             f"{broken.problem}",
            "revocation_lateness_s": {
                "count": len(lateness),
                "p50": rnd(pct(lateness, 50), 3),
                "p90": rnd(pct(lateness, 90), 3),
                "p99": rnd(pct(lateness, 99), 3),
                "max": rnd(lateness[-1] if lateness else None, 3),
            },
            "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        }


def main() -> int:
    tickets = int(os.environ.get("JITGATE_SOAK_TICKETS", "10000"))
    seed = int(os.environ.get("JITGATE_SOAK_SEED", str(random.SystemRandom().randrange(2**31))))
    batch = int(os.environ.get("JITGATE_SOAK_BATCH", "200"))
    soak = Soak(tickets, seed, batch)
    try:
        soak.start()
        result = soak.run()
    finally:
        try:
            soak.stop()
        except Exception as exc:
            print(f"cleanup: {exc.__class__.__name__}: {exc}", file=sys.stderr)
    out = ROOT / "bench" / "results" / "soak.json"
    write_json(out, result)
    print(json.dumps(result, indent=2, default=str))
    ok = (result["events_lost"] == 0 and result["duplicate_effects"] == 0
          and result["audit_chain"] == "intact"
          and not result["duplicate_detail"]["grants_with_audit_mismatch"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

