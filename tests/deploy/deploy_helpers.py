"""Helpers of the deployment-artefact tests (deploy/); fixtures are in conftest.py.

External tools (docker-compose, go with sprig, promtool) are installed by .ci/run. On a
developer machine without them the tests that need them skip; under CI (``CI`` set) a
missing tool is a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worker.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "jitgate"
HELMRENDER_SRC = Path(__file__).resolve().parent / "helmrender"
GOCODE = Path("/usr/share/gocode")  # Debian's Go library sources (golang-*-dev packages)

_ENV = os.environ


def require_tool(name: str, hint: str) -> str:
    """The tool's path; skip when it is missing locally, fail when it is missing in CI."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed ({hint})"
    if _ENV.get("CI"):
        pytest.fail(message + ": .ci/run installs it, so CI must have it")
    pytest.skip(message)


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment for tools, so a developer's JITGATE_* or GO* cannot leak in."""
    env = {key: _ENV[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in _ENV}
    env.update(extra)
    return env


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Manifest:
    source: str  # "jitgate/templates/<file>"
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def build_helmrender() -> Path:
    go = require_tool("go", "Debian golang-go")
    for package in ("github.com/Masterminds/sprig", "sigs.k8s.io/yaml"):
        if not (GOCODE / "src" / package).is_dir():
            message = (f"{GOCODE}/src/{package} is missing (Debian "
                       "golang-github-masterminds-sprig-dev, golang-k8s-sigs-yaml-dev)")
            if _ENV.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for source in sorted(HELMRENDER_SRC.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"jitgate-helmrender-{digest.hexdigest()[:16]}"
    binary = cache / "helmrender"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"helmrender.{os.getpid()}.tmp"
    env = clean_env(GO111MODULE="off", GOPATH=f"{cache / 'gopath'}:{GOCODE}",
                    GOCACHE=str(cache / "gocache"), CGO_ENABLED="0", GOFLAGS="")
    build = subprocess.run([go, "build", "-o", str(partial), "."], cwd=HELMRENDER_SRC,
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, f"go build failed:\n{build.stderr}"
    partial.replace(binary)  # atomic: parallel test processes may build at once
    return binary


@dataclass(frozen=True)
class RenderResult:
    returncode: int
    stdout: str
    stderr: str

    def manifests(self) -> list[Manifest]:
        assert self.returncode == 0, f"render failed:\n{self.stderr}"
        return parse_rendered(self.stdout)

    def notes(self) -> str:
        assert self.returncode == 0, f"render failed:\n{self.stderr}"
        marker = "# Source: jitgate/templates/NOTES.txt\n"
        assert marker in self.stdout, "NOTES.txt was not rendered"
        return self.stdout.split(marker, 1)[1].split("\n---\n# Source: ", 1)[0]


def parse_rendered(text: str) -> list[Manifest]:
    """Split `helm template`-style output into (source, object) pairs."""
    found: list[Manifest] = []
    for chunk in text.split("---\n# Source: ")[1:]:
        source, _, body = chunk.partition("\n")
        if source.endswith("/NOTES.txt"):
            continue
        loaded = yaml.safe_load(body)
        if loaded is not None:
            assert isinstance(loaded, dict), f"{source}: not a mapping"
            found.append(Manifest(source=source, body=loaded))
    return found


Render = Callable[..., RenderResult]


def assert_cli_command(words: list[str]) -> None:
    """`words` name a real command of `jitgate` (click group walk, options ignored)."""
    command: click.Command = cli_main
    path: list[str] = []
    for word in words:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.get_command(click.Context(command), word)
        assert sub is not None, f"`jitgate {' '.join([*path, word])}` does not exist"
        path.append(word)
        command = sub
    assert not isinstance(command, click.Group), f"`jitgate {' '.join(path)}` is a group"


def heartbeat_every() -> float:
    """HEARTBEAT_EVERY from worker/celery_app.py, read without importing Celery."""
    tree = ast.parse((REPO / "worker" / "celery_app.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "HEARTBEAT_EVERY" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, int | float)
            return float(value)
    raise AssertionError("HEARTBEAT_EVERY not found in worker/celery_app.py")
