"""What a process needs to act: settings, ledger, policies, connectors.

Built once per process from the ``Settings`` object the entry point created. Nothing
connects at import time; connectors connect on first use, after a fork.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from connectors.base import Identity, SourceConnector, TargetConnector
from connectors.errors import SourceNotConfigured
from policies.loader import PolicySet, load_policies
from worker.ledger.db import Ledger
from worker.settings import Settings

__all__ = ["ConfigError", "Runtime", "target_validators"]

class ConfigError(RuntimeError):
    """The configuration cannot work; the message says what to change."""


def _target_classes() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group="jitgate.targets"):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"target plugin {ep.name!r} ({ep.value}) failed to load: "
                f"{exc.__class__.__name__}"
            ) from exc
    return found


def target_validators() -> dict[str, Any]:
    """``type`` → validator of that target's options, for the policy loader.
    ``from_options`` validates with the connector's config model and does no I/O."""
    return {
        name: (lambda target, options, _cls=cls: _cls.from_options(target, dict(options)))
        for name, cls in _target_classes().items()
    }


@dataclass
class Runtime:
    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))  # noqa: TID251
    _targets: dict[str, TargetConnector] = field(default_factory=dict)
    _sources: dict[str, SourceConnector] = field(default_factory=dict)
    # (source, person id) → (monotonic expiry, group ids): approver groups, briefly cached
    _groups: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = field(default_factory=dict)

    def groups_of(self, kind: str, person: Identity) -> tuple[str, ...]:
        """Group ids of an approver, through the source's API, cached briefly (an
        approval burst does not become a burst of directory calls)."""
        key = (kind, person.source_id)
        cached = self._groups.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        lookup = getattr(self.source(kind), "user_groups", None)
        groups: tuple[str, ...] = tuple(lookup(person)) if lookup is not None else ()
        self._groups[key] = (now + self.settings.group_cache_ttl, groups)
        return groups

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger.from_url(self.settings.ledger_url)

    @cached_property
    def policies(self) -> PolicySet:
        return load_policies(
            self.settings.policy_path, env=self.env, target_validators=target_validators()
        )

    @property
    def stuck_after(self) -> timedelta:
        return timedelta(seconds=self.settings.stuck_after)

    def target(self, name: str) -> TargetConnector:
        if name not in self._targets:
            spec = self.policies.targets.get(name)
            if spec is None:
                raise ConfigError(f"target {name!r} is not defined in the policy files")
            classes = _target_classes()
            if spec.type not in classes:
                raise ConfigError(f"target {name!r}: unknown type {spec.type!r}")
            try:
                self._targets[name] = classes[spec.type].from_options(name, spec.options)
            except ValidationError as exc:
                raise ConfigError(f"target {name!r}: invalid options ({exc.error_count()} errors)")\
                    from None
        return self._targets[name]

    def configured_sources(self) -> list[str]:
        s = self.settings
        return [k for k, url in (("jira", s.jira_url), ("servicenow", s.servicenow_url)) if url]

    def source(self, kind: str) -> SourceConnector:
        if kind not in self._sources:
            self._sources[kind] = self._build_source(kind)
        return self._sources[kind]

    def _build_source(self, kind: str) -> SourceConnector:
        s = self.settings
        if kind == "jira":
            if not s.jira_url:
                raise SourceNotConfigured("JITGATE_JIRA_URL is not set")
            from connectors.jira import JiraSource  # noqa: PLC0415 - only when configured

            return JiraSource(url=s.jira_url, user=s.jira_user, token=s.jira_token)
        if kind == "servicenow":
            if not s.servicenow_url:
                raise SourceNotConfigured("JITGATE_SERVICENOW_URL is not set")
            from connectors.servicenow import ServiceNowSource  # noqa: PLC0415

            return ServiceNowSource(url=s.servicenow_url, user=s.servicenow_user,
                                    password=s.servicenow_password)
        raise SourceNotConfigured(f"no connector for source {kind!r}")

    def close(self) -> None:
        for target in self._targets.values():
            close = getattr(target, "close", None)
            if callable(close):
                close()
        if "ledger" in self.__dict__:
            self.ledger.dispose()
