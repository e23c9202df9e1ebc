"""The policy file model: which tickets grant which roles, approved by whom, for how long.

The names of this schema are a contract with users (``../shared/DESIGN.md``): fields
may be added, never renamed. Unknown keys are errors, so a typo in an access policy
cannot pass silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from connectors.base import TicketSnapshot, TicketState

__all__ = [
    "RESERVED_PRINCIPALS",
    "Approvers",
    "DriftRule",
    "Duration",
    "GrantItem",
    "Match",
    "Policy",
    "PolicyFile",
    "PrincipalRule",
    "RequestedMatch",
    "TargetSpec",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Names no ticket may ever be granted to, whatever a target's pattern allows.
RESERVED_PRINCIPALS = frozenset(
    {
        "postgres",
        "root",
        "admin",
        "administrator",
        "superuser",
        "public",
        "current_user",
        "current_role",
        "session_user",
        "jitgate",
        "mysql",
        "sa",
    }
)
_RESERVED_PREFIXES = ("pg_",)


def parse_duration(value: Any) -> timedelta:
    """``"8h"``, ``"30m"``, ``"2d"``, ``"1w"``, ``"90s"`` or seconds as an int."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError("a duration must be positive")
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 8h, 30m or 2d")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 8h, 30m or 2d")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > 100 * 365 * 86400:
        raise ValueError("a duration longer than 100 years is not a time limit")
    return timedelta(seconds=seconds)


def _format_duration(value: timedelta) -> str:
    return f"{int(value.total_seconds())}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str),
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TargetSpec(BaseModel):
    """A grant target. Keys beyond these belong to the target's own config model,
    which the worker validates against the connector registered for ``type``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(min_length=1)
    principal_pattern: str = r"^[a-z_][a-z0-9_]{1,62}$"
    reserved_principals: tuple[str, ...] = ()
    # On revoke, end the principal's live sessions where the target can (PostgreSQL,
    # MariaDB, Redis), once it holds nothing else there.
    terminate_sessions: bool = True

    @field_validator("principal_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The connector-specific keys, as written (``${VAR}`` already expanded)."""
        return dict(self.model_extra or {})

    def principal_problem(self, principal: str) -> str | None:
        """Why ``principal`` may not receive grants on this target, or None."""
        lowered = principal.casefold()
        if lowered in RESERVED_PRINCIPALS or lowered in {
            r.casefold() for r in self.reserved_principals
        }:
            return f"principal {principal!r} is a reserved name"
        if lowered.startswith(_RESERVED_PREFIXES):
            return f"principal {principal!r} uses a reserved prefix"
        if not re.fullmatch(self.principal_pattern, principal):
            return f"principal {principal!r} does not match {self.principal_pattern}"
        return None


def _as_list(value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (str(value),)
    return value


StrList = Annotated[tuple[str, ...], BeforeValidator(_as_list)]


class RequestedMatch(_Strict):
    field: str = Field(min_length=1)
    equals: str = Field(min_length=1)


class Match(_Strict):
    """Which tickets a policy is about. Every given key must match."""

    project: StrList = ()
    issue_type: StrList = ()
    table: StrList = ()
    cat_item: StrList = ()
    requested: RequestedMatch | None = None


class Approvers(_Strict):
    users: StrList = ()
    groups: StrList = ()
    min_approvals: int = Field(default=1, ge=1, le=20)
    allow_self_approval: bool = False
    # A ticket field naming the sponsor (a user): the sponsor may not also approve.
    sponsor_field: str | None = None

    @model_validator(mode="after")
    def _someone(self) -> Approvers:
        if not self.users and not self.groups:
            raise ValueError("name at least one approver in users or groups")
        return self


class PrincipalRule(_Strict):
    from_: Literal["field", "map", "requester_email_local", "requester_user_name"] = Field(
        alias="from"
    )
    field: str | None = None
    map: dict[str, str] | None = None

    @model_validator(mode="after")
    def _complete(self) -> PrincipalRule:
        if self.from_ == "field" and not self.field:
            raise ValueError("from: field needs 'field' (the ticket field holding the name)")
        if self.from_ == "map" and not self.map:
            raise ValueError("from: map needs 'map' (requester id, name or email → principal)")
        return self


class GrantItem(_Strict):
    target: str = Field(min_length=1)
    role: str = Field(min_length=1, max_length=63)

    @field_validator("role")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("role names must be printable (no control characters)")
        return value


class DriftRule(_Strict):
    """What target reconciliation does about differences on this policy's roles.

    ``enforce``: revoke members jitgate does not hold active (only names the target's
    principal pattern admits, so service accounts outside it are reported, never
    touched). ``missing``: a ledger-active grant absent on the target is re-applied or
    closed.
    """

    enforce: bool = False
    missing: Literal["reapply", "close"] = "reapply"


class Policy(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: Literal["jira", "servicenow"]
    match: Match = Match()
    approved_statuses: StrList = Field(min_length=1)
    closed_statuses: StrList = ()
    rejected_statuses: StrList = ()
    # ServiceNow: raw ``state`` values that mean closed for this policy's table,
    # replacing the source's defaults (RITM 3/4/7, change 0/3/4).
    closed_states: StrList = ()
    approvers: Approvers
    principal: PrincipalRule
    grants: tuple[GrantItem, ...] = Field(min_length=1)
    duration: Duration
    max_duration: Duration | None = None
    stale_after: Duration = timedelta(hours=72)
    drift: DriftRule = DriftRule()
    # Ticket fields a requester may use to ask for less (or, up to max_duration, more):
    # a duration ("4h", or a number of hours) or an end date; a contract end date field
    # caps every grant further.
    duration_field: str | None = None
    end_field: str | None = None
    contract_end_field: str | None = None
    # Concurrent live grants one principal may hold across all tickets of this policy.
    max_grants_per_principal: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _durations(self) -> Policy:
        if self.max_duration is not None and self.duration > self.max_duration:
            raise ValueError("duration is longer than max_duration")
        return self

    @property
    def digest(self) -> str:
        """Stable fingerprint of the policy as applied, recorded with every grant."""
        body = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()

    @property
    def request_fields(self) -> frozenset[str]:
        """Fields whose change after an approval voids it (plus the requester)."""
        names = {
            self.match.requested.field if self.match.requested else None,
            self.principal.field if self.principal.from_ == "field" else None,
            self.duration_field,
            self.end_field,
            self.contract_end_field,
            self.approvers.sponsor_field,
            "reporter",
            "requested_for",
            "requested_by",
        }
        return frozenset(n for n in names if n)

    @property
    def effective_duration(self) -> timedelta:
        if self.max_duration is None:
            return self.duration
        return min(self.duration, self.max_duration)

    def covers(self, source: str, project: str | None, issue_type: str | None) -> bool:
        """Source, project (ServiceNow: table) and issue type match. ``None`` means
        unknown (a payload without it) and is not held against the ticket."""
        if source != self.source:
            return False
        m = self.match
        if project is not None:
            if m.project and not _named(project, m.project):
                return False
            if m.table and not _named(project, m.table):
                return False
        return issue_type is None or not m.issue_type or _named(issue_type, m.issue_type)

    def in_scope(self, snapshot: TicketSnapshot) -> bool:
        """The ticket is one this policy is about, whatever access it requests."""
        m = self.match
        if not self.covers(snapshot.ref.source, snapshot.project, snapshot.issue_type):
            return False
        if (m.project or m.table) and snapshot.project is None:
            return False
        if m.issue_type and snapshot.issue_type is None:
            return False
        if m.cat_item:
            # by sys_id or by the catalog item's name
            item = _field_value(snapshot.fields.get("cat_item"))
            name = _field_value(snapshot.fields.get("cat_item_name"))
            if not (_named(item, m.cat_item) or _named(name, m.cat_item)):
                return False
        return True

    def requests_this(self, snapshot: TicketSnapshot) -> bool:
        requested = self.match.requested
        if requested is None:
            return True
        value = _field_value(snapshot.fields.get(requested.field))
        return value is not None and value.casefold() == requested.equals.casefold()

    def state_of(self, snapshot: TicketSnapshot) -> TicketState:
        """The ticket's state under this policy's status mapping."""
        if snapshot.state == "deleted":
            return "deleted"
        # The source says it is over, whatever the status lists say; a policy's own
        # closed_states replace the source's idea of which states close a ticket.
        final = {"rejected"} if self.closed_states else {"closed", "rejected"}
        if self.closed_states and _field_value(snapshot.fields.get("state")) in self.closed_states:
            return "closed"
        if snapshot.final and snapshot.state in final:
            return snapshot.state
        if _status_in(snapshot, self.rejected_statuses):
            return "rejected"
        if _status_in(snapshot, self.closed_statuses):
            return "closed"
        if _status_in(snapshot, self.approved_statuses):
            return "approved"
        if snapshot.state in {"closed", "rejected"}:
            return snapshot.state
        return "open"

    def is_approved_status(self, status_id: str, status_name: str | None) -> bool:
        return _named(status_id, self.approved_statuses) or _named(
            status_name, self.approved_statuses
        )


def _named(value: str | None, names: tuple[str, ...]) -> bool:
    if value is None:
        return False
    folded = value.casefold()
    return any(folded == n.casefold() for n in names)


def _status_in(snapshot: TicketSnapshot, names: tuple[str, ...]) -> bool:
    return _named(snapshot.status, names) or _named(snapshot.status_name, names)


def _field_value(raw: Any) -> str | None:
    """A ticket field as text: option objects (``{"value": ...}``), references
    (``{"value": sys_id}``), one-element lists and plain scalars."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return _field_value(raw[0]) if len(raw) == 1 else None
    if isinstance(raw, dict):
        for key in ("value", "name", "key", "id"):
            if isinstance(raw.get(key), str | int):
                return str(raw[key])
        return None
    if isinstance(raw, str | int | float):
        return str(raw)
    return None


class PolicyFile(_Strict):
    version: Literal[1]
    targets: dict[str, TargetSpec] = Field(default_factory=dict)
    policies: tuple[Policy, ...] = ()


field_value = _field_value
