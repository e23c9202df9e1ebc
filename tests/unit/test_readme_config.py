"""The README's Configuration tables list every ``JITGATE_*`` variable ``Settings`` reads
(each field under the env prefix, and the ``_FILE`` twin of every secret), and nothing
else. Generic: a setting added to ``worker/settings.py`` fails here until documented."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import FILE_FIELDS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
_VARIABLE = re.compile(r"JITGATE_[A-Z0-9_]*[A-Z0-9]")


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"README has no '## {title}' section"
    return match.group(1)


def _table_rows(section: str) -> list[list[str]]:
    """Body rows of every Markdown table in the section, as stripped cells."""
    rows: list[list[str]] = []
    for raw in section.splitlines():
        line = raw.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
            continue  # the separator row
        rows.append(cells)
    return rows


def _expected() -> set[str]:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{name}".upper())
    names |= {f"{prefix}{name}_FILE".upper() for name in FILE_FIELDS}
    return names


def _documented() -> set[str]:
    rows = _table_rows(_section("Configuration"))
    headers = {r[0] for r in rows if not _VARIABLE.search(r[0])}
    assert headers, "the Configuration tables lost their header rows"
    return {v for row in rows for v in _VARIABLE.findall(row[0])}


def test_settings_read_the_prefix_the_readme_uses() -> None:
    assert Settings.model_config.get("env_prefix") == "JITGATE_"
    assert _expected() >= {"JITGATE_BROKER_URL", "JITGATE_JIRA_TOKEN_FILE"}


def test_every_variable_is_in_the_configuration_tables() -> None:
    missing = sorted(_expected() - _documented())
    assert not missing, (
        "README '## Configuration' lacks a table row (variable | default | meaning) for: "
        + ", ".join(missing)
    )


def test_the_configuration_tables_name_no_variable_that_does_not_exist() -> None:
    unknown = sorted(_documented() - _expected())
    assert not unknown, (
        "README '## Configuration' documents variables Settings does not read: "
        + ", ".join(unknown)
    )


def test_every_row_says_something_in_every_column() -> None:
    for row in _table_rows(_section("Configuration")):
        assert len(row) >= 2 and all(row), f"incomplete Configuration row: {row}"


def test_no_row_abbreviates_a_variable() -> None:
    """`_PREVIOUS` for `JITGATE_X_PREVIOUS` reads fine to a human and breaks grep."""
    for row in _table_rows(_section("Configuration")):
        assert not re.search(r"`_[A-Z]", row[0]), f"abbreviated variable in: {row[0]}"
