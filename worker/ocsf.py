"""Audit events as OCSF records (Identity & Access Management category).

Grants and revocations map to class 3005 *User Access Management* (activity 1 Assign
Privileges, 2 Revoke Privileges); a denial or failure is an Assign Privileges attempt
with a failure status; drift findings are activity 99 (Other). The jitgate event itself
travels in ``unmapped`` so nothing is lost in translation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["to_ocsf"]

_CLASS_UID = 3005
_CATEGORY_UID = 3
_ACTIVITY = {
    "grant.issued": (1, "Assign Privileges", 1),
    "grant.extended": (1, "Assign Privileges", 1),
    "grant.denied": (1, "Assign Privileges", 2),
    "grant.failed": (1, "Assign Privileges", 2),
    "grant.revoked": (2, "Revoke Privileges", 1),
    "grant.revoke_failed": (2, "Revoke Privileges", 2),
}


def to_ocsf(event: dict[str, Any]) -> dict[str, Any]:
    activity_id, activity, status_id = _ACTIVITY.get(event["event"], (99, "Other", 1))
    when = datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00"))
    ticket = event.get("ticket") or {}
    approver = event.get("approver") or {}
    record: dict[str, Any] = {
        "class_uid": _CLASS_UID,
        "class_name": "User Access Management",
        "category_uid": _CATEGORY_UID,
        "category_name": "Identity & Access Management",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": _CLASS_UID * 100 + activity_id,
        "severity_id": 1 if status_id == 1 else 3,
        "status_id": status_id,
        "status": "Success" if status_id == 1 else "Failure",
        "time": int(when.timestamp() * 1000),
        "message": event["event"],
        "metadata": {
            "version": "1.1.0",
            "uid": event.get("event_key"),
            "sequence": event.get("seq"),
            "product": {"name": "jitgate", "vendor_name": "jitgate"},
            "correlation_uid": event.get("delivery_id"),
        },
        "user": {"name": event.get("principal")} if event.get("principal") else None,
        "privileges": [event["role"]] if event.get("role") else [],
        "resource": {"name": event.get("target"), "type": "target"} if event.get("target")
        else None,
        "actor": {"user": {"uid": approver.get("id"), "name": approver.get("display")}}
        if approver else None,
        "status_detail": event.get("reason"),
        "unmapped": {
            "ticket": ticket,
            "grant_id": event.get("grant_id"),
            "policy": event.get("policy"),
            "expires_at": event.get("expires_at"),
            "hash": event.get("hash"),
            "prev_hash": event.get("prev_hash"),
        },
    }
    return {k: v for k, v in record.items() if v is not None}
