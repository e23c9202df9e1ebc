"""Value types and protocols shared by every connector and by the policy engine.

This module is the bottom of the import graph (``worker`` → ``policies`` →
``connectors.base``): it imports nothing of ours and performs no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # errors is a leaf module too; the import is for annotations only
    from connectors.errors import ConnectorError

__all__ = [
    "Approval",
    "BatchRevoker",
    "BatchSessionTerminator",
    "FieldChange",
    "Identity",
    "Outcome",
    "SessionTerminator",
    "SourceConnector",
    "StatusChange",
    "TargetConnector",
    "TicketRef",
    "TicketSnapshot",
    "TicketState",
]

TicketState = Literal["open", "approved", "rejected", "closed", "deleted"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TicketRef(_Frozen):
    """Where a ticket lives. ``id`` is the stable key (Jira issue id, ServiceNow sys_id);
    ``key`` is the human one (``OPS-12``) and can change when an issue moves."""

    source: str
    id: str
    key: str
    url: str | None = None

    @property
    def uid(self) -> str:
        """Ledger key of the ticket: stable across key renames."""
        return f"{self.source}:{self.id}"


class Identity(_Frozen):
    """A person as the source knows them. ``source_id`` is the stable id (Jira Cloud
    accountId, Jira DC user key, ServiceNow sys_id); email may be hidden by privacy
    settings, so nothing may depend on it being present."""

    source_id: str
    name: str | None = None
    email: str | None = None
    display: str | None = None
    groups: tuple[str, ...] = ()

    def matches(self, ref: str) -> bool:
        """True when ``ref`` (an id, user name or email from a policy) names this person."""
        wanted = ref.strip()
        if not wanted:
            return False
        if wanted == self.source_id or (self.name is not None and wanted == self.name):
            return True
        return self.email is not None and wanted.casefold() == self.email.casefold()

    def same_person(self, other: Identity | None) -> bool:
        if other is None:
            return False
        if self.source_id == other.source_id:
            return True
        return self.email is not None and other.email is not None and (
            self.email.casefold() == other.email.casefold()
        )


class StatusChange(_Frozen):
    """One history entry that changed the ticket's status, read back from the source."""

    history_id: str
    author: Identity | None
    at: AwareDatetime
    from_status: str | None
    to_status: str
    to_name: str | None = None


class FieldChange(_Frozen):
    """A history entry that changed a field other than the status (Jira changelog):
    how an edit made after an approval is recognised."""

    history_id: str
    field: str
    at: AwareDatetime


class Approval(_Frozen):
    """An explicit approval decision recorded by the source (JSM approvals,
    ServiceNow ``sysapproval_approver``), never taken from a webhook's actor."""

    approval_id: str
    approver: Identity
    decision: Literal["approved", "rejected", "pending"]
    at: AwareDatetime | None = None


class TicketSnapshot(_Frozen):
    """The ticket as the source reports it now, normalized.

    ``status`` is the raw status id (names are localized and renamable); ``state`` is
    the source's own coarse reading (Jira status category done → closed), which a
    policy refines through its ``approved_statuses``/``closed_statuses``.
    ``version`` orders snapshots of one ticket (Jira: the newest changelog id;
    ServiceNow: ``sys_mod_count``). ``final`` means the source itself says the ticket
    is finished (ServiceNow closed states) whatever a policy's status lists say;
    ``window`` is a scheduled access window the ticket carries (ServiceNow change
    request ``start_date``/``end_date``).
    """

    ref: TicketRef
    status: str
    status_name: str | None = None
    state: TicketState
    version: int
    updated_at: AwareDatetime
    project: str | None = None
    issue_type: str | None = None
    requester: Identity | None = None
    transitions: tuple[StatusChange, ...] = ()
    field_changes: tuple[FieldChange, ...] = ()
    approvals: tuple[Approval, ...] = ()
    fields: Mapping[str, Any] = Field(default_factory=dict)
    summary: str | None = None
    final: bool = False
    window: tuple[AwareDatetime, AwareDatetime] | None = None


class Outcome(enum.StrEnum):
    """What a target call did. Anything but APPLIED means no change was needed."""

    APPLIED = "applied"
    ALREADY_PRESENT = "already_present"
    ALREADY_ABSENT = "already_absent"


@runtime_checkable
class SourceConnector(Protocol):
    """A ticket system: the truth about requests and approvals."""

    kind: ClassVar[str]

    def fetch(self, ticket_id: str) -> TicketSnapshot:
        """Re-read the ticket with its status history. Raises ``TicketNotFound`` when
        the ticket no longer exists."""
        ...

    def comment(self, ref: TicketRef, body: str, *, marker: str, first_try: bool = False,
                ) -> bool:
        """Post ``body`` unless a comment carrying ``marker`` exists. Returns True when
        a comment was posted. ``first_try`` says no earlier attempt can have posted it
        (the ledger's claim proves that), so the lookup for the marker may be skipped."""
        ...

    def check(self) -> None:
        """Raise ``TransientError`` when the source cannot be reached."""
        ...


@runtime_checkable
class TargetConnector(Protocol):
    """A system where roles are granted: the plugin interface for targets.

    A target package registers its class under the ``jitgate.targets`` entry-point
    group. ``from_options`` validates the target's own keys of a policy file (with a
    pydantic model, secrets as ``SecretStr``) and must not do I/O; connections open
    on first use. Calls are idempotent ("ensure present", "ensure absent"): granting a
    held role answers ``ALREADY_PRESENT``, revoking an absent one ``ALREADY_ABSENT``.
    They raise ``TransientError`` (retry later) or ``PermanentError`` only, with
    messages that never contain a secret.
    """

    kind: ClassVar[str]

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> TargetConnector:
        """Build from a policy file's target entry (``type`` etc. already removed)."""
        ...

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        """Make ``principal`` a member of ``role``. ``expires_at`` is the latest expiry
        of the principal's grants on this target, for targets that enforce it too."""
        ...

    def revoke(self, *, principal: str, role: str) -> Outcome: ...

    def members(self, *, role: str) -> frozenset[str]:
        """Current members of ``role`` (drift detection)."""
        ...

    def check(self) -> None:
        """Raise ``TransientError`` when the target cannot be reached (readiness)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SessionTerminator(Protocol):
    """Optional: a target that can end a principal's live sessions, so a revoked role
    cannot be kept alive by a connection opened before the revocation."""

    def terminate_sessions(self, *, principal: str) -> int:
        """End every session of ``principal``; returns how many were ended."""
        ...


@runtime_checkable
class BatchRevoker(Protocol):
    """Optional: a target that revokes many memberships in a few round trips. Mass
    expiry (thousands of grants ending at one instant) is where jitgate must be fast;
    targets without it are called once per grant."""

    def revoke_many(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[Outcome | ConnectorError]:
        """Revoke each ``(principal, role)``; one result per pair, in order. A pair's
        failure is returned as its ``TransientError``/``PermanentError``, never raised, so
        one bad pair cannot hold back the others."""
        ...


@runtime_checkable
class BatchSessionTerminator(Protocol):
    """Optional companion of ``SessionTerminator`` for mass revocation."""

    def terminate_sessions_many(self, principals: Sequence[str]) -> dict[str, int]:
        """End every session of each principal; returns how many were ended per name."""
        ...
