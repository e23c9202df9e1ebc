"""Loading policy files: every error at once, with file, 1-based line and dotted field.

Only temp files are touched. Line numbers are looked up from the text itself so the
YAML snippets stay readable.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import policies
from policies.loader import PolicyError, PolicyLoadError, PolicySet, load_policies, validate_with

EXAMPLE = Path(policies.__file__).parent / "examples" / "warehouse.yaml"

VALID = """\
version: 1
targets:
  warehouse:
    type: postgres
    dsn: postgresql://db/warehouse
    principal_pattern: "^ctr_[a-z0-9_]{2,40}$"
policies:
  - name: warehouse-read
    source: jira
    match:
      project: OPS
      requested: {field: customfield_10070, equals: warehouse-read}
    approved_statuses: [Approved]
    approvers:
      users: [acc-approver]
    principal:
      from: field
      field: customfield_10071
    grants:
      - {target: warehouse, role: analytics_ro}
    duration: 8h
    max_duration: 24h
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line of ``path`` containing ``needle``."""
    hits = [
        i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line
    ]
    assert len(hits) >= nth, f"{needle!r} not in {path}"
    return hits[nth - 1]


def load_errors(path: Path, env: Mapping[str, str] | None = None, **kwargs: Any) -> list[
    PolicyError
]:
    with pytest.raises(PolicyLoadError) as info:
        load_policies(path, env=env or {}, **kwargs)
    errors = info.value.errors
    assert errors, "PolicyLoadError without errors"
    # the exception text lists every error
    for error in errors:
        assert str(error) in str(info.value)
    return errors


def triples(errors: list[PolicyError]) -> set[tuple[int | None, str]]:
    return {(e.line, e.field) for e in errors}


def find(errors: list[PolicyError], field: str) -> PolicyError:
    matching = [e for e in errors if e.field == field]
    assert len(matching) == 1, (field, errors)
    return matching[0]


# =========================================================================== valid files


def test_example_policy_loads_with_default_dsn() -> None:
    policy_set = load_policies(EXAMPLE, env={})
    assert isinstance(policy_set, PolicySet)
    assert set(policy_set.targets) == {"warehouse"}
    target = policy_set.targets["warehouse"]
    assert target.type == "postgres"
    assert target.principal_pattern == "^ctr_[a-z0-9_]{2,40}$"
    assert target.options == {
        "dsn": "postgresql://postgres@127.0.0.1:5432/postgres",
        "manage_login": False,
    }
    (policy,) = policy_set.policies
    assert policy.name == "warehouse-read"
    assert policy.source == "jira"
    assert policy.match.project == ("OPS",)
    assert policy.match.issue_type == ("Access Request",)
    assert policy.match.requested is not None
    assert policy.match.requested.field == "customfield_10070"
    assert policy.approved_statuses == ("Approved",)
    assert policy.rejected_statuses == ("Rejected",)
    assert policy.approvers.users == ("5b10a2844c20165700ede21g",)
    assert policy.approvers.min_approvals == 1
    assert policy.principal.from_ == "field"
    assert [(g.target, g.role) for g in policy.grants] == [("warehouse", "analytics_ro")]
    assert policy.duration == timedelta(hours=8)
    assert policy.max_duration == timedelta(hours=24)
    assert policy.stale_after == timedelta(hours=72)


def test_example_policy_reads_the_environment() -> None:
    policy_set = load_policies(EXAMPLE, env={"WAREHOUSE_DSN": "postgresql://prod/wh"})
    assert policy_set.targets["warehouse"].options["dsn"] == "postgresql://prod/wh"


def test_example_passes_the_target_validator_hook(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(name: str, options: Mapping[str, Any]) -> object:
        seen.append((name, dict(options)))
        return None

    load_policies(EXAMPLE, env={"WAREHOUSE_DSN": "x"}, target_validators={"postgres": record})
    # the validator gets only the connector's own keys
    assert seen == [("warehouse", {"dsn": "x", "manage_login": False})]


def test_policy_set_lookups(tmp_path: Path) -> None:
    policy_set = load_policies(write(tmp_path, "p.yaml", VALID), env={})
    assert policy_set.by_name("warehouse-read") is policy_set.policies[0]
    assert policy_set.by_name("nope") is None
    assert policy_set.for_source("jira") == policy_set.policies
    assert policy_set.for_source("servicenow") == ()


POLICY_ONLY = """\
version: 1
policies:
  - name: {name}
    source: jira
    approved_statuses: [Approved]
    approvers: {{users: [acc-approver]}}
    principal: {{from: requester_user_name}}
    grants: [{{target: {target}, role: reader}}]
    duration: 1h
"""


def test_folder_of_files(tmp_path: Path) -> None:
    write(tmp_path, "30-audit.yaml", POLICY_ONLY.format(name="audit-read", target="audit"))
    write(tmp_path, "10-targets.yaml", """\
        version: 1
        targets:
          warehouse: {type: postgres}
          audit: {type: postgres}
        """)
    write(tmp_path, "20-read.yml", POLICY_ONLY.format(name="warehouse-read", target="warehouse"))
    (tmp_path / "README.md").write_text("not: [yaml", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("{{{{", encoding="utf-8")
    (tmp_path / "sub.yaml").mkdir()  # a folder named like a file is skipped

    policy_set = load_policies(tmp_path, env={})
    assert set(policy_set.targets) == {"warehouse", "audit"}
    # files are read sorted by name; grants may use targets from other files
    assert [p.name for p in policy_set.policies] == ["warehouse-read", "audit-read"]
    assert policy_set.policies[1].grants[0].target == "audit"


@pytest.mark.parametrize("make", ["missing", "empty-dir", "only-other-files"])
def test_no_policy_files(tmp_path: Path, make: str) -> None:
    path = tmp_path / "policies"
    if make != "missing":
        path.mkdir()
    if make == "only-other-files":
        (path / "README.md").write_text("hello", encoding="utf-8")
    (error,) = load_errors(path)
    assert error.file == str(path)
    assert error.line is None
    assert "no policy files" in error.message


# =========================================================================== env expansion


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${DSN}", {"DSN": "postgresql://a/b"}, "postgresql://a/b"),
        ("${DSN:-postgresql://default/db}", {}, "postgresql://default/db"),
        ("${DSN:-postgresql://default/db}", {"DSN": "postgresql://env/db"}, "postgresql://env/db"),
        ("${DSN:-}", {}, ""),
        ("${DSN}", {"DSN": ""}, ""),
        ("${DSN:-fallback}", {"DSN": ""}, ""),
        ("postgresql://${USER}:${PASS}@h/db", {"USER": "u", "PASS": "p w"},
         "postgresql://u:p w@h/db"),
        ("postgresql://${HOST:-localhost}:${PORT:-5432}/db", {"PORT": "6543"},
         "postgresql://localhost:6543/db"),
        ("$DSN", {"DSN": "x"}, "$DSN"),
        ("plain", {}, "plain"),
    ],
)
def test_env_expansion(tmp_path: Path, value: str, env: dict[str, str], expected: str) -> None:
    text = VALID.replace("dsn: postgresql://db/warehouse", f'dsn: "{value}"')
    policy_set = load_policies(write(tmp_path, "p.yaml", text), env=env)
    assert policy_set.targets["warehouse"].options["dsn"] == expected


def test_env_expansion_in_policy_fields(tmp_path: Path) -> None:
    text = (
        VALID.replace("duration: 8h", "duration: ${DURATION:-4h}")
        .replace("[acc-approver]", "['${APPROVER}']")
    )
    policy_set = load_policies(write(tmp_path, "p.yaml", text), env={"APPROVER": "acc-42"})
    policy = policy_set.policies[0]
    assert policy.duration == timedelta(hours=4)
    assert policy.approvers.users == ("acc-42",)


def test_missing_env_var_is_reported_with_its_line(tmp_path: Path) -> None:
    text = VALID.replace("dsn: postgresql://db/warehouse", "dsn: ${WAREHOUSE_DSN}").replace(
        "[acc-approver]", "['${APPROVER}', acc-2]"
    )
    path = write(tmp_path, "p.yaml", text)
    errors = load_errors(path)
    assert triples(errors) == {
        (line_of(path, "WAREHOUSE_DSN"), "targets.warehouse.dsn"),
        (line_of(path, "APPROVER"), "policies[0].approvers.users[0]"),
    }
    assert all(e.file == str(path) for e in errors)
    assert "WAREHOUSE_DSN is not set" in find(errors, "targets.warehouse.dsn").message
    assert "APPROVER is not set" in find(errors, "policies[0].approvers.users[0]").message


# =========================================================================== error listing


MANY_ERRORS = """\
version: 1
extra_top: true
targets:
  warehouse:
    type: postgres
policies:
  - name: first
    source: jira
    match:
      projct: OPS
    approved_statuses: [Approved]
    approvers:
      users: [acc-1]
      min_approvals: two
      allow_self_aproval: true
    principal:
      from: field
      field: customfield_10071
      fieldd: x
    grants:
      - {target: warehouse, role: r, rol: x}
    duration: 8x
    duraton: 8h
    stale_after: -1h
  - name: second
    source: jira
    approved_statuses: [Approved]
    approvers: {users: [acc-1]}
    principal: {from: requester_user_name}
    grants: [{target: warehouse, role: r}]
    duration: 48h
    max_duration: 24h
  - name: third
    source: gitlab
    approved_statuses: Approved
    approvers: {users: []}
    principal: {from: nowhere}
    grants: []
    duration: 0
"""


def test_every_error_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", MANY_ERRORS)
    errors = load_errors(path)
    assert all(e.file == str(path) for e in errors)

    expected = {
        # unknown keys, at every level
        (line_of(path, "extra_top"), "extra_top", "unknown key"),
        (line_of(path, "projct"), "policies[0].match.projct", "unknown key"),
        (line_of(path, "allow_self_aproval"), "policies[0].approvers.allow_self_aproval",
         "unknown key"),
        (line_of(path, "fieldd"), "policies[0].principal.fieldd", "unknown key"),
        (line_of(path, "rol: x"), "policies[0].grants[0].rol", "unknown key"),
        (line_of(path, "duraton"), "policies[0].duraton", "unknown key"),
        # wrong types and bad values
        (line_of(path, "min_approvals: two"), "policies[0].approvers.min_approvals",
         "valid integer"),
        (line_of(path, "duration: 8x"), "policies[0].duration", "expected a duration"),
        (line_of(path, "stale_after: -1h"), "policies[0].stale_after", "expected a duration"),
        # a rule across fields is reported at the policy
        (line_of(path, "- name: second"), "policies[1]", "longer than max_duration"),
        (line_of(path, "source: gitlab"), "policies[2].source", "'jira' or 'servicenow'"),
        (line_of(path, "users: []"), "policies[2].approvers", "at least one approver"),
        (line_of(path, "from: nowhere"), "policies[2].principal.from", "Input should be"),
        (line_of(path, "grants: []"), "policies[2].grants", "at least 1"),
        (line_of(path, "duration: 0"), "policies[2].duration", "positive"),
    }
    for line, field, fragment in expected:
        error = find(errors, field)
        assert error.line == line, error
        assert fragment in error.message, error
    # nothing reported twice, and nothing reported that is not an error above (pydantic
    # adds a "tuple should have at least 1 item" for the grants list whose item failed)
    assert len(errors) == len({(e.line, e.field) for e in errors})
    assert {e.field for e in errors} - {"policies[0].grants"} == {f for _, f, _ in expected}


def test_unknown_key_message(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", VALID.replace("    duration: 8h", "    durration: 8h"))
    errors = load_errors(path)
    typo = find(errors, "policies[0].durration")
    assert typo.message == "unknown key (check its spelling)"
    assert typo.line == line_of(path, "durration")
    # the real key is now missing, and that is reported at the policy
    missing = find(errors, "policies[0].duration")
    assert missing.message == "Field required"
    assert missing.line == line_of(path, "- name: warehouse-read")


@pytest.mark.parametrize(
    ("old", "new", "field", "fragment"),
    [
        ("version: 1", "version: 2", "version", "Input should be 1"),
        ("version: 1", 'version: "one"', "version", "Input should be 1"),
        ("    source: jira", "    source: [jira]", "policies[0].source", "Input should be"),
        ("    approved_statuses: [Approved]", "    approved_statuses: {a: 1}",
         "policies[0].approved_statuses", "valid tuple"),
        ("      project: OPS", "      project: [1, OPS]", "policies[0].match.project[0]",
         "valid string"),
        ("    duration: 8h", "    duration: 8 hours", "policies[0].duration",
         "expected a duration"),
        ("    duration: 8h", "    duration: true", "policies[0].duration",
         "expected a duration"),
        ("    max_duration: 24h", "    max_duration: 1d2h", "policies[0].max_duration",
         "expected a duration"),
        ("    type: postgres", "    type: ''", "targets.warehouse.type", "at least 1"),
        ('    principal_pattern: "^ctr_[a-z0-9_]{2,40}$"', '    principal_pattern: "^ctr_["',
         "targets.warehouse.principal_pattern", "regular expression"),
        ("      users: [acc-approver]", "      users: acc-approver\n      min_approvals: 0",
         "policies[0].approvers.min_approvals", "greater than or equal"),
        ("    grants:\n      - {target: warehouse, role: analytics_ro}",
         "    grants: {target: warehouse, role: analytics_ro}", "policies[0].grants",
         "valid tuple"),
    ],
)
def test_single_error_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, fragment: str
) -> None:
    assert old in VALID
    path = write(tmp_path, "p.yaml", VALID.replace(old, new))
    (error,) = load_errors(path)
    assert error.field == field
    assert fragment in error.message
    assert error.file == str(path)
    # the error points at the line of the field's key (or its first item)
    key = field.rsplit(".", 1)[-1].split("[", maxsplit=1)[0]
    assert error.line == line_of(path, f"{key}:")


def test_duration_longer_than_max_duration(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", VALID.replace("duration: 8h", "duration: 2d"))
    (error,) = load_errors(path)
    assert error.field == "policies[0]"
    assert error.line == line_of(path, "- name: warehouse-read")
    assert "duration is longer than max_duration" in error.message


def test_error_string_format(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", VALID.replace("duration: 8h", "duration: 8x"))
    (error,) = load_errors(path)
    line = line_of(path, "duration: 8x")
    assert str(error) == f"{path}:{line}: policies[0].duration: {error.message}"
    assert str(PolicyError("f.yaml", None, "", "boom")) == "f.yaml: boom"
    assert str(PolicyError("f.yaml", 3, "", "boom")) == "f.yaml:3: boom"


# =========================================================================== cross-file checks


def test_unknown_grant_target(tmp_path: Path) -> None:
    text = VALID.replace(
        "      - {target: warehouse, role: analytics_ro}",
        "      - {target: warehouse, role: analytics_ro}\n      - {target: wharehouse, role: x}",
    )
    path = write(tmp_path, "p.yaml", text)
    (error,) = load_errors(path)
    assert error.field == "policies[0].grants[1].target"
    assert error.line == line_of(path, "wharehouse")
    assert "unknown target 'wharehouse'" in error.message


def test_duplicate_policy_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", VALID)
    second = write(
        tmp_path,
        "b.yaml",
        """\
        # the same policy name again
        version: 1
        policies:
          - name: other
            source: jira
            approved_statuses: [Approved]
            approvers: {users: [x]}
            principal: {from: requester_user_name}
            grants: [{target: warehouse, role: r}]
            duration: 1h
          - name: warehouse-read
            source: servicenow
            approved_statuses: [approved]
            approvers: {users: [x]}
            principal: {from: requester_user_name}
            grants: [{target: warehouse, role: r}]
            duration: 1h
        """,
    )
    (error,) = load_errors(tmp_path)
    assert error.file == str(second)
    assert error.field == "policies[1].name"
    assert error.line == line_of(second, "name: warehouse-read")
    assert f"{first}:{line_of(first, 'name: warehouse-read')}" in error.message
    assert "'warehouse-read'" in error.message


def test_duplicate_target_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", VALID)
    second = write(tmp_path, "b.yaml", "version: 1\ntargets:\n  warehouse: {type: postgres}\n")
    (error,) = load_errors(tmp_path)
    assert error.file == str(second)
    assert error.field == "targets.warehouse"
    assert error.line == 3
    assert str(tmp_path / "a.yaml") in error.message


def test_errors_from_several_files_are_all_listed(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", VALID.replace("duration: 8h", "duration: 8x"))
    b = write(tmp_path, "b.yaml", "version: 1\npolicies: [\n")
    c = write(tmp_path, "c.yaml", "")
    d = write(tmp_path, "d.yaml", "version: 1\ntargets:\n  t: {type: pg, dsn: '${NOPE}'}\n")
    errors = load_errors(tmp_path)
    assert {e.file for e in errors} == {str(a), str(b), str(c), str(d)}
    assert len(errors) == 4


# =========================================================================== YAML-level errors


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    text = VALID.replace("    duration: 8h\n", "    duration: 8h\n    duration: 1h\n").replace(
        "version: 1\n", "version: 1\nversion: 1\n"
    )
    path = write(tmp_path, "p.yaml", text)
    errors = load_errors(path)
    assert {(e.line, e.field, e.message) for e in errors} == {
        (line_of(path, "version", 2), "version", "duplicate key"),
        (line_of(path, "duration: 1h"), "policies[0].duration", "duplicate key"),
    }


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 1\npolicies:\n  - name: a\n    source: jira: x\n", 4, "mapping values"),
        ("version: 1\ntargets:\n  t:\n\ttype: pg\n", 4, "'\\t'"),
        ("version: 1\n  targets: {}\n", 2, "mapping values"),
        ("version: 1\npolicies: [a, b\n", 3, "expected ','"),
        ("version: 1\n---\nversion: 1\n", 2, "another document"),
        ('version: 1\nname: "unterminated\n', 3, "end of stream"),
    ],
)
def test_invalid_yaml_syntax_with_its_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, "p.yaml", text)
    (error,) = load_errors(path)
    assert error.file == str(path)
    assert error.line == line
    assert error.field == ""
    assert error.message.startswith("invalid YAML")
    assert fragment in error.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    (error,) = load_errors(path)
    assert (error.file, error.line, error.message) == (str(path), 1, "the file is empty")


@pytest.mark.parametrize("text", ["- version: 1\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    (error,) = load_errors(path)
    assert error.line == 1
    assert error.field == ""
    assert "dictionary" in error.message


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\nname: \xff\xfe\n")
    (error,) = load_errors(path)
    assert error.line is None
    assert "cannot read" in error.message


def test_unknown_yaml_tag_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", VALID.replace("dsn: postgresql://db/warehouse",
                                                   "dsn: !vault secret/warehouse"))
    (error,) = load_errors(path)
    assert error.line == line_of(path, "!vault")


def test_overflowing_duration_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", VALID.replace("duration: 8h", "duration: 99999999999w"))
    errors = load_errors(path)
    assert find(errors, "policies[0].duration").line == line_of(path, "99999999999w")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("version: 1\n", "version: 1\nversion: 1\n"),
        ("dsn: postgresql://db/warehouse", "dsn: ${UNSET_DSN}"),
    ],
    ids=["duplicate-key", "missing-var"],
)
def test_yaml_level_errors_do_not_hide_schema_errors(tmp_path: Path, old: str, new: str) -> None:
    text = VALID.replace(old, new).replace("duration: 8h", "duration: 8x")
    path = write(tmp_path, "p.yaml", text)
    errors = load_errors(path)
    assert len(errors) == 2
    assert find(errors, "policies[0].duration").line == line_of(path, "duration: 8x")


# =========================================================================== target validators


class PgOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: str
    manage_login: bool = False
    pool_size: int = 1


TARGETS_FOR_VALIDATION = """\
version: 1
targets:
  warehouse:
    type: postgres
    manage_login: maybe
    dssn: postgresql://typo
    pool_size: [1]
  audit:
    type: postgres
    dsn: postgresql://audit
  ldap:
    type: ldap
    url: ldap://x
"""


def test_target_validator_errors_at_the_target_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", TARGETS_FOR_VALIDATION)
    errors = load_errors(
        path, target_validators={"postgres": validate_with(PgOptions), "ldap": lambda *_: None}
    )
    assert all(e.file == str(path) for e in errors)
    assert triples(errors) == {
        (line_of(path, "manage_login"), "targets.warehouse.manage_login"),
        (line_of(path, "dssn"), "targets.warehouse.dssn"),
        (line_of(path, "pool_size"), "targets.warehouse.pool_size"),
        # a missing key is reported at the target itself
        (line_of(path, "warehouse:"), "targets.warehouse.dsn"),
    }
    assert find(errors, "targets.warehouse.dssn").message == "unknown key (check its spelling)"
    assert "valid boolean" in find(errors, "targets.warehouse.manage_login").message
    assert find(errors, "targets.warehouse.dsn").message == "Field required"


def test_target_validator_value_error_at_the_target(tmp_path: Path) -> None:
    def refuse(name: str, options: Mapping[str, Any]) -> object:
        raise ValueError(f"{name}: cannot use {options['dsn']}")

    path = write(tmp_path, "p.yaml", VALID)
    (error,) = load_errors(path, target_validators={"postgres": refuse})
    assert error.field == "targets.warehouse"
    assert error.line == line_of(path, "warehouse:")
    assert error.message == "warehouse: cannot use postgresql://db/warehouse"


@pytest.mark.parametrize(
    ("validators", "known"),
    [
        ({"ldap": lambda *_: None, "mysql": lambda *_: None}, "known: ldap, mysql"),
        ({}, "known: none"),
    ],
)
def test_unknown_target_type_when_validators_given(
    tmp_path: Path, validators: dict[str, Any], known: str
) -> None:
    path = write(tmp_path, "p.yaml", VALID)
    (error,) = load_errors(path, target_validators=validators)
    assert error.field == "targets.warehouse.type"
    assert error.line == line_of(path, "type: postgres")
    assert "unknown target type 'postgres'" in error.message
    assert known in error.message


def test_no_validators_means_no_type_check(tmp_path: Path) -> None:
    text = VALID.replace("type: postgres", "type: whatever")
    policy_set = load_policies(write(tmp_path, "p.yaml", text), env={})
    assert policy_set.targets["warehouse"].type == "whatever"


def test_valid_targets_pass_the_validators(tmp_path: Path) -> None:
    policy_set = load_policies(
        write(tmp_path, "p.yaml", VALID),
        env={},
        target_validators={"postgres": validate_with(PgOptions)},
    )
    assert policy_set.targets["warehouse"].options == {"dsn": "postgresql://db/warehouse"}


def test_example_folder_copy_loads(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "warehouse.yaml")
    policy_set = load_policies(folder, env={})
    assert [p.name for p in policy_set.policies] == ["warehouse-read"]
