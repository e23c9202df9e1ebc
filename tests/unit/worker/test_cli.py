"""The ``jitgate`` command (``worker.cli.main``) on SQLite ledgers in tmp_path."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, insert, inspect, update

from worker.cli import main
from worker.ledger.audit import append
from worker.ledger.db import Ledger
from worker.ledger.schema import audit_events, grants, metadata

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "policies" / "examples"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

BROKEN_POLICY = """\
version: 1
targets:
  warehouse:
    type: postgres
    dsn: postgresql://postgres@127.0.0.1:5432/postgres
    principal_pattern: "^ctr_[a-z0-9_]{2,40}$"
policies:
  - name: warehouse-read
    source: jirra
    match:
      project: OPS
      issue_type: Access Request
    approved_statuses: [Approved]
    closed_statuses: [Done]
    approvers:
      users: [u1]
      min_approvals: lots
    principal:
      from: field
      field: customfield_10071
    grants:
      - {target: warehouse, role: analytics_ro}
    duration: 8h
    max_duration: 24h
    stale_after: 72h
    aproved_by: typo
"""


def _line(text: str, needle: str) -> int:
    """1-based line of the only line of ``text`` containing ``needle``."""
    found = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(found) == 1, needle
    return found[0]


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "l.db"
    monkeypatch.setenv("JITGATE_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "data"))
    return path


@pytest.fixture
def ledger(db_path: Path) -> Any:
    result = _run("db", "upgrade")
    assert result.exit_code == 0, result.output
    instance = Ledger.from_url(f"sqlite:///{db_path}")
    yield instance
    instance.dispose()


def _fill(ledger: Ledger, n: int, **extra: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(1, n + 1):
        with ledger.tx() as conn:
            event = append(
                ledger, conn, event="grant.issued", key=f"k{i}", ts=T0 + timedelta(minutes=i),
                fields={"ticket": {"source": "jira", "id": str(i), "key": f"OPS-{i}"},
                        "principal": "ctr_bob", **extra},
            )
        assert event is not None
        out.append(event)
    return out


# --- policy check ----------------------------------------------------------------------


def test_policy_check_passes_on_the_shipped_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAREHOUSE_DSN", raising=False)
    result = _run("policy", "check", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 1 policies, 1 targets"


def test_policy_check_defaults_to_the_configured_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAREHOUSE_DSN", raising=False)
    result = _run("policy", "check")
    assert result.exit_code == 0, result.output
    assert "ok: 1 policies" in result.stdout


def test_policy_check_reports_every_error_with_file_line_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_POLICY, encoding="utf-8")
    result = _run("policy", "check", str(broken))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith(f"{broken}:")]
    pattern = re.compile(rf"^{re.escape(str(broken))}:(\d+): ([\w.\[\]]+): (.+)$")
    parsed = {}
    for line in errors:
        match = pattern.match(line)
        assert match, line
        parsed[match.group(2)] = (int(match.group(1)), match.group(3))
    assert parsed["policies[0].source"][0] == _line(BROKEN_POLICY, "source: jirra")
    assert parsed["policies[0].approvers.min_approvals"][0] == _line(BROKEN_POLICY, "lots")
    assert parsed["policies[0].aproved_by"] == (
        _line(BROKEN_POLICY, "aproved_by"), "unknown key (check its spelling)"
    )
    assert len(errors) == 3
    assert lines[-1] == "3 error(s)"
    assert "ok:" not in result.stdout


def test_policy_check_reports_target_option_errors(tmp_path: Path) -> None:
    text = BROKEN_POLICY.replace("jirra", "jira").replace("lots", "1")
    text = text.replace("    aproved_by: typo\n", "")
    text = text.replace('principal_pattern: "^ctr_[a-z0-9_]{2,40}$"',
                        'principal_pattern: "^ctr_[a-z0-9_]{2,40}$"\n    manage_login: maybe')
    broken = tmp_path / "opts.yaml"
    broken.write_text(text, encoding="utf-8")
    result = _run("policy", "check", str(broken))
    assert result.exit_code == 1
    line = _line(text, "manage_login")
    assert f"{broken}:{line}: targets.warehouse.manage_login: " in result.stderr


def test_policy_check_unknown_grant_target(tmp_path: Path) -> None:
    text = BROKEN_POLICY.replace("jirra", "jira").replace("lots", "1")
    text = text.replace("    aproved_by: typo\n", "").replace("target: warehouse,", "target: nope,")
    broken = tmp_path / "target.yaml"
    broken.write_text(text, encoding="utf-8")
    result = _run("policy", "check", str(broken))
    assert result.exit_code == 1
    line = _line(text, "target: nope")
    assert f"{broken}:{line}: policies[0].grants[0].target: unknown target 'nope'" in result.stderr


# --- db upgrade ------------------------------------------------------------------------


def test_db_upgrade_creates_the_ledger_and_is_repeatable(db_path: Path) -> None:
    assert not db_path.exists()
    first = _run("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "ledger schema is up to date" in first.stdout
    assert db_path.exists()
    ledger = Ledger.from_url(f"sqlite:///{db_path}")
    try:
        tables = set(inspect(ledger.engine).get_table_names())
    finally:
        ledger.dispose()
    assert set(metadata.tables) <= tables
    second = _run("db", "upgrade")
    assert second.exit_code == 0, second.output


def test_db_upgrade_uses_the_data_dir_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "state"))
    result = _run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "state" / "ledger.sqlite3").is_file()


# --- audit -----------------------------------------------------------------------------


def test_audit_verify_on_a_clean_ledger(ledger: Ledger) -> None:
    empty = _run("audit", "verify")
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.strip() == "audit chain ok"
    _fill(ledger, 4)
    result = _run("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "audit chain ok"


def test_audit_verify_names_the_edited_seq(ledger: Ledger) -> None:
    _fill(ledger, 4)
    with ledger.tx() as conn:
        conn.execute(
            update(audit_events)
            .where(audit_events.c.seq == 2)
            .values(payload=audit_events.c.payload.op("||")(" "))
        )
    result = _run("audit", "verify")
    assert result.exit_code == 1
    assert "audit chain broken at seq 2:" in result.stderr
    assert "audit chain ok" not in result.output


def test_audit_verify_names_a_deleted_last_event(ledger: Ledger) -> None:
    _fill(ledger, 3)
    with ledger.tx() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == 3))
    result = _run("audit", "verify")
    assert result.exit_code == 1
    assert "audit chain broken at seq 3:" in result.stderr


def test_audit_export_prints_jsonl_with_hashes(ledger: Ledger) -> None:
    hostile = 'one\ntwo\r\n{"event": "grant.revoked", "seq": 1}'
    stored = _fill(ledger, 3, reason=hostile)
    result = _run("audit", "export")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records == stored
    assert [r["seq"] for r in records] == [1, 2, 3]
    prev = "0" * 64
    for record in records:
        assert record["reason"] == hostile
        assert record["event"] == "grant.issued"
        assert record["prev_hash"] == prev
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert record["hash"] == hashlib.sha256((prev + canonical).encode()).hexdigest()
        prev = record["hash"]


def test_audit_export_of_an_empty_ledger(ledger: Ledger) -> None:
    result = _run("audit", "export")
    assert result.exit_code == 0
    assert result.stdout == ""


# --- grants ----------------------------------------------------------------------------


def test_grants_lists_ledger_rows(ledger: Ledger) -> None:
    assert _run("grants").stdout == ""
    grant_id = str(uuid.uuid4())
    with ledger.tx() as conn:
        conn.execute(insert(grants).values(
            id=grant_id, grant_key="k" * 64, ticket_uid="jira:10042", ticket_key="OPS-12",
            policy="warehouse-read", policy_digest="sha256:x", target="warehouse",
            role="analytics_ro", principal="ctr_bob", approval_ref="a1", state="active",
            starts_at=T0, expires_at=T0 + timedelta(hours=8), created_at=T0, updated_at=T0,
        ))
    result = _run("grants", "--json")
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["id"] == grant_id
    assert record["state"] == "active"
    assert record["principal"] == "ctr_bob"
    assert datetime.fromisoformat(record["expires_at"]) == T0 + timedelta(hours=8)
    assert _run("grants", "--state", "revoked").stdout == ""
    text = _run("grants", "--state", "active").stdout
    assert grant_id in text
    assert "OPS-12" in text


# --- sign ------------------------------------------------------------------------------


def _body(tmp_path: Path) -> Path:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"webhookEvent":"jira:issue_updated","issue":{"key":"OPS-1"}}\n')
    return body


def test_sign_prints_the_hub_signature(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", "It's a Secret to Everybody")
    body = _body(tmp_path)
    result = _run("sign", str(body))
    assert result.exit_code == 0, result.output
    want = hmac.new(b"It's a Secret to Everybody", body.read_bytes(), hashlib.sha256).hexdigest()
    assert result.stdout.strip() == f"sha256={want}"


def test_sign_uses_the_generated_secret_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jira-webhook-secret").write_text("generated-secret\n", encoding="utf-8")
    monkeypatch.setenv("JITGATE_DATA_DIR", str(data))
    body = _body(tmp_path)
    result = _run("sign", str(body))
    assert result.exit_code == 0, result.output
    want = hmac.new(b"generated-secret", body.read_bytes(), hashlib.sha256).hexdigest()
    assert result.stdout.strip() == f"sha256={want}"


def test_sign_without_a_secret_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "empty"))
    result = _run("sign", str(_body(tmp_path)))
    assert result.exit_code == 2
    assert "no Jira webhook secret configured" in result.stderr
    assert "sha256=" not in result.stdout


# --- configuration errors --------------------------------------------------------------


def _bad_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", "SENTINEL-webhook-secret")
    monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(tmp_path / "missing-token"))


def test_configuration_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _bad_config(monkeypatch, tmp_path)
    result = _run("audit", "verify")
    assert result.exit_code != 0
    assert "configuration:" in result.stderr
    assert "JITGATE_JIRA_TOKEN_FILE" in result.stderr
    assert "audit chain ok" not in result.output


def test_configuration_error_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _bad_config(monkeypatch, tmp_path)
    assert _run("audit", "verify").exit_code == 2


def test_configuration_error_does_not_print_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _bad_config(monkeypatch, tmp_path)
    result = _run("audit", "verify")
    assert "configuration:" in result.stderr
    assert "SENTINEL" not in result.output


def test_web_refuses_to_start_without_a_webhook_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JITGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'l.db'}")
    monkeypatch.setenv("JITGATE_BROKER_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(main, ["web"])
    assert result.exit_code == 2
    assert "JITGATE_JIRA_WEBHOOK_SECRET is not set" in result.output


def test_audit_export_window_and_ocsf(ledger: Ledger) -> None:
    stored = _fill(ledger, 3, role="analytics_ro", target="warehouse",
                   approver={"id": "acc-1", "display": "Jane"})
    since = (T0 + timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")
    until = (T0 + timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M:%S")
    windowed = _run("audit", "export", "--since", since, "--until", until)
    assert [json.loads(line)["seq"] for line in windowed.stdout.splitlines()] == [2]

    ocsf = _run("audit", "export", "--format", "ocsf")
    assert ocsf.exit_code == 0, ocsf.output
    records = [json.loads(line) for line in ocsf.stdout.splitlines()]
    assert len(records) == len(stored)
    first = records[0]
    assert (first["class_uid"], first["activity_id"], first["type_uid"]) == (3005, 1, 300501)
    assert first["category_uid"] == 3
    assert first["status"] == "Success"
    assert first["user"] == {"name": "ctr_bob"}
    assert first["privileges"] == ["analytics_ro"]
    assert first["actor"]["user"]["uid"] == "acc-1"
    assert first["metadata"]["uid"] == "k1"
    assert first["unmapped"]["hash"] == stored[0]["hash"]
    assert first["time"] == int((T0 + timedelta(minutes=1)).timestamp() * 1000)
