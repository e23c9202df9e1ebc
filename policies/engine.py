"""The decision engine: what a ticket, as it is now, means for the grants it owns.

``decide`` is pure: no I/O, no clock (``now`` is passed in), no settings. Everything it
needs arrives as arguments, so the whole state machine is unit-testable and
``jitgate explain`` can show its reasoning without touching anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from connectors.base import Identity, StatusChange, TicketSnapshot
from policies.loader import PolicySet
from policies.model import Policy, field_value, parse_duration

__all__ = [
    "Decision",
    "Deny",
    "Grant",
    "LedgerGrant",
    "Revoke",
    "RevokeReason",
    "candidate_principals",
    "decide",
]

RevokeReason = Literal[
    "ticket_closed",
    "ticket_rejected",
    "ticket_deleted",
    "approval_withdrawn",
    "request_changed",
    "expired",
    "stale",
    "manual",
    "policy_removed",
    "partial_failure",
    "drift",
]

# Grant states in which a grant may still hold access on the target.
LIVE_STATES = frozenset({"pending", "active", "revoking", "revoke_failed"})


@dataclass(frozen=True)
class LedgerGrant:
    """What the ledger holds for one grant of the ticket being decided."""

    grant_id: str
    policy: str
    target: str
    role: str
    principal: str
    approval_ref: str
    state: str
    request_digest: str | None = None


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Grant(_Action):
    kind: Literal["grant"] = "grant"
    policy: str
    policy_digest: str
    target: str
    role: str
    principal: str
    approval_ref: str
    approver: Identity
    approvers: tuple[Identity, ...]
    requester: Identity | None
    starts_at: AwareDatetime
    expires_at: AwareDatetime
    # Fingerprint of what was approved (access, principal, requester, times asked for).
    request_digest: str
    # Why the window is shorter than asked (caps), for the ticket comment.
    notes: tuple[str, ...] = ()


class Revoke(_Action):
    kind: Literal["revoke"] = "revoke"
    grant_id: str
    reason: RevokeReason


class Deny(_Action):
    kind: Literal["deny"] = "deny"
    policy: str | None
    rule: str
    message: str
    # One denial per (ticket, policy, rule, approval): redelivery never repeats it.
    key: str


Action = Grant | Revoke | Deny


class Decision(_Action):
    actions: tuple[Grant | Revoke | Deny, ...] = ()
    ignored: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def grants(self) -> tuple[Grant, ...]:
        return tuple(a for a in self.actions if isinstance(a, Grant))

    @property
    def revokes(self) -> tuple[Revoke, ...]:
        return tuple(a for a in self.actions if isinstance(a, Revoke))

    @property
    def denials(self) -> tuple[Deny, ...]:
        return tuple(a for a in self.actions if isinstance(a, Deny))


def decide(
    snapshot: TicketSnapshot,
    ledger: Sequence[LedgerGrant],
    policy_set: PolicySet,
    now: datetime,
    *,
    principal_load: Mapping[str, int] | None = None,
) -> Decision:
    """Map the ticket's current state to grant, revoke and deny actions.

    ``principal_load`` counts, per policy and principal, the live grants held through
    other tickets (keys ``"policy\x1fprincipal"``; see ``candidate_principals``).
    """
    live = [g for g in ledger if g.state in LIVE_STATES and g.state != "revoking"]
    in_scope = [p for p in policy_set.for_source(snapshot.ref.source) if p.in_scope(snapshot)]

    if snapshot.state == "deleted":
        return Decision(actions=_revoke_all(live, "ticket_deleted"))
    if not in_scope:
        # A ticket moved out of every policy's scope keeps nothing it was granted.
        return Decision(actions=_revoke_all(live, "stale"), ignored="no policy covers this ticket")

    selected = [p for p in in_scope if p.requests_this(snapshot)]
    actions: list[Grant | Revoke | Deny] = []
    notes: list[str] = []
    wanted: set[str] = {p.name for p in selected}

    # Grants held under a policy the ticket no longer asks for.
    actions.extend(
        _revoke_all([g for g in live if g.policy not in wanted], "request_changed")
    )

    if not selected:
        approving = [p for p in in_scope if p.state_of(snapshot) == "approved"]
        if approving:
            requested = _requested_text(snapshot, in_scope)
            entry = _approval_entry(snapshot, approving[0])
            actions.append(
                _deny(
                    snapshot,
                    None,
                    "unknown_requested_access",
                    f"no policy offers the requested access {requested!r}",
                    entry.history_id if entry is not None else None,
                )
            )
        else:
            notes.append("no policy matches the requested access; waiting for approval")
        return Decision(actions=tuple(actions), notes=tuple(notes))

    for policy in selected:
        mine = [g for g in live if g.policy == policy.name]
        state = policy.state_of(snapshot)
        if state in {"closed", "rejected"}:
            reason: RevokeReason = "ticket_rejected" if state == "rejected" else "ticket_closed"
            actions.extend(_revoke_all(mine, reason))
            if state == "rejected" and not any(g.policy == policy.name for g in ledger):
                # Record the refusal once, so the trail shows the request ended unmet.
                actions.append(_deny(snapshot, policy, "request_rejected",
                                     "the request was rejected by its approvers",
                                     f"status-{snapshot.status}"))
            notes.append(f"{policy.name}: ticket is {state}")
            continue
        if state != "approved":
            actions.extend(_revoke_all(mine, "approval_withdrawn"))
            notes.append(f"{policy.name}: ticket is not approved (status {snapshot.status_name})")
            continue
        actions.extend(
            _approved(snapshot, policy, policy_set=policy_set, ledger=ledger, mine=mine, now=now,
                      load=principal_load or {})
        )
    return Decision(actions=tuple(actions), notes=tuple(notes))


def _approved(
    snapshot: TicketSnapshot,
    policy: Policy,
    *,
    policy_set: PolicySet,
    ledger: Sequence[LedgerGrant],
    mine: Sequence[LedgerGrant],
    now: datetime,
    load: Mapping[str, int],
) -> list[Grant | Revoke | Deny]:
    basis = _approval_basis(snapshot, policy)
    if basis is None:
        # Fail closed: without a verifiable approval nothing stays granted either.
        entry = _approval_entry(snapshot, policy)
        anchor = entry.history_id if entry is not None else f"status-{snapshot.status}"
        return [
            *_revoke_all(mine, "approval_withdrawn"),
            _deny(
                snapshot,
                policy,
                "approval_not_verified",
                "no approval record shows who approved this ticket",
                anchor,
            ),
        ]
    approval_ref, approved_at, approvers = basis
    requester = snapshot.requester

    def deny(rule: str, message: str) -> list[Grant | Revoke | Deny]:
        denial = _deny(snapshot, policy, rule, message, approval_ref)
        return [*_revoke_all(mine, "request_changed"), denial]

    rules = policy.approvers
    if not rules.allow_self_approval and any(a.same_person(requester) for a in approvers):
        return deny("self_approval", "the requester approved their own request")
    allowed = [a for a in approvers if _allowed(a, policy)]
    if not allowed:
        who = ", ".join(a.display or a.source_id for a in approvers)
        return deny("approver_not_allowed", f"{who} may not approve {policy.name}")
    if len(allowed) < rules.min_approvals:
        return deny(
            "insufficient_approvals",
            f"{len(allowed)} of {rules.min_approvals} required approvals",
        )
    if rules.sponsor_field:
        sponsor = _person_refs(snapshot.fields.get(rules.sponsor_field))
        if not sponsor:
            return deny("sponsor_missing", f"the sponsor field {rules.sponsor_field} is empty")
        if any(a.matches(ref) for a in approvers for ref in sponsor):
            return deny("sponsor_approved", "the sponsor may not also approve the request")
    if _edited_after(snapshot, policy, approval_ref):
        return deny("request_changed_after_approval",
                    "the request was edited after it was approved; approve it again")
    principal = _principal(snapshot, policy)
    if principal is None:
        return deny("principal_missing", "the ticket does not name who should get access")
    for item in policy.grants:
        problem = policy_set.targets[item.target].principal_problem(principal)
        if problem is not None:
            return deny("principal_invalid", problem)

    window = _window(snapshot, policy, approved_at)
    if isinstance(window, Deny):
        return [*_revoke_all(mine, "request_changed"), window]
    starts_at, expires_at, notes = window
    digest = _request_digest(snapshot, policy, principal, starts_at, expires_at)
    if any(g.approval_ref == approval_ref and g.request_digest not in (None, digest)
           for g in mine):
        # Approved small, edited large: what was approved is not what is asked now.
        return deny("request_changed_after_approval",
                    "the request was edited after it was approved; approve it again")
    # The principal or roles may have been edited since an earlier approval.
    desired = {(g.target, g.role, principal) for g in policy.grants}
    out: list[Grant | Revoke | Deny] = list(
        _revoke_all(
            [g for g in mine if (g.target, g.role, g.principal) not in desired], "request_changed"
        )
    )
    # Held now, or granted once for this very approval (then expired, failed or revoked
    # by hand): an approval is spent once, however often the ticket is re-read.
    settled = {(g.target, g.role, g.principal) for g in mine} | {
        (g.target, g.role, g.principal)
        for g in ledger
        if g.policy == policy.name and g.approval_ref == approval_ref
    }
    todo = [item for item in policy.grants if (item.target, item.role, principal) not in settled]
    if todo and expires_at <= now:
        out.append(_deny(snapshot, policy, "expired_before_grant",
                         "the approved window ended before it could be granted", approval_ref))
        return out
    limit = policy.max_grants_per_principal
    held_elsewhere = load.get(f"{policy.name}\x1f{principal}", 0)
    if todo and limit is not None and held_elsewhere + len(todo) > limit:
        out.append(_deny(snapshot, policy, "principal_limit_reached",
                         f"{principal} already holds {held_elsewhere} grant(s) of "
                         f"{policy.name} (limit {limit})", approval_ref))
        return out
    for item in todo:
        out.append(
            Grant(
                policy=policy.name,
                policy_digest=policy.digest,
                target=item.target,
                role=item.role,
                principal=principal,
                approval_ref=approval_ref,
                approver=allowed[0],
                approvers=tuple(allowed),
                requester=requester,
                starts_at=starts_at,
                expires_at=expires_at,
                request_digest=digest,
                notes=notes,
            )
        )
    return out


def candidate_principals(snapshot: TicketSnapshot, policy_set: PolicySet) -> set[tuple[str, str]]:
    """(policy, principal) pairs this ticket could be granted to, for the caller to
    count live grants held elsewhere (``principal_load``) before deciding."""
    out: set[tuple[str, str]] = set()
    for policy in policy_set.for_source(snapshot.ref.source):
        if policy.max_grants_per_principal is None or not policy.in_scope(snapshot):
            continue
        principal = _principal(snapshot, policy)
        if principal is not None:
            out.add((policy.name, principal))
    return out


def _edited_after(snapshot: TicketSnapshot, policy: Policy, approval_ref: str) -> bool:
    """A request field changed in a history entry after the approving one (Jira)."""
    entry = next((t for t in snapshot.transitions if t.history_id == approval_ref), None)
    if entry is None:
        return False
    fields = policy.request_fields
    mark = (entry.at, _order(entry.history_id))
    return any(
        c.field in fields and (c.at, _order(c.history_id)) > mark for c in snapshot.field_changes
    )


def _order(history_id: str) -> int:
    return int(history_id) if history_id.isdigit() else 0


def _window(
    snapshot: TicketSnapshot, policy: Policy, approved_at: datetime
) -> tuple[datetime, datetime, tuple[str, ...]] | Deny:
    """Start, expiry and the notes explaining any cut. The longest a grant may last is
    ``max_duration`` (else ``duration``); asking for more is cut, not refused."""
    cap = policy.max_duration or policy.duration
    notes: list[str] = []
    if snapshot.window is not None:
        # A scheduled window (change request): it starts when planned.
        starts_at, wanted_end = snapshot.window
    else:
        starts_at, wanted_end = approved_at, approved_at + policy.effective_duration
        if policy.duration_field and (raw := field_value(
                snapshot.fields.get(policy.duration_field))) is not None:
            try:
                asked = parse_duration(int(raw) * 3600 if raw.strip().isdigit() else raw)
            except ValueError:
                return _deny(snapshot, policy, "invalid_requested_duration",
                             f"cannot read the requested duration {raw[:40]!r}")
            wanted_end = starts_at + asked
        if policy.end_field and (raw := field_value(
                snapshot.fields.get(policy.end_field))) is not None:
            end = _parse_when(raw)
            if end is None:
                return _deny(snapshot, policy, "invalid_requested_end",
                             f"cannot read the requested end {raw[:40]!r}")
            wanted_end = end
    expires_at = wanted_end
    if expires_at - starts_at > cap:
        expires_at = starts_at + cap
        notes.append(f"the requested end {_iso(wanted_end)} was cut to {_iso(expires_at)} "
                     f"(policy {policy.name} allows at most {_span(cap)})")
    if policy.contract_end_field and (raw := field_value(
            snapshot.fields.get(policy.contract_end_field))) is not None:
        contract_end = _parse_when(raw)
        if contract_end is None:
            return _deny(snapshot, policy, "invalid_contract_end",
                         f"cannot read the contract end {raw[:40]!r}")
        if contract_end <= starts_at:
            return _deny(snapshot, policy, "contract_ended", "the contract has ended")
        if contract_end < expires_at:
            expires_at = contract_end
            notes.append(f"access ends with the contract on {_iso(contract_end)}")
    if expires_at <= starts_at:
        return _deny(snapshot, policy, "invalid_requested_end",
                     "the requested window ends before it starts")
    return starts_at, expires_at, tuple(notes)


def _parse_when(raw: str) -> datetime | None:
    """An ISO date or datetime; a bare date means the end of that day (UTC)."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if len(raw.strip()) == 10:  # YYYY-MM-DD
        value += timedelta(days=1)
    return value


def _request_digest(snapshot: TicketSnapshot, policy: Policy, principal: str,
                    starts_at: datetime, expires_at: datetime) -> str:
    body = {
        "policy": policy.name,
        "grants": sorted((g.target, g.role) for g in policy.grants),
        "principal": principal,
        "requester": snapshot.requester.source_id if snapshot.requester else None,
        "requested": sorted(
            (name, str(field_value(snapshot.fields.get(name))))
            for name in policy.request_fields if name in snapshot.fields
        ),
        "starts_at": _iso(starts_at),
        "expires_at": _iso(expires_at),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _person_refs(raw: Any) -> list[str]:
    """Ways a user field can name a person: ids, user names, emails."""
    if isinstance(raw, str):
        return [raw] if raw.strip() else []
    if isinstance(raw, dict):
        keys = ("accountId", "name", "key", "emailAddress", "value", "sys_id")
        return [str(raw[k]) for k in keys if isinstance(raw.get(k), str) and raw[k]]
    if isinstance(raw, list) and len(raw) == 1:
        return _person_refs(raw[0])
    return []


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _approval_entry(snapshot: TicketSnapshot, policy: Policy) -> StatusChange | None:
    """The history entry that moved the ticket into its current, approved status."""
    return next(
        (
            t
            for t in reversed(snapshot.transitions)
            if t.to_status == snapshot.status and policy.is_approved_status(t.to_status, t.to_name)
        ),
        None,
    )


def _approval_basis(
    snapshot: TicketSnapshot, policy: Policy
) -> tuple[str, datetime, list[Identity]] | None:
    """(approval reference, approval time, distinct approvers), from the source's own
    records: the status history entry into the approved status (Jira), or approval
    records (JSM approvals, ServiceNow ``sysapproval_approver``)."""
    decided = [a for a in snapshot.approvals if a.decision == "approved"]
    entry = _approval_entry(snapshot, policy)
    if entry is not None and entry.author is not None:
        return entry.history_id, entry.at, _distinct([entry.author] + [a.approver for a in decided])
    if snapshot.ref.source == "jira" or not decided:
        return None  # a Jira approval is the status change, and it names no one here
    times = [a.at for a in decided if a.at is not None]
    ref = "approvals:" + ",".join(sorted(a.approval_id for a in decided))
    approved_at = max(times) if times else snapshot.updated_at
    return ref, approved_at, _distinct([a.approver for a in decided])


def _allowed(person: Identity, policy: Policy) -> bool:
    rules = policy.approvers
    if any(person.matches(u) for u in rules.users):
        return True
    return bool(set(rules.groups) & set(person.groups))


def _principal(snapshot: TicketSnapshot, policy: Policy) -> str | None:
    rule = policy.principal
    requester = snapshot.requester
    if rule.from_ == "field":
        assert rule.field is not None
        value = field_value(snapshot.fields.get(rule.field))
        return value.strip() if value is not None and value.strip() else None
    if requester is None:
        return None
    if rule.from_ == "map":
        mapping = rule.map or {}
        for ref in (requester.source_id, requester.name, requester.email):
            if ref is not None and ref in mapping:
                return mapping[ref]
        return None
    if rule.from_ == "requester_email_local":
        if requester.email is None or "@" not in requester.email:
            return None
        return requester.email.split("@", 1)[0]
    return requester.name


def _distinct(people: list[Identity]) -> list[Identity]:
    out: list[Identity] = []
    for person in people:
        if not any(person.same_person(o) for o in out):
            out.append(person)
    return out


def _revoke_all(grants: Sequence[LedgerGrant], reason: RevokeReason) -> tuple[Revoke, ...]:
    return tuple(Revoke(grant_id=g.grant_id, reason=reason) for g in grants)


def _deny(
    snapshot: TicketSnapshot,
    policy: Policy | None,
    rule: str,
    message: str,
    approval_ref: str | None = None,
) -> Deny:
    name = policy.name if policy is not None else None
    anchor = approval_ref or str(snapshot.version)
    return Deny(
        policy=name,
        rule=rule,
        message=message,
        key=f"{snapshot.ref.uid}:{name or '-'}:{rule}:{anchor}",
    )


def _requested_text(snapshot: TicketSnapshot, policies: Sequence[Policy]) -> str:
    for policy in policies:
        if policy.match.requested is not None:
            value = field_value(snapshot.fields.get(policy.match.requested.field))
            if value is not None:
                return value[:80]
    return "(nothing)"
