"""Fixtures of the deployment-artefact tests: the chart renderer and rendered charts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from deploy_helpers import (
    CHART,
    Manifest,
    Render,
    RenderResult,
    build_helmrender,
    clean_env,
)


@pytest.fixture(scope="session")
def helmrender() -> Path:
    return build_helmrender()


@pytest.fixture(scope="session")
def render(helmrender: Path) -> Render:
    """render(values_files=..., sets=..., name=..., notes=...) → RenderResult. Strict by
    default (like `helm lint --strict`): a template reading a value key that does not
    exist is an error, so a typo cannot render as an empty string."""

    def _render(*, values_files: tuple[Path, ...] = (), sets: Mapping[str, str] | None = None,
                name: str = "jitgate", namespace: str = "access", notes: bool = False,
                kube_version: str = "1.30.0", strict: bool = True) -> RenderResult:
        args = [str(helmrender), "-chart", str(CHART), "-name", name, "-namespace", namespace,
                "-kube-version", kube_version]
        if strict:
            args.append("-strict")
        for file in values_files:
            args += ["-f", str(file)]
        for key, value in (sets or {}).items():
            args += ["-set", f"{key}={value}"]
        if notes:
            args.append("-notes")
        done = subprocess.run(args, capture_output=True, text=True, env=clean_env(), check=False,
                              timeout=60)
        return RenderResult(done.returncode, done.stdout, done.stderr)

    return _render


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render().manifests()


@pytest.fixture(scope="session")
def ci_manifests(render: Render) -> list[Manifest]:
    return render(values_files=(CHART / "ci" / "test-values.yaml",)).manifests()


@pytest.fixture
def tmp_chart(tmp_path: Path) -> Iterator[Path]:
    """An empty chart folder named like its chart, for renderer tests."""
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: probe\nversion: 1.2.3\nappVersion: '4.5'\n", encoding="utf-8")
    yield chart
