"""The five measured sections. Each returns a JSON-able dict with its figures and the
raw limit measured in the same run."""

# ruff: noqa: PLC0415, RUF002 - the harness reads its own env and imports lazily

from __future__ import annotations

import io
import random
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import profiling
from bench.common import (
    PY,
    ROOT,
    Config,
    CpuMeter,
    Procs,
    create_database,
    create_roles,
    free_port,
    median,
    migrate_ledger,
    pct,
    purge,
    queue_depth,
    rnd,
    wait_for,
    wait_http,
    wait_log,
)
from bench.stack import Stack
from worker.settings import DEFAULT_QUEUE

# The harness's processes get no JITGATE_QUEUE (bench.stack drops the caller's JITGATE_*).
JITGATE_QUEUE = DEFAULT_QUEUE


# =========================================================================== 1. ingest


def ingest(cfg: Config, stack: Stack, procs: Procs, meter: CpuMeter) -> dict[str, Any]:
    body = stack.sample_body(cfg.work / "ingest-body.json")
    dur, warm, conns = cfg.seconds(8, 1.0), cfg.seconds(2, 0.3), 16
    common = ["--conns", str(conns), "--body", str(body), "--duration", str(dur),
              "--warmup", str(warm)]

    # raw limit: the same uvicorn, a body-reading endpoint
    port = free_port()
    log = cfg.work / "raw-uvicorn.log"
    env = {**stack.env(), "PYTHONPATH": str(ROOT)}
    raw = procs.start([PY, "-m", "uvicorn", "bench.raw_app:app", "--host", "127.0.0.1",
                       "--port", str(port), "--no-access-log", "--log-level", "warning"],
                      env=env, log=log)
    meter.roles[raw.pid] = "raw uvicorn"
    try:
        wait_http(port, raw, log)
        raw_sat = stack.load("--port", str(port), "--path", "/webhooks/jira", "--mode", "closed",
                             *common)
        raw_half = stack.load("--port", str(port), "--mode", "open", "--rate",
                              str(max(1.0, raw_sat["accepted_per_s"] / 2)), *common)
    finally:
        procs.stop(raw)
    port = free_port()
    floor = procs.start([PY, "-m", "uvicorn", "bench.raw_app:fastapi_app", "--host",
                         "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
                         "warning"], env=env, log=cfg.work / "fastapi-uvicorn.log")
    try:
        wait_http(port, floor, cfg.work / "fastapi-uvicorn.log")
        floor_sat = stack.load("--port", str(port), "--path", "/webhooks/jira", "--mode",
                               "closed", *common)
    finally:
        procs.stop(floor)

    purge(cfg.redis_url, JITGATE_QUEUE)
    port = stack.start_web()
    meter.begin()
    sat = stack.load("--port", str(port), "--mode", "closed", *common)
    cpu = meter.end()
    queued = queue_depth(cfg.redis_url, JITGATE_QUEUE)[0]
    purge(cfg.redis_url, JITGATE_QUEUE)
    half_rate = max(1.0, sat["accepted_per_s"] / 2)
    half = stack.load("--port", str(port), "--mode", "open", "--rate", str(half_rate), *common)
    purge(cfg.redis_url, JITGATE_QUEUE)

    profile: dict[str, Any] | None = None
    if cfg.profile and stack.web is not None:
        out = cfg.work / "profile-web.txt"
        spy = profiling.record(stack.web.pid, out, 6)
        if spy is not None:
            time.sleep(0.5)
            stack.load("--port", str(port), "--mode", "closed", "--conns", str(conns),
                       "--body", str(body), "--duration", "5", "--warmup", "0.2")
            spy.wait(timeout=60)
            profile = profiling.summarise(out)
        purge(cfg.redis_url, JITGATE_QUEUE)

    return {
        "connections": conns, "window_s": dur,
        "body_bytes": len(body.read_text()),
        "raw": {"saturation": raw_sat, "half": raw_half},
        "fastapi_floor": {"saturation": floor_sat,
                          "ratio_to_raw": rnd(floor_sat["accepted_per_s"]
                                              / max(1e-9, raw_sat["accepted_per_s"]), 3)},
        "jitgate": {"saturation": sat, "half": half, "queued_after_saturation": queued,
                    "cpu_s_during_saturation": cpu},
        "accepted_per_s": sat["accepted_per_s"],
        "raw_accepted_per_s": raw_sat["accepted_per_s"],
        "ratio": rnd(sat["accepted_per_s"] / max(1e-9, raw_sat["accepted_per_s"]), 3),
        "p50_ms_saturation": sat["p50_ms"], "p99_ms_saturation": sat["p99_ms"],
        "half_rate": half_rate,
        "p50_ms_half": half["p50_ms"], "p99_ms_half": half["p99_ms"],
        "raw_p99_ms_half": raw_half["p99_ms"],
        "profile_web": profile,
    }


# =========================================================================== 2. approvals


def _signal_all(procs: Procs, group: list[subprocess.Popen[bytes]], sig: int) -> None:
    for proc in group:
        procs.signal(proc, sig)


def _batch_state(stack: Stack, keys: list[str]) -> tuple[int, int]:
    with stack.ledger_conn() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM grants WHERE ticket_key = ANY(%(k)s) "
            "        AND state = 'active'),"
            "       (SELECT count(*) FROM comments WHERE ticket_key = ANY(%(k)s) "
            "        AND posted_at IS NOT NULL)", {"k": keys}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def drain_approvals(cfg: Config, stack: Stack, procs: Procs, meter: CpuMeter, *, n: int,
                    workers: int, broker_url: str, profile_to: Path | None = None
                    ) -> dict[str, Any]:
    """Pre-fill the queue with ``n`` accepted approvals (workers started and frozen with
    SIGSTOP, so start-up is not timed), release the workers and time until every
    approval has its active grant and its posted ticket comment."""
    principals = stack.new_principals(n)
    create_roles(cfg.pg_url, principals)
    items = stack.approvals(principals)
    keys = [k for k, _, _ in items]
    path = stack.write_items(items, cfg.work / f"drain-{uuid.uuid4().hex[:6]}.jsonl")
    purge(broker_url, JITGATE_QUEUE)
    group = stack.start_workers(workers, broker_url=broker_url)
    _signal_all(procs, group, signal.SIGSTOP)
    try:
        posted = stack.load("--port", str(stack.web_port), "--mode", "list", "--conns", "8",
                            "--items", str(path))
        if posted["statuses"].get("202", 0) != n:
            raise RuntimeError(f"prefill: not every approval was accepted: {posted['statuses']}")
        spy = None
        if profile_to is not None:
            spy = profiling.record(group[0].pid, profile_to, 300, subprocesses=True)
            time.sleep(0.5)
        meter.begin()
        t0 = time.time()
        _signal_all(procs, group, signal.SIGCONT)
        timeout = 60 + n / 2
        done = wait_for(lambda: _batch_state(stack, keys) == (n, n) or None, timeout=timeout,
                        what=f"{n} grants active and commented", interval=0.1)
        assert done
        cpu = meter.end()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
    finally:
        _signal_all(procs, group, signal.SIGCONT)
        stack.stop_workers()
    with stack.ledger_conn() as conn:
        granted = sorted(r[0].timestamp() for r in conn.execute(
            "SELECT granted_at FROM grants WHERE ticket_key = ANY(%s)", (keys,)))
        last_comment = conn.execute(
            "SELECT max(posted_at) FROM comments WHERE ticket_key = ANY(%s)", (keys,)
        ).fetchone()
    assert last_comment is not None
    t_all = max(granted[-1], last_comment[0].timestamp())
    lo, hi = int(0.1 * n), max(int(0.1 * n) + 1, int(0.9 * n) - 1)
    window = (hi - lo) / max(1e-6, granted[hi] - granted[lo]) if n >= 10 else None
    return {
        "approvals": n, "worker_instances": workers, "concurrency_each": 2,
        "broker": broker_url.split(":", 1)[0],
        "http_prefill_per_s": posted["accepted_per_s"],
        "per_s_complete": rnd(n / (t_all - t0), 1),
        "per_s_grants_only": rnd(n / (granted[-1] - t0), 1),
        "per_s_grants_window_10_90": rnd(window, 1),
        "drain_s": rnd(t_all - t0, 3),
        "cpu_s": cpu,
    }


def noop_drain(cfg: Config, stack: Stack, procs: Procs, meter: CpuMeter, *, n: int,
               broker_url: str) -> dict[str, Any]:
    """Raw limit: drain of ``n`` pre-published no-op tasks by the same worker settings."""
    from bench.noop_app import QUEUE, make_app, publish

    purge(broker_url, QUEUE)
    env = {**stack.env(), "PYTHONPATH": str(ROOT), "BENCH_NOOP_BROKER_URL": broker_url,
           "BENCH_NOOP_CONCURRENCY": "2"}
    log = cfg.work / f"noop-worker-{uuid.uuid4().hex[:6]}.log"
    worker = procs.start([PY, "-m", "bench.noop_app"], env=env, log=log)
    meter.roles[worker.pid] = "no-op worker"
    try:
        wait_log(worker, log, b"bench-noop-worker ready")
        procs.signal(worker, signal.SIGSTOP)
        app = make_app(broker_url)
        publish_rate = publish(app, n)
        samples: list[tuple[float, int]] = []
        poller = _DepthPoller(broker_url, QUEUE)
        t0 = time.time()
        procs.signal(worker, signal.SIGCONT)
        deadline = time.monotonic() + 30 + n / 100
        while time.monotonic() < deadline:
            ready, unacked = poller.depth()
            samples.append((time.time(), ready))
            if ready == 0 and unacked == 0:
                break
            time.sleep(0.01)
        else:
            raise TimeoutError("no-op drain did not finish")
        t1 = samples[-1][0]
        poller.close()
    finally:
        procs.stop(worker)
    window = _window_rate(samples, n)
    return {"tasks": n, "publish_per_s": rnd(publish_rate, 1), "per_s": rnd(n / (t1 - t0), 1),
            "per_s_window_10_90": rnd(window, 1), "broker": broker_url.split(":", 1)[0]}


def _window_rate(samples: list[tuple[float, int]], n: int) -> float | None:
    hi_left, lo_left = 0.9 * n, 0.1 * n
    t_a = next((t for t, left in samples if left <= hi_left), None)
    t_b = next((t for t, left in samples if left <= lo_left), None)
    if t_a is None or t_b is None or t_b <= t_a:
        return None
    return 0.8 * n / (t_b - t_a)


class _DepthPoller:
    """Queue depth with one persistent connection (Redis LLEN + unacked, AMQP passive
    declare)."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self.conn: Any = None
        if not url.startswith(("redis", "unix")):
            from kombu import Connection

            self.conn = Connection(url)
            self.channel = self.conn.default_channel

    def depth(self) -> tuple[int, int]:
        if self.conn is None:
            return queue_depth(self.url, self.queue)
        _, count, _consumers = self.channel.queue_declare(queue=self.queue, passive=True)
        return int(count), 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.release()


def approval_latency(cfg: Config, stack: Stack, *, rate: float, seconds: float
                     ) -> dict[str, Any]:
    """Paced approvals at ``rate``/s into a running stack; latency = the grant's
    ``granted_at`` (PostgreSQL clock) − the send time recorded by the load generator (same
    host clock)."""
    warm_principals = stack.new_principals(4)
    create_roles(cfg.pg_url, warm_principals)
    warm = stack.approvals(warm_principals)
    wpath = stack.write_items(warm, cfg.work / "latency-warm.jsonl")
    stack.load("--port", str(stack.web_port), "--mode", "list", "--conns", "2", "--items",
               str(wpath))
    wkeys = [k for k, _, _ in warm]
    wait_for(lambda: _batch_state(stack, wkeys)[0] == len(wkeys), timeout=60,
             what="warm-up grants", interval=0.1)
    m = max(5, int(rate * seconds))
    principals = stack.new_principals(m)
    create_roles(cfg.pg_url, principals)
    items = stack.approvals(principals)
    keys = [k for k, _, _ in items]
    path = stack.write_items(items, cfg.work / "latency.jsonl")
    sent = stack.load("--port", str(stack.web_port), "--mode", "list", "--conns", "4",
                      "--rate", str(rate), "--items", str(path))
    wait_for(lambda: _batch_state(stack, keys)[0] == m, timeout=60 + m / 2,
             what="paced grants", interval=0.1)
    with stack.ledger_conn() as conn:
        granted = dict(conn.execute(
            "SELECT ticket_key, granted_at FROM grants WHERE ticket_key = ANY(%s)", (keys,)
        ).fetchall())
    lat = [(granted[k].timestamp() - float(sent["sent_wall"][i])) * 1000
           for i, k in enumerate(keys)]
    return {"rate": rate, "approvals": m, "p50_ms": rnd(pct(lat, 50)),
            "p90_ms": rnd(pct(lat, 90)), "p99_ms": rnd(pct(lat, 99)),
            "max_ms": rnd(pct(lat, 100)), "http_p50_ms": sent["p50_ms"],
            "http_p99_ms": sent["p99_ms"]}


def approvals(cfg: Config, stack: Stack, procs: Procs, meter: CpuMeter) -> dict[str, Any]:
    stack.start_web()
    n = cfg.n(2000, 20)
    thr = drain_approvals(cfg, stack, procs, meter, n=n, workers=1, broker_url=cfg.redis_url)
    stack.start_workers(1)
    try:
        lat = approval_latency(cfg, stack, rate=50, seconds=cfg.seconds(6, 0.4))
    finally:
        stack.stop_workers()
    raw = noop_drain(cfg, stack, procs, meter, n=cfg.n(20000, 200), broker_url=cfg.redis_url)
    profile = None
    if cfg.profile and profiling.py_spy():
        out = cfg.work / "profile-worker.txt"
        drain_approvals(cfg, stack, procs, meter, n=cfg.n(600, 20), workers=1,
                        broker_url=cfg.redis_url, profile_to=out)
        profile = profiling.summarise(out)
    return {
        "throughput": thr, "latency_50_per_s": lat, "raw_noop": raw,
        "per_s": thr["per_s_complete"], "raw_per_s": raw["per_s"],
        "ratio": rnd(thr["per_s_complete"] / max(1e-9, raw["per_s"]), 3),
        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
        "profile_worker": profile,
    }


# =========================================================================== 3. revocation


def _ts(value: datetime) -> str:
    return value.isoformat()


def _copy_rows(conn: psycopg.Connection[Any], table: str, columns: list[str],
               rows: Any, chunk: int = 50_000) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        buf = io.StringIO()
        for count, row in enumerate(rows, 1):
            buf.write("\t".join("\\N" if v is None else str(v) for v in row))
            buf.write("\n")
            if count % chunk == 0:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


GRANT_COLUMNS = ["id", "grant_key", "ticket_uid", "ticket_key", "policy", "policy_digest",
                 "target", "role", "principal", "approval_ref", "state", "starts_at",
                 "expires_at", "created_at", "granted_at", "updated_at", "attempts"]


def _grant_rows(start: int, stop: int, *, role: str, now: datetime, future: datetime,
                principal_of: Any, ticket_of: Any) -> Any:
    started = _ts(now - timedelta(hours=1))
    stamp, until = _ts(now), _ts(future)
    for i in range(start, stop):
        uid, key = ticket_of(i)
        yield (f"{i:08x}-0000-4000-8000-{i:012x}", f"{i:064x}", uid, key, "warehouse-read",
               "bench", "warehouse", role, principal_of(i), "bench-approval", "active",
               started, until, started, started, stamp, 1)


def revocation(cfg: Config, procs: Procs, meter: CpuMeter) -> dict[str, Any]:
    total, expiring = cfg.n(100_000, 100, "revoke"), cfg.n(10_000, 10, "revoke")
    name = f"{cfg.prefix}_revoke"
    ledger = create_database(cfg.pg_url, name)
    migrate_ledger(ledger)
    role = f"analytics_ro_{cfg.prefix}_rv"
    with psycopg.connect(cfg.pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    stack = Stack(cfg, procs, meter, ledger, cfg.redis_url, role, cfg.work / "revocation")
    setup: dict[str, Any] = {}
    try:
        t = time.monotonic()
        principals = [f"ctr_{cfg.prefix}_x{i}" for i in range(expiring)]
        create_roles(cfg.pg_url, principals, member_of=role)
        setup["target_roles_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        ids = []
        for i, principal in enumerate(principals):
            key = f"OPS-{500000 + i}"
            ids.append(stack.jira.create_issue(
                key, reporter=stack.requester,
                fields={"customfield_10070": {"id": "10300", "value": "warehouse-read"},
                        "customfield_10071": principal}))
        setup["jira_issues_s"] = round(time.monotonic() - t, 2)

        def principal_of(i: int) -> str:
            return principals[i] if i < expiring else f"ctr_{cfg.prefix}_h{i}"

        def ticket_of(i: int) -> tuple[str, str]:
            if i < expiring:
                return f"jira:{ids[i]}", f"OPS-{500000 + i}"
            return f"jira:9{i:08d}", f"OPS-9{i:08d}"

        now = datetime.now(UTC)
        t = time.monotonic()
        with psycopg.connect(ledger, autocommit=True) as conn:
            _copy_rows(conn, "grants", GRANT_COLUMNS,
                       _grant_rows(0, total, role=role, now=now, future=now + timedelta(days=1),
                                   principal_of=principal_of, ticket_of=ticket_of))
            _copy_rows(conn, "tickets",
                       ["uid", "source", "external_id", "key", "last_version", "status",
                        "state", "updated_at", "last_seen_at"],
                       ((uid, "jira", uid.split(":")[1], key, 1, "Approved", "approved",
                         _ts(now), _ts(now)) for uid, key in map(ticket_of, range(total))))
            conn.execute("VACUUM ANALYZE grants")
            conn.execute("VACUUM ANALYZE tickets")
        setup["ledger_copy_s"] = round(time.monotonic() - t, 2)

        stack.start_workers(1)
        stack.start_beat(cfg.sweep_interval)
        time.sleep(max(2.0, cfg.sweep_interval))
        lead = 2.0
        with psycopg.connect(ledger, autocommit=True) as conn:
            row = conn.execute(
                "UPDATE grants SET expires_at = now() + make_interval(secs => %s) "
                "WHERE principal LIKE %s RETURNING expires_at",
                (lead, f"ctr_{cfg.prefix}_x%")).fetchone()
        assert row is not None
        expires_at = row[0].timestamp()
        meter.begin()
        timeout = cfg.seconds(150, 60)
        members_zero: float | None = None
        revoked = 0
        with psycopg.connect(cfg.pg_url, autocommit=True) as tconn, \
                psycopg.connect(ledger, autocommit=True) as lconn:
            while time.time() < expires_at + timeout:
                members = tconn.execute(
                    "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
                    " WHERE r.rolname = %s", (role,)).fetchone()
                got = lconn.execute("SELECT count(*) FROM grants WHERE state = 'revoked'"
                                    ).fetchone()
                assert members is not None and got is not None
                revoked = int(got[0])
                if int(members[0]) == 0 and members_zero is None:
                    members_zero = time.time()
                if members_zero is not None and revoked >= expiring:
                    break
                time.sleep(0.25)
            cpu = meter.end()
            lateness = [float(r[0]) for r in lconn.execute(
                "SELECT extract(epoch FROM revoked_at - expires_at) FROM grants "
                "WHERE revoked_at IS NOT NULL")]
            states = dict(lconn.execute("SELECT state, count(*) FROM grants GROUP BY state"
                                        ).fetchall())
            still = tconn.execute(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
                " WHERE r.rolname = %s", (role,)).fetchone()
        stack.stop_workers()
        raw = _grant_revoke_pairs(cfg, cfg.n(2000, 50))
        profile = None
        all_done = members_zero is not None
        if cfg.profile and profiling.py_spy():
            profile = _profile_sweep(cfg, stack, ledger, role, principals)
    finally:
        stack.close()
    to_all = (members_zero - expires_at) if members_zero is not None else None
    return {
        "active_grants": total, "expiring": expiring, "sweep_interval_s": cfg.sweep_interval,
        "worker_instances": 1, "concurrency_each": 2, "setup": setup,
        "all_revoked_on_target": all_done,
        "seconds_to_all_revoked": rnd(to_all, 2),
        "revoked_in_ledger": revoked, "states_after": states,
        "members_left_on_target": int(still[0]) if still else None,
        "lateness_p50_s": rnd(pct(lateness, 50)), "lateness_p99_s": rnd(pct(lateness, 99)),
        "lateness_max_s": rnd(pct(lateness, 100)),
        "revocations_per_s": rnd(expiring / to_all, 1) if to_all else None,
        "raw_grant_revoke": raw,
        "raw_seconds_for_all": rnd(expiring / raw["revoke_per_s"], 2),
        "cpu_s": cpu, "profile_sweep": profile,
    }


def _grant_revoke_pairs(cfg: Config, pairs: int) -> dict[str, Any]:
    """Raw limit: autocommitted GRANT + REVOKE pairs on one connection."""
    group = f"grp_{cfg.prefix}_raw"
    users = [f"ctr_{cfg.prefix}_raw{i}" for i in range(pairs)]
    with psycopg.connect(cfg.pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(group)))
    create_roles(cfg.pg_url, users)
    with psycopg.connect(cfg.pg_url, autocommit=True) as conn:
        g = sql.Identifier(group)
        t = time.perf_counter()
        for user in users:
            u = sql.Identifier(user)
            conn.execute(sql.SQL("GRANT {} TO {}").format(g, u))
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(g, u))
        elapsed = time.perf_counter() - t
    return {"pairs": pairs, "pairs_per_s": rnd(pairs / elapsed, 1),
            "revoke_per_s": rnd(2 * pairs / elapsed, 1),
            "note": "statements/s: each pair is 2 autocommitted statements"}


def _profile_sweep(cfg: Config, stack: Stack, ledger: str, role: str,
                   principals: list[str]) -> dict[str, Any]:
    """Re-arm one sweep batch (500 expired grants with real memberships) and profile one
    ``sweeps.run`` in a separate process under py-spy."""
    batch = principals[:500]
    with psycopg.connect(cfg.pg_url, autocommit=True) as conn, conn.transaction():
        for p in batch:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role),
                                                         sql.Identifier(p)))
    with psycopg.connect(ledger, autocommit=True) as conn:
        conn.execute(
            "UPDATE grants SET state = 'active', expires_at = now() - interval '1 second', "
            "revoked_at = NULL, revoke_reason = NULL, revoke_requested_at = NULL, "
            "next_attempt_at = NULL WHERE principal = ANY(%s)", (batch,))
        conn.execute("DELETE FROM audit_events WHERE event = 'grant.revoked' AND "
                     "grant_id IN (SELECT id FROM grants WHERE principal = ANY(%s))", (batch,))
        conn.execute("DELETE FROM comments WHERE ticket_key IN "
                     "(SELECT ticket_key FROM grants WHERE principal = ANY(%s))", (batch,))
    out = cfg.work / "profile-sweep.txt"
    env = stack.env()
    spy = profiling.py_spy()
    assert spy is not None
    subprocess.run([spy, "record", "--format", "raw", "--full-filenames", "--rate", "200",
                    "--output", str(out),
                    "--", PY, "-m", "worker", "sweep"], env=env, cwd=ROOT, timeout=300,
                   check=False, capture_output=True)
    return {"grants_in_sweep": len(batch), **profiling.summarise(out)}


# =========================================================================== 4. sweep cost


def sweep_cost(cfg: Config) -> dict[str, Any]:
    from bench.stack import APPROVER_ID, POLICY
    from worker import flows, sweeps
    from worker.runtime import Runtime
    from worker.settings import Settings

    sizes = [cfg.n(10_000, 100, "sweep"), cfg.n(100_000, 1000, "sweep"),
             cfg.n(1_000_000, 10_000, "sweep")]
    expired_n = cfg.n(1000, 10, "sweep")
    reps = 2 if cfg.smoke else 5
    name = f"{cfg.prefix}_sweep"
    url = create_database(cfg.pg_url, name)
    migrate_ledger(url)
    # The real expiry path: revoke_batch against a PostgreSQL target (the principals do
    # not exist there, so each revoke is the batched state query and nothing else).
    policy = cfg.work / "sweep-policy.yaml"
    policy.write_text(POLICY.format(approver=APPROVER_ID, role="analytics_ro"))
    rt = Runtime(Settings(database_url=url, policy_path=policy),
                 env={"JG_BENCH_TARGET_DSN": cfg.pg_url})
    now = datetime.now(UTC)
    future = now + timedelta(days=2)
    results: list[dict[str, Any]] = []
    loaded = 0
    armed: list[str] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for size in sizes:
                t = time.monotonic()
                _copy_rows(conn, "grants", GRANT_COLUMNS, _grant_rows(
                    loaded, size, role="analytics_ro", now=now, future=future,
                    principal_of=lambda i: f"ctr_p{i:09d}",
                    ticket_of=lambda i: (f"jira:{i:09d}", f"OPS-{i:09d}")))
                conn.execute("VACUUM ANALYZE grants")
                load_s = time.monotonic() - t
                loaded = size
                times, first_call, plan_ms = [], [], []
                for _ in range(reps):
                    if armed:
                        conn.execute("UPDATE grants SET state='active', expires_at=%s, "
                                     "revoke_reason=NULL, revoke_requested_at=NULL, "
                                     "next_attempt_at=NULL WHERE id = ANY(%s)", (future, armed))
                    armed = [f"{i:08x}-0000-4000-8000-{i:012x}"
                             for i in random.sample(range(size), expired_n)]
                    conn.execute("UPDATE grants SET expires_at = now() - interval '1 minute' "
                                 "WHERE id = ANY(%s)", (armed,))
                    conn.execute("VACUUM ANALYZE grants")
                    plan = conn.execute(
                        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM grants WHERE "
                        "state = 'active' AND expires_at <= now() ORDER BY expires_at "
                        "LIMIT 100 FOR UPDATE SKIP LOCKED").fetchone()
                    assert plan is not None
                    plan_ms.append(float(plan[0][0]["Execution Time"]))
                    with rt.ledger.tx() as lc:  # warm connection
                        rt.ledger.now(lc)
                    t = time.perf_counter()
                    calls, marked = 0, 0
                    while True:
                        t_call = time.perf_counter()
                        got = flows.revoke_batch(rt, expired=sweeps.REVOKE_CHUNK)
                        if calls == 0:
                            first_call.append((time.perf_counter() - t_call) * 1000)
                        calls += 1
                        marked += got.revoked
                        if not got.selected:
                            break
                    times.append((time.perf_counter() - t) * 1000)
                    if marked != expired_n:
                        raise RuntimeError(f"revoked {marked}, expected {expired_n}")
                results.append({
                    "active_rows": size, "expired": expired_n, "load_s": round(load_s, 2),
                    "select_mark_all_ms": rnd(median(times)),
                    "first_call_ms": rnd(median(first_call)),
                    "calls": calls, "select_only_ms": rnd(median(plan_ms), 3),
                    "reps": reps,
                })
    finally:
        rt.close()
        from bench.common import drop_database

        drop_database(cfg.pg_url, name)
    small, big = results[0]["select_mark_all_ms"], results[-1]["select_mark_all_ms"]
    return {"sizes": results, "ratio_big_small": rnd(big / max(1e-9, small), 3),
            "small_ms": small, "big_ms": big}


# =========================================================================== 5. scale-out


def scale_out(cfg: Config, stack: Stack, procs: Procs, meter: CpuMeter) -> dict[str, Any]:
    from bench.common import broker_reachable

    counts = [1, 2] if cfg.smoke else [1, 2, 4]
    n = cfg.n(1000, 20)
    brokers: list[tuple[str, str | None]] = [("redis", cfg.redis_url), ("amqp", cfg.amqp_url)]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for label, url in brokers:
        if url is None:
            notes.append(f"{label}: skipped (JITGATE_BENCH_AMQP_URL disabled)")
            continue
        problem = broker_reachable(url)
        if problem is not None:
            notes.append(f"{label}: skipped, broker unreachable ({problem})")
            continue
        stack.start_web(broker_url=url)
        try:
            raw = noop_drain(cfg, stack, procs, meter, n=cfg.n(10_000, 100), broker_url=url)
            for k in counts:
                result = drain_approvals(cfg, stack, procs, meter, n=n, workers=k,
                                         broker_url=url)
                result["raw_noop_per_s"] = raw["per_s"]
                rows.append(result)
        finally:
            purge(url, JITGATE_QUEUE)
            stack.stop_web()
    stack.start_web()
    return {"approvals_per_run": n, "rows": rows, "notes": notes,
            "unit": "worker instance = one `python -m worker worker -c 2` (prefork, 3 processes)"}
