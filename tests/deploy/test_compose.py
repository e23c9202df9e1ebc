"""deploy/compose.yaml: validated by docker-compose itself (`config`, no engine needed) and
checked against jitgate: its CLI commands, settings, secrets and time limits."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, assert_cli_command, clean_env, load_yaml, require_tool

from worker.settings import SECRET_FIELDS, Settings

COMPOSE = DEPLOY / "compose.yaml"
JITGATE_SERVICES = ("migrate", "web", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = load_yaml(COMPOSE)  # PyYAML resolves the `<<: *jitgate` merge keys
    assert isinstance(loaded, dict)
    return loaded


def _compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose", "Debian docker-compose")
    return subprocess.run([binary, "-f", str(COMPOSE), "config", *args], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=False)


def seconds(duration: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def test_docker_compose_accepts_the_file() -> None:
    done = _compose_config("-q")
    assert done.returncode == 0, done.stderr


def test_docker_compose_keeps_the_start_order() -> None:
    """What compose makes of the file (not just what PyYAML reads): the one-shot migration
    gates the long-running services, and Redis/PostgreSQL must be healthy first."""
    done = _compose_config()
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"}}, name


def test_one_image_for_every_jitgate_process(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[name]["image"] for name in JITGATE_SERVICES}
    assert len(images) == 1
    assert services["migrate"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    commands = {name: services[name]["command"] for name in JITGATE_SERVICES}
    assert commands == {"migrate": ["db", "upgrade"], "web": ["web"], "worker": ["worker"],
                        "beat": ["beat"]}
    for words in commands.values():
        assert_cli_command(words)
    assert services["migrate"]["restart"] == "no"
    # Exactly one beat: no scaling keys anywhere near it.
    assert "deploy" not in services["beat"] and "scale" not in services["beat"]


def test_redis_and_postgres_keep_their_data(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.split(":")[0] in volumes and v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    postgres = services["postgres"]
    assert any(v.split(":")[0] in volumes and v.endswith(":/var/lib/postgresql/data")
               for v in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "POSTGRES_PASSWORD" not in postgres["environment"]  # the _FILE form only
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "db_password" in postgres["secrets"]


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    web = services["web"]["healthcheck"]["test"]
    assert web[0] == "CMD" and "/healthz" in " ".join(web)
    compile(web[-1], "web-healthcheck", "exec")
    worker = services["worker"]["healthcheck"]["test"]
    assert worker[:4] == ["CMD", "jitgate", "alive", "--max-age"]


def test_worker_stop_grace_outlasts_the_task_time_limit(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    limit = float(worker["environment"].get("JITGATE_TASK_TIME_LIMIT",
                                            Settings.model_fields["task_time_limit"].default))
    assert seconds(worker["stop_grace_period"]) > limit
    soft = float(worker["environment"]["JITGATE_TASK_SOFT_TIME_LIMIT"])
    assert soft < limit < float(worker["environment"]["JITGATE_VISIBILITY_TIMEOUT"])


def test_secrets_come_from_files(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    for name, secret in declared.items():
        assert set(secret) == {"file"}, name
        assert secret["file"].startswith("./secrets/"), name
    assert (DEPLOY / ".gitignore").read_text(encoding="utf-8").count("/secrets/") == 1
    fields = set(Settings.model_fields)
    for name in JITGATE_SERVICES:
        service = compose["services"][name]
        mounted = set(service["secrets"])
        assert mounted <= set(declared)
        for var, value in service["environment"].items():
            if var.endswith("_FILE"):
                assert var.removeprefix("JITGATE_").removesuffix("_FILE").lower() in (
                    SECRET_FIELDS), var
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {var}"
            else:
                assert not re.search(r"SECRET|TOKEN|PASSWORD", var), f"{name}: {var} inline"
                assert "@" not in str(value), f"{name}: {var} carries credentials"
            if var.startswith("JITGATE_") and not var.endswith("_FILE"):
                assert var.removeprefix("JITGATE_").lower() in fields, f"{var}: no such setting"


def test_containers_are_locked_down(compose: dict[str, Any]) -> None:
    for name in JITGATE_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["user"] == "10001:10001"
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        writable = {t.split(":")[0] for t in service["tmpfs"]} | {
            v.split(":")[1] for v in service["volumes"] if not v.endswith(":ro")}
        # The image's data folder (JITGATE_DATA_DIR), /tmp and the metrics folder.
        assert {"/tmp", "/var/lib/jitgate", service["environment"]["JITGATE_METRICS_DIR"]} <= (
            writable)


def test_web_and_worker_share_the_metrics_folder(compose: dict[str, Any]) -> None:
    """prometheus_client multiprocess mode: the listener's /metrics sums the files that
    every process writes, so the worker's counters must land where the web reads."""
    services = compose["services"]
    mounts = {}
    for name in ("web", "worker"):
        folder = services[name]["environment"]["JITGATE_METRICS_DIR"]
        [volume] = [v.split(":")[0] for v in services[name]["volumes"]
                    if v.split(":")[1] == folder]
        mounts[name] = volume
    assert mounts["web"] == mounts["worker"]
    assert mounts["web"] in compose["volumes"]  # a named volume, not a per-container tmpfs


def test_database_url_wrapper(compose: dict[str, Any], tmp_path: Path) -> None:
    """The entrypoint builds JITGATE_DATABASE_URL from the password file and execs jitgate
    with the service's command: run it with a stand-in `jitgate` that prints both."""
    entrypoint = compose["services"]["worker"]["entrypoint"]
    assert entrypoint[0] == "/bin/sh"
    script = entrypoint[2].replace("$$", "$")  # compose's escape for a literal $
    secret = tmp_path / "db_password"
    secret.write_text("s3cr3thex\n", encoding="utf-8")
    script = script.replace("/run/secrets/db_password", str(secret))
    fake = tmp_path / "bin" / "jitgate"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$JITGATE_DATABASE_URL"\necho "$@"\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    done = subprocess.run([entrypoint[0], entrypoint[1], script, *entrypoint[3:], "db",
                           "upgrade"], capture_output=True, text=True, check=False, timeout=10,
                          env={"PATH": f"{fake.parent}{os.pathsep}/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "postgresql://jitgate:s3cr3thex@postgres:5432/jitgate", "db upgrade"]
    secret.unlink()
    missing = subprocess.run([entrypoint[0], entrypoint[1], script, *entrypoint[3:], "web"],
                             capture_output=True, text=True, check=False, timeout=10,
                             env={"PATH": f"{fake.parent}{os.pathsep}/usr/bin:/bin"})
    assert missing.returncode != 0  # no password file: jitgate is not started at all
    assert missing.stdout == ""


def test_policies_mount_defaults_to_the_examples(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    [mount] = [v for v in web["volumes"] if v.endswith(":/etc/jitgate/policies:ro")]
    default = re.fullmatch(r"\$\{JITGATE_POLICIES_DIR:-(.+)\}", mount.split(":/etc")[0])
    assert default, mount
    assert (DEPLOY / default.group(1) / "warehouse.yaml").is_file()
    assert web["environment"]["JITGATE_POLICY_PATH"] == "/etc/jitgate/policies"
