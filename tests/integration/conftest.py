"""A real jitgate stack for integration tests.

Real broker (Redis; RabbitMQ when ``JITGATE_TEST_AMQP_URL`` is set, see ``broker_url``),
real Celery worker **processes** (``python -m worker worker``), a real PostgreSQL as
grant target (and ledger, or SQLite), and the Jira REST double. The webhook listener is
the real ASGI app driven in-process over HTTP semantics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from kombu import Connection
from kombu.exceptions import ChannelError
from psycopg import sql
from sqlalchemy import select
from starlette.testclient import TestClient

from worker.celery_app import create_celery
from worker.doubles.jira import JiraDouble, jira_delivery
from worker.doubles.servicenow import ServiceNowDouble, servicenow_delivery
from worker.ledger.schema import audit_events, grants, inbox
from worker.runtime import Runtime
from worker.settings import Settings
from worker.webhooks.app import create_app

SECRET = "test-webhook-secret-3f9a"
SNOW_SECRET = "snow-webhook-secret-7c21"
APPROVED = ("10105", "Approved", "indeterminate")
DONE = ("10001", "Done", "done")
REJECTED = ("10106", "Rejected", "done")

POLICY = """\
version: 1
targets:
  warehouse:
    type: postgres
    dsn: ${{JG_TEST_TARGET_DSN}}
    principal_pattern: "^ctr_[a-z0-9_]{{2,40}}$"
  warehouse-b:
    type: postgres
    dsn: ${{JG_TEST_TARGET_DSN}}
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
  - name: warehouse-short
    source: jira
    match:
      project: OPS
      issue_type: Access Request
      requested: {{field: customfield_10070, equals: warehouse-short}}
    approved_statuses: [Approved]
    closed_statuses: [Done]
    approvers:
      users: [{approver}]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 3s
    drift: {{enforce: true, missing: reapply}}
  - name: warehouse-missing-role
    source: jira
    match:
      project: OPS
      issue_type: Access Request
      requested: {{field: customfield_10070, equals: warehouse-missing-role}}
    approved_statuses: [Approved]
    closed_statuses: [Done]
    approvers:
      users: [{approver}]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}_missing}}
    duration: 8h
  - name: warehouse-multi
    source: jira
    match:
      project: OPS
      issue_type: Access Request
      requested: {{field: customfield_10070, equals: warehouse-multi}}
    approved_statuses: [Approved]
    closed_statuses: [Done]
    approvers:
      users: [{approver}]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
      - {{target: warehouse-b, role: {role}_refused}}
    duration: 8h
  - name: warehouse-capped
    source: jira
    match:
      project: OPS
      issue_type: Access Request
      requested: {{field: customfield_10070, equals: warehouse-capped}}
    approved_statuses: [Approved]
    closed_statuses: [Done]
    approvers:
      users: [{approver}]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 8h
    max_duration: 24h
    duration_field: customfield_10072
    contract_end_field: customfield_10073
  - name: warehouse-jsm
    source: jira
    match:
      project: ITSM
      requested: {{field: customfield_10070, equals: warehouse-read}}
    approved_statuses: ["10008"]
    closed_statuses: [Done]
    approvers:
      groups: [grp-dba-0001]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 8h
  - name: warehouse-jsm-two
    source: jira
    match:
      project: ITSM
      requested: {{field: customfield_10070, equals: warehouse-admin}}
    approved_statuses: ["10008"]
    closed_statuses: [Done]
    approvers:
      groups: [grp-dba-0001]
      min_approvals: 2
    principal:
      from: field
      field: customfield_10071
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 8h
  - name: warehouse-snow
    source: servicenow
    match:
      table: sc_req_item
      cat_item: Warehouse access
    approved_statuses: [approved]
    approvers:
      users: [jane.approver]
    principal:
      from: field
      field: variables.db_user
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 8h
  - name: warehouse-change
    source: servicenow
    match:
      table: change_request
    approved_statuses: [approved]
    approvers:
      users: [jane.approver]
    principal:
      from: requester_user_name
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 1h
    max_duration: 4h
"""


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    jira: JiraDouble
    target_dsn: str
    role: str
    approver: dict[str, Any]
    requester: dict[str, Any]
    broker_url: str
    folder: Path
    token: str
    snow: ServiceNowDouble
    snow_approver: str
    runtime: Runtime = field(init=False)
    client: TestClient = field(init=False)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runtime = Runtime(self.settings, env=self.env)
        self.client = TestClient(create_app(self.runtime, create_celery(self.settings)))

    # -- processes
    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "-c", "2", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        path = Path(log.name)
        wait_for(lambda: b"ready" in path.read_bytes() or proc.poll() is not None,
                 timeout=60, what="celery worker ready")
        if proc.poll() is not None:
            raise AssertionError(path.read_text(errors="replace")[-4000:])
        return proc

    def start_beat(self) -> subprocess.Popen[bytes]:
        log = (self.folder / f"beat-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "beat"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args], env=self.env, capture_output=True,
            text=True, timeout=60, check=False,
        )

    def metric(self, name: str) -> float:
        text = self.client.get("/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers.clear()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.folder.glob("*.log"))

    # -- tickets
    def new_ticket(self, *, principal: str | None, requested: str = "warehouse-read",
                   reporter: dict[str, Any] | None = None, summary: str | None = None) -> str:
        key = f"OPS-{uuid.uuid4().int % 10**6}"
        fields: dict[str, Any] = {"customfield_10070": {"id": "10300", "value": requested}}
        if principal is not None:
            fields["customfield_10071"] = principal
        self.jira.create_issue(key, reporter=reporter or self.requester, fields=fields,
                               summary=summary)
        return key

    def post(self, payload: dict[str, Any], *, identifier: str | None = None) -> Any:
        body, headers = jira_delivery(payload, secret=SECRET,
                                      identifier=identifier or str(uuid.uuid4()))
        return self.client.post("/webhooks/jira", content=body, headers=headers)

    def post_snow(self, payload: dict[str, Any], *, ts: int | None = None,
                  secret: str = SNOW_SECRET) -> Any:
        body, headers = servicenow_delivery(payload, secret=secret, ts=ts)
        return self.client.post("/webhooks/servicenow", content=body, headers=headers)

    def snow_event(self, table: str, sys_id: str) -> Any:
        """Post the business rule's delivery for the record's current state."""
        response = self.post_snow(self.snow.webhook(table, sys_id))
        assert response.status_code == 202, response.text
        return response

    def transition(self, key: str, status: tuple[str, str, str],
                   author: dict[str, Any] | None = None) -> Any:
        payload = self.jira.transition(key, status, author=author or self.approver)
        response = self.post(payload)
        assert response.status_code == 202, response.text
        return response

    # -- ledger and target reads
    def grants_of(self, key: str) -> list[Any]:
        with self.runtime.ledger.tx() as conn:
            return list(conn.execute(select(grants).where(grants.c.ticket_key == key)).all())

    def audit(self, event: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        with self.runtime.ledger.tx() as conn:
            rows = conn.execute(select(audit_events.c.payload).order_by(audit_events.c.seq))
            out = [json.loads(r.payload) for r in rows]
        return [e for e in out if (event is None or e["event"] == event)
                and (key is None or e["ticket"]["key"] == key)]

    def send(self, task: str, *args: Any) -> None:
        create_celery(self.settings).send_task(task, args=list(args))

    def pending_deliveries(self) -> int:
        with self.runtime.ledger.tx() as conn:
            return len(conn.execute(select(inbox.c.id).where(inbox.c.processed_at.is_(None))).all())

    def is_member(self, principal: str) -> bool:
        with psycopg.connect(self.target_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
                (self.role, principal),
            ).fetchone()
        return row is not None

    def create_principal(self) -> str:
        """A fresh login role on the target, named so teardown finds it."""
        name = f"ctr_{self.token}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.target_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        return name

    def queue_length(self) -> int:
        """Messages waiting in this stack's queue (not those a worker holds)."""
        return queue_length(self.broker_url, self.settings.queue)

    def purge_queue(self) -> None:
        """The broker loses what waits in this stack's queue (Redis: the whole DB)."""
        purge(self.broker_url, self.settings.queue)


# -- broker-neutral helpers: Redis (a DB per xdist worker) or RabbitMQ (a queue per stack)


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://", "unix://"))


def _redis(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url.replace("redis+socket://", "unix://"))


def queue_length(broker_url: str, queue: str) -> int:
    if is_redis(broker_url):
        return int(_redis(broker_url).llen(queue))
    with Connection(broker_url) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # 404: nobody declared it yet, so nothing was published
            return 0


def purge(broker_url: str, queue: str) -> None:
    """Drop the waiting messages. Redis: FLUSHDB (scheduled retries, bindings and all, as
    a broker that lost its data); RabbitMQ: purge the queue (unacked deliveries that a
    worker holds come back to it when that worker goes)."""
    if is_redis(broker_url):
        _redis(broker_url).flushdb()
        return
    # Not declared yet (404): nothing to purge.
    with Connection(broker_url) as conn, contextlib.suppress(ChannelError):
        conn.default_channel.queue_purge(queue)


def _delete_queue(broker_url: str, queue: str) -> None:
    """RabbitMQ keeps a durable queue (and its exchange) after the test: remove them."""
    if is_redis(broker_url):
        return  # the next module's FLUSHDB takes it
    for kind in ("queue", "exchange"):
        # A connection each: a channel error (already gone) closes the channel.
        with Connection(broker_url) as conn, contextlib.suppress(ChannelError):
            channel = conn.default_channel
            (channel.queue_delete if kind == "queue" else channel.exchange_delete)(queue)


def unreachable_broker_url(broker_url: str) -> str:
    """A URL of the same kind as ``broker_url`` where no broker listens (port 9)."""
    return "redis://127.0.0.1:9/0" if is_redis(broker_url) else "amqp://guest:guest@127.0.0.1:9//"


def _drop_roles(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"%{prefix}%",))]
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def ledger_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def broker_url(request: pytest.FixtureRequest) -> str:
    """The integration stacks' broker: RabbitMQ at ``JITGATE_TEST_AMQP_URL`` when set
    (``make test-amqp``; each stack gets its own queue there), else the xdist worker's
    Redis DB (``redis_url``). Module scope, so a folder that overrides ``redis_url``
    or this fixture (tests/faults) gets its own."""
    return suite_broker_url(request)


def suite_broker_url(request: pytest.FixtureRequest) -> str:
    """``JITGATE_TEST_AMQP_URL``, else the ``redis_url`` fixture (requested only then)."""
    amqp = os.environ.get("JITGATE_TEST_AMQP_URL")
    if amqp:
        return amqp
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(scope="module")
def stack_factory(
    broker_url: str, pg_url: str, module_database: str
) -> Iterator[Callable[..., Stack]]:
    """Builds a stack; tears down workers, roles, the double and the broker's queues."""
    made: list[Stack] = []
    token = uuid.uuid4().hex[:8]

    def build(*, ledger: str = "postgres", start_worker: bool = True,
              extra_env: dict[str, str] | None = None, jira_token: str | None = None,
              snow_password: str | None = None) -> Stack:
        for previous in made:  # one consumer set per broker DB at a time
            previous.stop_workers()
        folder = Path(tempfile.mkdtemp(prefix="jg-stack-"))
        role = f"analytics_ro_{token}_{len(made)}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        jira = (JiraDouble(token=jira_token) if jira_token else JiraDouble()).start()
        snow = (ServiceNowDouble(password=snow_password) if snow_password
                else ServiceNowDouble()).start()
        snow_approver = snow.add_user("jane.approver", "Jane Approver", "jane@example.com")
        approver = jira.add_user("5b10a2844c20165700ede21g", "Jane Approver", "jane@example.com")
        requester = jira.add_user("712020:sam-requester", "Sam Requester")
        policy = folder / "policy.yaml"
        policy.write_text(POLICY.format(approver=approver["accountId"], role=role))
        ledger_url = (module_database if ledger == "postgres"
                      else f"sqlite:///{folder / 'ledger.sqlite3'}")
        # Its own queue: stacks of other xdist workers may share the RabbitMQ vhost.
        queue = f"jg-test-{token}-{len(made)}"
        purge(broker_url, queue)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")},
            "JITGATE_BROKER_URL": broker_url,
            "JITGATE_QUEUE": queue,
            "JITGATE_DATABASE_URL": ledger_url,
            "JITGATE_POLICY_PATH": str(policy),
            "JITGATE_DATA_DIR": str(folder),
            "JITGATE_JIRA_URL": jira.url,
            "JITGATE_JIRA_USER": jira.user,
            "JITGATE_JIRA_TOKEN": jira.token,
            "JITGATE_JIRA_WEBHOOK_SECRET": SECRET,
            "JITGATE_SERVICENOW_URL": snow.url,
            "JITGATE_SERVICENOW_USER": snow.user,
            "JITGATE_SERVICENOW_PASSWORD": snow.password,
            "JITGATE_SERVICENOW_WEBHOOK_SECRET": SNOW_SECRET,
            "JITGATE_LOG_FORMAT": "json",
            "JG_TEST_TARGET_DSN": pg_url,
            **(extra_env or {}),
        }
        settings = Settings(
            broker_url=broker_url, queue=queue, database_url=ledger_url, policy_path=policy,
            data_dir=folder, jira_url=jira.url, jira_user=jira.user, jira_token=jira.token,
            jira_webhook_secret=SECRET, servicenow_url=snow.url, servicenow_user=snow.user,
            servicenow_password=snow.password, servicenow_webhook_secret=SNOW_SECRET,
        )
        from worker.ledger.db import migrate

        migrate(Runtime(settings, env=env).ledger.engine)
        stack = Stack(settings=settings, env=env, jira=jira, target_dsn=pg_url, role=role,
                      approver=approver, requester=requester, broker_url=broker_url,
                      folder=folder, token=token, snow=snow, snow_approver=snow_approver)
        made.append(stack)
        if start_worker:
            stack.start_worker()
        return stack

    yield build
    for stack in made:
        stack.stop_workers()
        stack.jira.stop()
        stack.snow.stop()
        stack.runtime.close()
        _delete_queue(broker_url, stack.settings.queue)
    _drop_roles(pg_url, token)
