"""The benchmark harness keeps working: its smoke mode runs every section end to end
against the suite's Redis and PostgreSQL and writes a JSON with numbers in each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("ingest", "approvals", "revocation", "sweep_cost", "scale_out")


def _numbers(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return 1
    if isinstance(value, dict):
        return sum(_numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(_numbers(v) for v in value)
    return 0


@pytest.mark.timeout(900)
def test_bench_smoke_writes_every_section(redis_url: str, pg_url: str, tmp_path: Path) -> None:
    # The RabbitMQ rows (scale-out) run when the suite has a RabbitMQ (`make test-amqp`);
    # on Redis alone they are left to `make bench-smoke`.
    amqp = os.environ.get("JITGATE_TEST_AMQP_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    env.update({
        "JITGATE_BENCH_REDIS_URL": redis_url,
        "JITGATE_BENCH_PG_URL": pg_url,
        "JITGATE_BENCH_AMQP_URL": amqp or "none",
        "JITGATE_BENCH_SCALE": "0.01",
    })
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=840, check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    for section in SECTIONS:
        assert section in results, section
        assert "error" not in results[section], results[section]
        assert _numbers(results[section]) > 0, section
    assert results["ingest"]["accepted_per_s"] > 0
    assert results["ingest"]["raw_accepted_per_s"] > 0
    assert results["approvals"]["per_s"] > 0 and results["approvals"]["raw_per_s"] > 0
    assert results["revocation"]["all_revoked_on_target"] is True
    assert len(results["sweep_cost"]["sizes"]) == 3
    assert results["scale_out"]["rows"]
    brokers = {row["broker"] for row in results["scale_out"]["rows"]}
    assert brokers == ({"redis", "amqp"} if amqp else {"redis"}), results["scale_out"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| figure | value | raw limit (same run) | ratio | target | result |" in table
