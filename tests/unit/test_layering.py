"""Imports go one way: worker → policies → connectors.base. policies stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_connectors_import_nothing_of_ours_above_them() -> None:
    for path, names in _imports("connectors").items():
        assert not {n for n in names if n.split(".")[0] in {"worker", "policies"}}, path


def test_policies_see_only_connectors_base_and_no_io_frameworks() -> None:
    banned = {"celery", "sqlalchemy", "httpx", "requests", "psycopg", "redis", "fastapi",
              "starlette", "jira", "pysnow", "worker"}
    for path, names in _imports("policies").items():
        ours = {n for n in names if n.startswith("connectors")}
        assert ours <= {"connectors.base"}, path
        assert not {n for n in names if n.split(".")[0] in banned}, path


@pytest.mark.parametrize("module", ["engine.py", "model.py"])
def test_the_decision_engine_reads_no_clock(module: str) -> None:
    source = (ROOT / "policies" / module).read_text(encoding="utf-8")
    assert "datetime.now(" not in source and "time.time(" not in source
