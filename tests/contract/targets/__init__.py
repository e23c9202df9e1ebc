"""Per-target harnesses for the shared target contract suite.

Each module ``<kind>.py`` provides ``harness(request, token) -> Harness`` (a pytest
fixture body): a real server of that kind, a configured target instance, and direct
ways to create roles and principals and to look at memberships without going through
the connector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.base import TargetConnector


@dataclass
class Harness:
    kind: str
    target: TargetConnector
    make_role: Callable[[str], str]
    make_principal: Callable[[str], str]
    is_member: Callable[[str, str], bool]
    # Give a membership behind the connector's back (drift, "already present").
    add_member: Callable[[str, str], None]
    # Open a live session as the principal; returns a probe that is True while it works.
    open_session: Callable[[str], Callable[[], bool]] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)
