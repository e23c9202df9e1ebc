"""``jitgate explain``: what the policies make of a ticket, changing nothing.

It re-reads the ticket like the worker, runs the same pure ``decide`` against the
ledger as it is, and reports which policy matches, who may approve, what would be
granted and for how long, or which rule refuses and why.
"""

from __future__ import annotations

from typing import Any

from connectors.base import TicketSnapshot
from policies.engine import Deny, Grant, Revoke, candidate_principals, decide
from worker.ledger import store
from worker.runtime import Runtime

__all__ = ["explain", "render"]


def explain(rt: Runtime, snapshot: TicketSnapshot) -> dict[str, Any]:
    ledger = rt.ledger
    with ledger.tx() as conn:
        now = ledger.now(conn)
        held = store.ticket_grants(conn, snapshot.ref.uid)
        load = store.principal_load(conn, candidate_principals(snapshot, rt.policies),
                                    ticket_uid=snapshot.ref.uid)
    decision = decide(snapshot, held, rt.policies, now, principal_load=load)
    policies = []
    for policy in rt.policies.for_source(snapshot.ref.source):
        in_scope = policy.in_scope(snapshot)
        rules = policy.approvers
        policies.append({
            "policy": policy.name,
            "in_scope": in_scope,
            "requests_this": in_scope and policy.requests_this(snapshot),
            "state": policy.state_of(snapshot) if in_scope else None,
            "approvers": {"users": list(rules.users), "groups": list(rules.groups),
                          "min_approvals": rules.min_approvals,
                          "self_approval": rules.allow_self_approval},
            "duration": str(policy.effective_duration),
            "max_duration": str(policy.max_duration) if policy.max_duration else None,
        })
    return {
        "ticket": {"source": snapshot.ref.source, "id": snapshot.ref.id, "key": snapshot.ref.key,
                   "status": snapshot.status, "status_name": snapshot.status_name,
                   "version": snapshot.version},
        "policies": policies,
        "actions": [_action(a) for a in decision.actions],
        "ignored": decision.ignored,
        "notes": list(decision.notes),
        "held": [{"grant_id": g.grant_id, "policy": g.policy, "target": g.target,
                  "role": g.role, "principal": g.principal, "state": g.state} for g in held],
    }


def _action(action: Grant | Revoke | Deny) -> dict[str, Any]:
    if isinstance(action, Grant):
        return {"kind": "grant", "policy": action.policy, "target": action.target,
                "role": action.role, "principal": action.principal,
                "approver": action.approver.display or action.approver.source_id,
                "starts_at": action.starts_at.isoformat(),
                "expires_at": action.expires_at.isoformat(), "notes": list(action.notes)}
    if isinstance(action, Revoke):
        return {"kind": "revoke", "grant_id": action.grant_id, "reason": action.reason}
    return {"kind": "deny", "policy": action.policy, "rule": action.rule,
            "message": action.message}


def render(report: dict[str, Any]) -> str:
    t = report["ticket"]
    lines = [f"ticket {t['key']} ({t['source']}:{t['id']}), status {t['status_name']} "
             f"({t['status']}), version {t['version']}"]
    for p in report["policies"]:
        if not p["in_scope"]:
            lines.append(f"policy {p['policy']}: not about this ticket (source/project/type)")
            continue
        if not p["requests_this"]:
            lines.append(f"policy {p['policy']}: in scope, but the ticket asks for other access")
            continue
        a = p["approvers"]
        who = ", ".join([*a["users"], *(f"group {g}" for g in a["groups"])]) or "nobody"
        lines.append(f"policy {p['policy']}: matches; the ticket is {p['state']} under it")
        lines.append(f"  may approve: {who}; at least {a['min_approvals']}; self-approval "
                     f"{'allowed' if a['self_approval'] else 'refused'}; grants last "
                     f"{p['duration']}" + (f" (at most {p['max_duration']})"
                                           if p["max_duration"] else ""))
    for action in report["actions"]:
        if action["kind"] == "grant":
            lines.append(f"→ would grant {action['role']} on {action['target']} to "
                         f"{action['principal']} (approved by {action['approver']}) from "
                         f"{action['starts_at']} until {action['expires_at']}")
            lines.extend(f"  note: {n}" for n in action["notes"])
        elif action["kind"] == "revoke":
            lines.append(f"→ would revoke grant {action['grant_id']} ({action['reason']})")
        else:
            lines.append(f"→ would deny ({action['rule']}): {action['message']}")
    if report["ignored"]:
        lines.append(f"→ nothing to do: {report['ignored']}")
    elif not report["actions"]:
        lines.append("→ nothing to do" + (f": {'; '.join(report['notes'])}"
                                         if report["notes"] else " (the ledger already agrees)"))
    return "\n".join(lines)
