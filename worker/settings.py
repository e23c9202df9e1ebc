"""One settings object, read from ``JITGATE_*`` variables, built once per process.

Secrets may also come from files: ``JITGATE_JIRA_TOKEN_FILE=/run/secrets/jira`` sets
``jira_token`` (mounted files leak less than environment variables). Setting both a
variable and its ``_FILE`` twin is an error, so the winner is never a surprise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_QUEUE", "FILE_FIELDS", "SECRET_FIELDS", "Settings", "SettingsError"]

SECRET_FIELDS = (
    "jira_token",
    "jira_webhook_secret",
    "jira_webhook_secret_previous",
    "servicenow_password",
    "servicenow_webhook_secret",
    "servicenow_webhook_secret_previous",
    "servicenow_webhook_password",
    # The path of a Slack incoming-webhook URL is its credential.
    "notify_webhook_url",
)

# Connection URLs carry the database's and the broker's passwords: they have ``_FILE``
# twins too and stay out of repr, but are plain strings (every client library takes one).
URL_FIELDS = ("database_url", "broker_url")
FILE_FIELDS = (*SECRET_FIELDS, *URL_FIELDS)

_PREFIX = "JITGATE_"
DEFAULT_QUEUE = "jitgate"
# A name both brokers take as is: a Redis key and a RabbitMQ queue and exchange name.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_EXAMPLES = Path(__file__).resolve().parent.parent / "policies" / "examples"


class SettingsError(ValueError):
    """Configuration that cannot work; the message names the variable."""


class Settings(BaseSettings):
    """Everything configurable. Defaults run a single-machine install with embedded
    Redis and a SQLite ledger (``jitgate up``)."""

    # hide_input_in_errors: a validation error must never echo a secret it was given.
    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    data_dir: Path = Path(".jitgate")
    broker_url: str | None = Field(default=None, repr=False)
    database_url: str | None = Field(default=None, repr=False)
    policy_path: Path = _EXAMPLES

    # Per-source token bucket on the listener: a flood on one source gets 429 (which
    # Jira retries) without starving the other source.
    rate_limit_per_source: float = Field(default=100.0, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    # Delivery ids are remembered this long for dedupe (well past Jira's ~30 min of
    # retries); a replay after that is harmless: the re-read decides.
    dedupe_retention: float = Field(default=7 * 86400.0, gt=0)
    # Approver group memberships are cached this long (seconds).
    group_cache_ttl: float = Field(default=60.0, ge=0)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    jira_url: str | None = None
    jira_user: str | None = None
    jira_token: SecretStr | None = None
    jira_webhook_secret: SecretStr | None = None
    # Accepted too while a rotated secret propagates (Jira shows a secret only once).
    jira_webhook_secret_previous: SecretStr | None = None

    servicenow_url: str | None = None
    servicenow_user: str | None = None
    servicenow_password: SecretStr | None = None
    servicenow_webhook_secret: SecretStr | None = None
    servicenow_webhook_secret_previous: SecretStr | None = None
    # Signed timestamps older (or newer) than this are replays or broken clocks: 401.
    servicenow_webhook_tolerance: float = Field(default=300.0, gt=0)
    # For senders that cannot run the signing script: HTTP Basic instead of a signature.
    servicenow_webhook_user: str | None = None
    servicenow_webhook_password: SecretStr | None = None

    # Celery. Every time limit stays below the visibility timeout, or Redis redelivers
    # a task that is still running.
    visibility_timeout: int = Field(default=900, ge=10)
    task_soft_time_limit: int = Field(default=120, ge=1)
    task_time_limit: int = Field(default=180, ge=2)
    worker_concurrency: int = Field(default=2, ge=1)
    # The queue (and, on RabbitMQ, the exchange) every process of one installation
    # publishes to and consumes from: web, workers and beat must agree. Two installations
    # may share one broker (vhost, Redis DB) with different names.
    queue: str = DEFAULT_QUEUE

    sweep_interval: float = Field(default=15.0, gt=0)
    poll_interval: float = Field(default=120.0, gt=0)
    drift_interval: float = Field(default=300.0, gt=0)
    # A grant left pending/revoking this long (worker killed, broker flushed) is re-driven.
    stuck_after: float = Field(default=60.0, gt=0)
    # Target retries: base · 2^attempt with jitter, capped. Revocations retry forever and
    # are flagged revoke_failed after revoke_alert_after attempts.
    retry_base_delay: float = Field(default=1.0, gt=0)
    revoke_retry_max_backoff: float = Field(default=300.0, gt=0)
    revoke_alert_after: int = Field(default=5, ge=1)

    # Counters and histograms of every process (web, each prefork worker child) are
    # written here by prometheus_client's multiprocess mode and summed by /metrics, so
    # the web and the workers must share it. Default: <data_dir>/metrics.
    metrics_dir: Path | None = None

    # Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat); unset: no
    # notifications. Delivered by a Celery task, so a slow or dead receiver never holds
    # up a grant or a revocation.
    notify_webhook_url: SecretStr | None = None
    # Comma lists. Events are audit event names; targets and policies narrow events that
    # carry that field (empty: all).
    notify_events: str = (
        "grant.revoke_failed,drift.detected,grant.issued,grant.revoked,grant.denied"
    )
    notify_targets: str = ""
    notify_policies: str = ""
    # Transient failures (connection errors, 5xx, 429) are retried up to this many
    # attempts in all; a 4xx is not retried.
    notify_max_attempts: int = Field(default=5, ge=1, le=20)
    notify_timeout: float = Field(default=10.0, gt=0, le=60)

    # Fault injection for the test suite only (see worker/faults.py); unset in production.
    crash_dir: Path | None = None

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in FILE_FIELDS:
            file_var = f"{_PREFIX}{name.upper()}_FILE"
            path = os.environ.get(file_var)  # noqa: TID251 - the settings boundary itself
            if not path:
                continue
            if data.get(name) is not None:
                raise SettingsError(f"set {_PREFIX}{name.upper()} or {file_var}, not both")
            try:
                data[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(f"{file_var}: cannot read {path}: {exc.strerror}") from None
        return data

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not _QUEUE_NAME.fullmatch(value) or value.startswith("amq."):
            raise SettingsError(
                f"{_PREFIX}QUEUE must be 1-100 letters, digits, '_', '.' or '-', starting "
                "with a letter or digit, and not 'amq.' (reserved by RabbitMQ)"
            )
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if not self.task_soft_time_limit < self.task_time_limit < self.visibility_timeout:
            raise SettingsError(
                "need JITGATE_TASK_SOFT_TIME_LIMIT < JITGATE_TASK_TIME_LIMIT "
                "< JITGATE_VISIBILITY_TIMEOUT"
            )
        return self

    @property
    def ledger_url(self) -> str:
        """The SQLAlchemy URL of the ledger; SQLite in the data folder by default."""
        if self.database_url:
            return _sqlalchemy_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"

    @property
    def metrics_path(self) -> Path:
        """Where the processes' metric files live (``JITGATE_METRICS_DIR``)."""
        return (self.metrics_dir or self.data_dir / "metrics").resolve()

    def jira_secrets(self) -> tuple[bytes, ...]:
        return _secrets(self.jira_webhook_secret, self.jira_webhook_secret_previous)

    def servicenow_secrets(self) -> tuple[bytes, ...]:
        return _secrets(self.servicenow_webhook_secret, self.servicenow_webhook_secret_previous)

    def servicenow_basic_auth(self) -> tuple[str, bytes] | None:
        password = _secrets(self.servicenow_webhook_password)
        if self.servicenow_webhook_user and password:
            return self.servicenow_webhook_user, password[0]
        return None


def _secrets(*values: SecretStr | None) -> tuple[bytes, ...]:
    return tuple(v.get_secret_value().encode() for v in values if v and v.get_secret_value())


def _sqlalchemy_url(url: str) -> str:
    # Users write libpq URLs; SQLAlchemy needs to be told to use psycopg 3.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
