"""``python -m bench [--smoke] [--out DIR] [--only SECTION ...]``: run the benchmark.

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (name ``latest``, or ``smoke`` with
``--smoke``). Sizes scale with ``JITGATE_BENCH_SCALE``; servers come from
``JITGATE_BENCH_REDIS_URL``, ``JITGATE_BENCH_PG_URL``, ``JITGATE_BENCH_AMQP_URL``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import report, sections
from bench.common import (
    Config,
    CpuMeter,
    Procs,
    cpu_probe,
    create_database,
    drop_database,
    drop_roles,
    migrate_ledger,
    purge,
    write_json,
)
from bench.stack import Stack

SECTIONS = ("ingest", "approvals", "revocation", "sweep_cost", "scale_out")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default=None)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=None)
    args = parser.parse_args()
    # Sections that run jitgate code in this process (sweep cost) would print one audit
    # line per revocation; the worker processes under test log as in production.
    from worker import log as logconf  # noqa: PLC0415

    logconf.configure(level="WARNING", fmt="json")
    work = Path(tempfile.mkdtemp(prefix="jitgate-bench-"))
    cfg = Config.from_env(smoke=args.smoke, out=args.out, work=work)
    name = args.name or ("smoke" if args.smoke else "latest")
    wanted = args.only or list(SECTIONS)
    procs = Procs()
    meter = CpuMeter()
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "smoke" if cfg.smoke else "full", "scale": cfg.scale,
            "python": platform.python_version(), "host": platform.node(),
            "cpus": _cpus(), "redis": cfg.redis_url, "postgres": cfg.pg_url,
            "amqp": cfg.amqp_url, "sweep_interval_s": cfg.sweep_interval,
            "cpu_probe_before": cpu_probe(), "work_dir": str(work),
            "loadavg_before": os.getloadavg(), "section_scales": cfg.scales,
        },
    }
    errors: dict[str, str] = {}
    ledger_name = f"{cfg.prefix}_ledger"
    stack: Stack | None = None
    print(f"bench: scale {cfg.scale}, work dir {work}", file=sys.stderr)
    try:
        purge(cfg.redis_url, sections.JITGATE_QUEUE)
        ledger = create_database(cfg.pg_url, ledger_name)
        migrate_ledger(ledger)
        role = f"analytics_ro_{cfg.prefix}"
        with psycopg.connect(cfg.pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        stack = Stack(cfg, procs, meter, ledger, cfg.redis_url, role, work / "stack")
        runners = {
            "ingest": lambda: sections.ingest(cfg, stack, procs, meter),
            "approvals": lambda: sections.approvals(cfg, stack, procs, meter),
            "revocation": lambda: sections.revocation(cfg, procs, meter),
            "sweep_cost": lambda: sections.sweep_cost(cfg),
            "scale_out": lambda: sections.scale_out(cfg, stack, procs, meter),
        }
        for section in wanted:
            t = time.monotonic()
            print(f"bench: {section} ...", file=sys.stderr, flush=True)
            try:
                results[section] = runners[section]()
            except Exception as exc:
                errors[section] = f"{exc.__class__.__name__}: {exc}"
                results[section] = {"error": errors[section]}
                traceback.print_exc()
            finally:
                stack.stop_workers()
                purge(cfg.redis_url, sections.JITGATE_QUEUE)
            results[section]["section_s"] = round(time.monotonic() - t, 1)
            print(f"bench: {section} done in {time.monotonic() - t:.1f}s", file=sys.stderr,
                  flush=True)
    finally:
        if stack is not None:
            stack.close()
        procs.stop_all()
        try:
            purge(cfg.redis_url, sections.JITGATE_QUEUE)
        except Exception as exc:
            print(f"bench: cleanup (broker): {exc}", file=sys.stderr)
        for db in (ledger_name, f"{cfg.prefix}_revoke", f"{cfg.prefix}_sweep"):
            try:
                drop_database(cfg.pg_url, db)
            except Exception as exc:
                print(f"bench: cleanup (database {db}): {exc}", file=sys.stderr)
        try:
            dropped = drop_roles(cfg.pg_url, cfg.prefix)
            results["meta"]["roles_dropped"] = dropped
        except Exception as exc:
            print(f"bench: cleanup (roles): {exc}", file=sys.stderr)
    results["meta"]["cpu_probe_after"] = cpu_probe()
    results["meta"]["loadavg_after"] = os.getloadavg()
    results["meta"]["total_s"] = round(time.monotonic() - started, 1)
    results["meta"]["errors"] = errors
    results["evaluation"] = report.evaluate(results, cfg)
    write_json(cfg.out / f"{name}.json", results)
    (cfg.out / f"{name}.md").write_text(report.markdown(results, cfg))
    print(f"bench: wrote {cfg.out / (name + '.json')} and {name}.md "
          f"({results['meta']['total_s']}s)", file=sys.stderr)
    if not errors and not cfg.keep:  # JITGATE_BENCH_KEEP=1 keeps profiles for reading
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
