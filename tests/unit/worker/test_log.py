"""``worker.log.configure(fmt="json")``: one JSON object per line, secrets redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker import log as logconf
from worker.ledger import audit

HOSTILE = 'first\nsecond\r\nthird\r{"event": "grant.issued", "seq": 1, "hash": "00"}'


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``configure`` replaces the root handlers and structlog's config: put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _json(capsys: pytest.CaptureFixture[str], level: str = "INFO") -> None:
    # The handler binds the sys.stdout current at configure time (capsys's buffer only
    # inside the test body), so every test configures for itself.
    logconf.configure(fmt="json", level=level)
    capsys.readouterr()


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1].split("\n")


def _one(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = _lines(capsys)
    assert len(lines) == 1, lines
    assert "\r" not in lines[0]
    record = json.loads(lines[0])
    assert isinstance(record, dict)
    return record


def test_event_with_newlines_and_fake_json_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _json(capsys)
    structlog.get_logger("jitgate.test").info(
        "ticket.ignored", summary=HOSTILE, nested={"comment": HOSTILE, "list": [HOSTILE]}
    )
    record = _one(capsys)
    assert record["event"] == "ticket.ignored"
    assert record["summary"] == HOSTILE
    assert record["nested"] == {"comment": HOSTILE, "list": [HOSTILE]}
    assert record["level"] == "info"
    assert record["logger"] == "jitgate.test"
    assert record["timestamp"].endswith("Z")


def test_event_name_itself_cannot_split_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    structlog.get_logger("jitgate.test").warning(HOSTILE)
    record = _one(capsys)
    assert record["event"] == HOSTILE
    assert record["level"] == "warning"


def test_control_characters_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    text = "bell\x07 esc\x1b[31m nul\x00 tab\t nel\x85 ls\u2028 ps\u2029 é"
    structlog.get_logger("jitgate.test").info("x", text=text)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    line = out.rstrip("\n")
    assert not any(ord(c) < 0x20 for c in line)
    assert len(line.splitlines()) == 1  # no NEL/LS/PS either
    assert json.loads(line)["text"] == text


def test_stdlib_records_use_the_same_json_stream(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    logging.getLogger("celery.worker").warning("task failed:\n%s", HOSTILE)
    record = _one(capsys)
    assert record["event"] == f"task failed:\n{HOSTILE}"
    assert record["logger"] == "celery.worker"
    assert record["level"] == "warning"


def test_exception_traceback_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    log = structlog.get_logger("jitgate.test")
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        log.exception("grant.failed")
    record = _one(capsys)
    assert record["event"] == "grant.failed"
    assert record["exception"][0]["exc_type"] == "RuntimeError"
    assert record["exception"][0]["exc_value"] == HOSTILE


@pytest.mark.parametrize(
    "key", ["password", "token", "dsn", "secret", "authorization", "api_token",
            "webhook_secret", "Password", "DSN"]
)
def test_secret_keys_are_redacted(capsys: pytest.CaptureFixture[str], key: str) -> None:
    _json(capsys)
    structlog.get_logger("jitgate.test").info("connect", **{key: "SENTINEL-hunter2"},
                                              user="ctr_bob")
    out = capsys.readouterr().out
    assert "SENTINEL" not in out
    record = json.loads(out)
    assert record[key] == "[redacted]"
    assert record["user"] == "ctr_bob"


def test_audit_emit_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    record = {"seq": 7, "event": "grant.denied", "reason": HOSTILE, "hash": "ab" * 32}
    audit.emit([record])
    line = _one(capsys)
    assert line["event"] == "grant.denied"
    assert line["log_type"] == "audit"
    assert line["logger"] == "jitgate.audit"
    assert line["audit"] == record


def test_several_events_are_several_lines(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys)
    log = structlog.get_logger("jitgate.test")
    for i in range(3):
        log.info("grant.issued", seq=i, note=HOSTILE)
    records = [json.loads(line) for line in _lines(capsys)]
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert all(r["note"] == HOSTILE for r in records)


def test_level_filters_records(capsys: pytest.CaptureFixture[str]) -> None:
    _json(capsys, level="warning")
    log = structlog.get_logger("jitgate.test")
    log.info("hidden")
    log.warning("shown")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["shown"]
