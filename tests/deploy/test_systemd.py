"""deploy/systemd units: what the README promises for VM installs (read-only checks)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, assert_cli_command

from worker.settings import Settings

UNITS = sorted((DEPLOY / "systemd").glob("jitgate-*.service"))


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def test_the_three_processes_have_units() -> None:
    assert [u.name for u in UNITS] == [
        "jitgate-beat.service", "jitgate-web.service", "jitgate-worker.service"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_jitgate_as_its_own_user(path: Path) -> None:
    service = _unit(path)["Service"]
    executable, *words = service["ExecStart"].split()
    assert executable == "/opt/jitgate/venv/bin/jitgate"
    assert_cli_command(words)
    assert words[0] == path.stem.removeprefix("jitgate-")
    assert service["User"] == "jitgate" and service["Group"] == "jitgate"
    assert service["NoNewPrivileges"] == "true"
    assert service["Restart"] == "always"


def test_worker_stop_timeout_outlasts_the_task_time_limit() -> None:
    """The units do not set JITGATE_TASK_TIME_LIMIT: the default applies."""
    path = DEPLOY / "systemd" / "jitgate-worker.service"
    assert "JITGATE_TASK_TIME_LIMIT" not in path.read_text(encoding="utf-8")
    service = _unit(path)["Service"]
    assert int(service["TimeoutStopSec"]) > Settings.model_fields["task_time_limit"].default
    assert service["KillSignal"] == "SIGTERM"  # Celery's warm shutdown
