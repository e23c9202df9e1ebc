"""``worker.settings.Settings``: defaults, ``JITGATE_*`` variables, ``*_FILE`` secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from worker.settings import SECRET_FIELDS, Settings, SettingsError, _sqlalchemy_url

REPO = Path(__file__).resolve().parents[3]


def test_defaults_run_on_one_machine(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8080
    assert settings.database_url is None
    assert settings.broker_url is None
    # the conftest runs every test in tmp_path, so the relative data dir lands there
    expected = (tmp_path / ".jitgate" / "ledger.sqlite3").resolve()
    assert settings.ledger_url == f"sqlite:///{expected}"
    assert settings.policy_path == REPO / "policies" / "examples"
    assert (settings.policy_path / "warehouse.yaml").is_file()
    for name in SECRET_FIELDS:
        assert getattr(settings, name) is None
    assert settings.jira_secrets() == ()


def test_ledger_follows_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JITGATE_DATA_DIR", str(tmp_path / "state"))
    settings = Settings()
    assert settings.data_dir == tmp_path / "state"
    assert settings.ledger_url == f"sqlite:///{(tmp_path / 'state' / 'ledger.sqlite3').resolve()}"


def test_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("JITGATE_HTTP_PORT", "9090")
    monkeypatch.setenv("JITGATE_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("JITGATE_POLICY_PATH", "/etc/jitgate/policies")
    monkeypatch.setenv("JITGATE_JIRA_URL", "https://acme.atlassian.net")
    monkeypatch.setenv("JITGATE_JIRA_USER", "bot@acme.test")
    monkeypatch.setenv("JITGATE_JIRA_TOKEN", "tok-123")
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", "whsec")
    monkeypatch.setenv("JITGATE_SERVICENOW_PASSWORD", "snpw")
    settings = Settings()
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == 9090
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.policy_path == Path("/etc/jitgate/policies")
    assert settings.jira_url == "https://acme.atlassian.net"
    assert settings.jira_user == "bot@acme.test"
    assert isinstance(settings.jira_token, SecretStr)
    assert settings.jira_token.get_secret_value() == "tok-123"
    assert settings.servicenow_password is not None
    assert settings.servicenow_password.get_secret_value() == "snpw"
    assert settings.jira_secrets() == (b"whsec",)


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PORT", "9999")
    monkeypatch.setenv("JIRA_TOKEN", "leaked")
    settings = Settings()
    assert settings.http_port == 8080
    assert settings.jira_token is None


def test_invalid_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_HTTP_PORT", "70000")
    with pytest.raises(ValueError, match="http_port"):
        Settings()


def test_secret_file_is_read_and_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "jira-token"
    secret.write_text("  s3cr3t-token \n\n", encoding="utf-8")
    monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(secret))
    settings = Settings()
    assert settings.jira_token is not None
    assert settings.jira_token.get_secret_value() == "s3cr3t-token"


def test_rotation_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "new").write_text("new-secret\n", encoding="utf-8")
    (tmp_path / "old").write_text("old-secret\n", encoding="utf-8")
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET_FILE", str(tmp_path / "new"))
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET_PREVIOUS_FILE", str(tmp_path / "old"))
    assert Settings().jira_secrets() == (b"new-secret", b"old-secret")


def test_variable_and_file_together_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "jira-token"
    secret.write_text("from-file", encoding="utf-8")
    monkeypatch.setenv("JITGATE_JIRA_TOKEN", "from-env")
    monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(secret))
    with pytest.raises(ValueError) as info:
        Settings()
    message = str(info.value)
    assert "JITGATE_JIRA_TOKEN " in message or "JITGATE_JIRA_TOKEN or" in message
    assert "JITGATE_JIRA_TOKEN_FILE" in message
    # neither value is echoed (pydantic would show input_value without hide_input_in_errors)
    assert "from-env" not in message
    assert "from-file" not in message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_secret_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "nope" if kind == "missing" else tmp_path
    monkeypatch.setenv("JITGATE_SERVICENOW_PASSWORD_FILE", str(path))
    with pytest.raises(ValueError) as info:
        Settings()
    assert "JITGATE_SERVICENOW_PASSWORD_FILE" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/ledger", "postgresql+psycopg://u:p@db:5432/ledger"),
        ("postgresql://u:p@db:5432/ledger", "postgresql+psycopg://u:p@db:5432/ledger"),
        ("postgresql://postgres@/l?host=/run/pg", "postgresql+psycopg://postgres@/l?host=/run/pg"),
        ("postgresql+psycopg://u@db/ledger", "postgresql+psycopg://u@db/ledger"),
        ("sqlite:////var/lib/jitgate/ledger.sqlite3", "sqlite:////var/lib/jitgate/ledger.sqlite3"),
    ],
)
def test_database_url_uses_psycopg3(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    assert _sqlalchemy_url(given) == expected
    monkeypatch.setenv("JITGATE_DATABASE_URL", given)
    settings = Settings()
    assert settings.database_url == given
    assert settings.ledger_url == expected


def test_valid_custom_time_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_TASK_SOFT_TIME_LIMIT", "30")
    monkeypatch.setenv("JITGATE_TASK_TIME_LIMIT", "60")
    monkeypatch.setenv("JITGATE_VISIBILITY_TIMEOUT", "61")
    settings = Settings()
    assert (settings.task_soft_time_limit, settings.task_time_limit) == (30, 60)
    assert settings.visibility_timeout == 61


def test_default_time_limits_are_ordered() -> None:
    settings = Settings()
    assert settings.task_soft_time_limit < settings.task_time_limit < settings.visibility_timeout


@pytest.mark.parametrize(
    ("soft", "hard", "visibility"),
    [
        (60, 60, 900),  # soft == hard
        (90, 60, 900),  # soft > hard
        (60, 900, 900),  # hard == visibility
        (60, 1000, 900),  # hard > visibility
    ],
)
def test_time_limits_must_be_ordered(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, visibility: int
) -> None:
    monkeypatch.setenv("JITGATE_TASK_SOFT_TIME_LIMIT", str(soft))
    monkeypatch.setenv("JITGATE_TASK_TIME_LIMIT", str(hard))
    monkeypatch.setenv("JITGATE_VISIBILITY_TIMEOUT", str(visibility))
    with pytest.raises(ValueError, match="JITGATE_VISIBILITY_TIMEOUT"):
        Settings()


def test_secrets_never_show_in_repr_or_str(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {name: f"SENTINEL-{i}-value" for i, name in enumerate(SECRET_FIELDS)}
    for name, value in values.items():
        if name == "jira_token":
            (tmp_path / "tok").write_text(value, encoding="utf-8")
            monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(tmp_path / "tok"))
        else:
            monkeypatch.setenv(f"JITGATE_{name.upper()}", value)
    settings = Settings()
    for name, value in values.items():
        secret = getattr(settings, name)
        assert secret is not None
        assert secret.get_secret_value() == value
    shown = [repr(settings), str(settings), f"{settings}", repr(settings.model_dump())]
    for text in shown:
        assert "SENTINEL" not in text
    assert "**********" in repr(settings)


@pytest.mark.parametrize("problem", ["both", "unreadable", "limits"])
def test_configuration_errors_never_echo_secret_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, problem: str
) -> None:
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", "SENTINEL-webhook-secret")
    if problem == "both":
        (tmp_path / "tok").write_text("from-file", encoding="utf-8")
        monkeypatch.setenv("JITGATE_JIRA_TOKEN", "SENTINEL-token")
        monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(tmp_path / "tok"))
    elif problem == "unreadable":
        monkeypatch.setenv("JITGATE_JIRA_TOKEN_FILE", str(tmp_path / "missing"))
    else:
        monkeypatch.setenv("JITGATE_TASK_TIME_LIMIT", "5000")
    with pytest.raises(ValueError) as info:
        Settings()
    assert "JITGATE_" in str(info.value)  # the error is the one this test provoked
    assert "SENTINEL" not in str(info.value)


def test_queue_defaults_to_jitgate_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().queue == "jitgate"
    monkeypatch.setenv("JITGATE_QUEUE", "jitgate-staging.v2")
    assert Settings().queue == "jitgate-staging.v2"


@pytest.mark.parametrize(
    "name", ["", "-leading-dash", "has space", "a/b", "amq.reserved", "x" * 101, "café"]
)
def test_queue_names_unsafe_on_either_broker_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("JITGATE_QUEUE", name)
    with pytest.raises(ValueError, match="JITGATE_QUEUE"):
        Settings()


def test_connection_urls_come_from_files_and_stay_out_of_repr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = "postgresql://jitgate:SENTINEL-pw@db.internal/jitgate"
    (tmp_path / "db").write_text(url + "\n", encoding="utf-8")
    monkeypatch.setenv("JITGATE_DATABASE_URL_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("JITGATE_BROKER_URL", "redis://:SENTINEL-pw@redis.internal:6379/0")
    settings = Settings()
    assert settings.database_url == url
    assert "SENTINEL" not in repr(settings) and "SENTINEL" not in str(settings)
    monkeypatch.setenv("JITGATE_DATABASE_URL", url)
    with pytest.raises((SettingsError, ValidationError), match="not both") as refused:
        Settings()
    assert "SENTINEL" not in str(refused.value)
