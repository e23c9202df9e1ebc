"""A real jitgate stack for the benchmark, assembled as tests/integration/conftest.py does:
the Jira REST double in this process, a policy file, ``python -m worker web|worker|beat``
processes with ``JITGATE_*`` environment, PostgreSQL as ledger and as grant target."""

# ruff: noqa: TID251 - the harness reads its own env and imports lazily

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.common import PY, Config, CpuMeter, Procs, free_port, wait_http, wait_log
from worker.doubles.jira import JiraDouble, jira_delivery

SECRET = "bench-webhook-secret-5e1d"
APPROVED = ("10105", "Approved", "indeterminate")
APPROVER_ID = "5b10a2844c20165700ede21g"

POLICY = """\
version: 1
targets:
  warehouse:
    type: postgres
    dsn: ${{JG_BENCH_TARGET_DSN}}
    principal_pattern: "^ctr_[a-z0-9_]{{2,40}}$"
policies:
  - name: warehouse-read
    source: jira
    match:
      project: OPS
      issue_type: Access Request
      requested: {{field: customfield_10070, equals: warehouse-read}}
    approved_statuses: [Approved]
    closed_statuses: [Done]
    rejected_statuses: [Rejected]
    approvers:
      users: [{approver}]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 8h
    max_duration: 24h
"""


@dataclass
class Stack:
    cfg: Config
    procs: Procs
    meter: CpuMeter
    ledger_url: str
    broker_url: str
    role: str
    folder: Path
    jira: JiraDouble = field(init=False)
    approver: dict[str, Any] = field(init=False)
    requester: dict[str, Any] = field(init=False)
    web: subprocess.Popen[bytes] | None = None
    web_port: int = 0
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _ticket_seq: int = 100000
    _principal_seq: int = 0

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jira = JiraDouble().start()
        self.approver = self.jira.add_user(APPROVER_ID, "Jane Approver", "jane@example.com")
        self.requester = self.jira.add_user("712020:sam-requester", "Sam Requester")
        self.policy = self.folder / "policy.yaml"
        self.policy.write_text(POLICY.format(approver=APPROVER_ID, role=self.role))

    # ------------------------------------------------------------------ environment

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
        return {
            **base,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "JITGATE_BROKER_URL": self.broker_url,
            "JITGATE_DATABASE_URL": self.ledger_url,
            "JITGATE_POLICY_PATH": str(self.policy),
            "JITGATE_DATA_DIR": str(self.folder),
            "JITGATE_JIRA_URL": self.jira.url,
            "JITGATE_JIRA_USER": self.jira.user,
            "JITGATE_JIRA_TOKEN": self.jira.token,
            "JITGATE_JIRA_WEBHOOK_SECRET": SECRET,
            "JITGATE_LOG_FORMAT": "json",
            # the per-source token bucket would cap the bench at 100/s
            "JITGATE_RATE_LIMIT_PER_SOURCE": "1000000000",
            "JITGATE_RATE_LIMIT_BURST": "1000000000",
            "JG_BENCH_TARGET_DSN": self.cfg.pg_url,
            **extra,
        }

    # ------------------------------------------------------------------ processes

    def start_web(self, broker_url: str | None = None) -> int:
        self.stop_web()
        port = free_port()
        env = self.env(JITGATE_HTTP_PORT=str(port), JITGATE_HTTP_HOST="127.0.0.1",
                       **({"JITGATE_BROKER_URL": broker_url} if broker_url else {}))
        log = self.folder / f"web-{port}.log"
        self.web = self.procs.start([PY, "-m", "worker", "web"], env=env, log=log)
        self.meter.roles[self.web.pid] = "jitgate web (uvicorn)"
        wait_http(port, self.web, log)
        self.web_port = port
        return port

    def stop_web(self) -> None:
        if self.web is not None:
            self.procs.stop(self.web)
            self.web = None

    def start_workers(self, count: int, *, concurrency: int = 2,
                      broker_url: str | None = None) -> list[subprocess.Popen[bytes]]:
        env = self.env(**({"JITGATE_BROKER_URL": broker_url} if broker_url else {}))
        started = []
        for _ in range(count):
            log = self.folder / f"worker-{len(self.workers)}-{time.monotonic_ns()}.log"
            node = f"bench{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h"
            proc = self.procs.start([PY, "-m", "worker", "worker", "-c", str(concurrency),
                                     "-n", node], env=env, log=log)
            self.meter.roles[proc.pid] = "jitgate worker(s)"
            started.append((proc, log))
            self.workers.append(proc)
        for proc, log in started:
            wait_log(proc, log, b"ready")
        return [p for p, _ in started]

    def start_beat(self, interval: float) -> subprocess.Popen[bytes]:
        env = self.env(JITGATE_SWEEP_INTERVAL=str(interval))
        log = self.folder / f"beat-{time.monotonic_ns()}.log"
        proc = self.procs.start([PY, "-m", "worker", "beat"], env=env, log=log)
        self.meter.roles[proc.pid] = "jitgate beat"
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            self.procs.stop(proc)
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        self.stop_web()
        self.jira.stop()

    # ------------------------------------------------------------------ tickets

    def new_principals(self, n: int) -> list[str]:
        names = [f"ctr_{self.cfg.prefix}_{self._principal_seq + i}" for i in range(n)]
        self._principal_seq += n
        return names

    def approvals(self, principals: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
        """One Access Request per principal, approved by the approver in the double;
        returns (ticket key, signed webhook body, headers) for each."""
        out = []
        for principal in principals:
            self._ticket_seq += 1
            key = f"OPS-{self._ticket_seq}"
            fields = {"customfield_10070": {"id": "10300", "value": "warehouse-read"},
                      "customfield_10071": principal}
            self.jira.create_issue(key, reporter=self.requester, fields=fields)
            payload = self.jira.transition(key, APPROVED, author=self.approver)
            body, headers = jira_delivery(payload, secret=SECRET,
                                          identifier=f"{self.cfg.prefix}-{key}")
            out.append((key, body, headers))
        return out

    def write_items(self, items: list[tuple[str, bytes, dict[str, str]]], path: Path) -> Path:
        with path.open("w") as fh:
            for _, body, headers in items:
                fh.write(json.dumps({"body": body.decode(), "headers": headers}) + "\n")
        return path

    def sample_body(self, path: Path) -> Path:
        """One representative signed approval delivery for the ingest load."""
        principal = self.new_principals(1)[0]
        (_, body, headers), = self.approvals([principal])
        headers = {k: v for k, v in headers.items() if k != "X-Atlassian-Webhook-Identifier"}
        path.write_text(json.dumps({"body": body.decode(), "headers": headers}))
        return path

    def load(self, *args: str, timeout: float = 600) -> dict[str, Any]:
        """Run bench/load.py against the web process (or another port given in args)."""
        cmd = [PY, "-m", "bench.load", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    # ------------------------------------------------------------------ ledger reads

    def ledger_conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.ledger_url, autocommit=True)
