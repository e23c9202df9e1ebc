"""deploy/Dockerfile and .dockerignore, checked statically: there is no Docker engine on
the test machines, so the image is never built here. These checks catch the mistakes
that matter (root user, dev tools in the image, a wrong entry point, a build context
that drops code or ships secrets) without one."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest
from deploy_helpers import CHART, DEPLOY, REPO, load_yaml

from worker.settings import Settings

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base}: no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with line continuations joined, comments dropped and
    ${ARG} references in FROM resolved."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)],
                          words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not exec form (signals would not reach jitgate): {args}"
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    for stage in (builder, final):
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    # The final stage takes the built virtualenv from the builder, nothing else.
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/jitgate /opt/jitgate"]


def test_builder_installs_jitgate_without_dev_or_embedded_extras(stages: list[Stage]) -> None:
    installs = [run for stage in stages for run in stage.all("RUN") if "pip install" in run]
    assert installs, "no pip install"
    for run in installs:
        for command in run.split("&&"):
            if "pip install" not in command:
                continue
            words = shlex.split(command)
            targets = [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
            assert targets == ["."], f"installs {targets}: only the project itself, no extras"
    final_runs = " ".join(stages[-1].all("RUN"))
    assert "pip install" not in final_runs
    for tool in ("gcc", "build-essential", "make", "g++", "clang", "apt-get install"):
        assert tool not in final_runs, f"final stage installs {tool}"
    # The project's extras exist and are the ones being left out.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    assert {"dev", "embedded"} <= set(extras)


def test_final_stage_runs_as_numeric_non_root(stages: list[Stage]) -> None:
    final = stages[-1]
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: want a numeric non-root UID"
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # The USER comes after every RUN (nothing later runs as root).
    keywords = [kw for kw, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER"):]
    # The chart's runAsUser is the image's user.
    values = load_yaml(CHART / "values.yaml")
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_cmd_and_port(stages: list[Stage]) -> None:
    final = stages[-1]
    assert exec_form(final.last("ENTRYPOINT")) == ["jitgate"]
    assert exec_form(final.last("CMD")) == ["web"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(final.all("ENV"))))
    assert final.last("EXPOSE") == env["JITGATE_HTTP_PORT"]
    assert env["JITGATE_HTTP_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert int(env["JITGATE_HTTP_PORT"]) == Settings.model_fields["http_port"].default
    assert env["PATH"].startswith("/opt/jitgate/bin:")
    # Every JITGATE_* the image sets is a real setting.
    for name in env:
        if name.startswith("JITGATE_"):
            assert name.removeprefix("JITGATE_").lower() in Settings.model_fields, name
    values = load_yaml(CHART / "values.yaml")
    assert env["JITGATE_METRICS_DIR"] == values["config"]["metricsDir"]
    assert int(env["JITGATE_HTTP_PORT"]) == values["config"]["httpPort"]


def test_copied_sources_are_the_package(stages: list[Stage]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    copied: set[str] = set()
    for args in stages[0].all("COPY"):
        sources = args.split()[:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
            copied.add(source)
    assert packages <= copied, f"packages not copied: {packages - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus **), as Docker's patternmatcher."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern that matches the path
    or one of its parent folders decides (Docker's MatchesOrParentMatches)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern_regex(pattern)))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(("path", "excluded"), [
    ("pyproject.toml", False),
    ("README.md", False),
    ("worker/cli.py", False),
    ("worker/ledger/migrations/env.py", False),
    ("connectors/postgres/target.py", False),
    ("policies/examples/warehouse.yaml", False),
    ("worker/__pycache__/cli.cpython-311.pyc", True),
    (".git/config", True),
    (".venv/bin/python", True),
    (".jitgate/jira-webhook-secret", True),  # `jitgate up`'s generated secret
    (".jitgate/ledger.sqlite3", True),
    ("deploy/secrets/db_password", True),
    ("tests/conftest.py", True),
    ("bench/results/latest.json", True),
])
def test_dockerignore(path: str, excluded: bool) -> None:
    assert dockerignored(path) is excluded


def test_dockerignore_matcher_can_fail() -> None:
    """The matcher is ours: prove it tells an excluded path from an included one."""
    regex = _pattern_regex("**/__pycache__")
    assert regex.fullmatch("a/b/__pycache__")
    assert regex.fullmatch("__pycache__")
    assert not regex.fullmatch("a/__pycache__x")
    assert not _pattern_regex("*").fullmatch("a/b")
