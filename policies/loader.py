"""Load policy files (one YAML file or a folder of them) into a validated ``PolicySet``.

Every problem is reported with file, line and field, all at once, so ``jitgate policy
check`` can show a user the whole list instead of one error per run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from policies.model import Policy, PolicyFile, TargetSpec

__all__ = ["PolicyError", "PolicyLoadError", "PolicySet", "load_policies", "validate_with"]

# ${VAR} or ${VAR:-default}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Validates a target's connector-specific options; raises ValidationError or ValueError.
TargetValidator = Callable[[str, Mapping[str, Any]], object]


@dataclass(frozen=True)
class PolicyError:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class PolicyLoadError(Exception):
    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class PolicySet:
    targets: Mapping[str, TargetSpec] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()

    def by_name(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)

    def for_source(self, source: str) -> tuple[Policy, ...]:
        return tuple(p for p in self.policies if p.source == source)


def load_policies(
    path: Path,
    *,
    env: Mapping[str, str],
    target_validators: Mapping[str, TargetValidator] | None = None,
) -> PolicySet:
    """Read ``path`` (a ``.yaml``/``.yml`` file or a folder of them, sorted by name).

    ``env`` feeds ``${VAR}`` references; ``target_validators`` maps a target ``type``
    to a callable that validates that target's own options (the connector's config
    model), so a bad DSN key is reported here, with its line, like any other error.
    """
    files = _policy_files(path)
    errors: list[PolicyError] = []
    targets: dict[str, TargetSpec] = {}
    target_files: dict[str, str] = {}
    policies: list[Policy] = []
    policy_lines: dict[str, tuple[str, int | None]] = {}
    grant_refs: list[tuple[str, int | None, str, str]] = []

    if not files:
        errors.append(PolicyError(str(path), None, "", "no policy files (*.yaml, *.yml) found"))
    for file in files:
        loaded = _load_file(file, env, errors)
        if loaded is None:
            continue
        document, node = loaded
        for name, spec in document.targets.items():
            line = _line_of(node, ("targets", name))
            if name in targets:
                errors.append(
                    PolicyError(
                        str(file), line, f"targets.{name}", f"also defined in {target_files[name]}"
                    )
                )
                continue
            targets[name] = spec
            target_files[name] = str(file)
            validator = (target_validators or {}).get(spec.type)
            if target_validators is not None and validator is None:
                errors.append(
                    PolicyError(
                        str(file),
                        _line_of(node, ("targets", name, "type")),
                        f"targets.{name}.type",
                        f"unknown target type {spec.type!r} "
                        f"(known: {', '.join(sorted(target_validators)) or 'none'})",
                    )
                )
            elif validator is not None:
                errors.extend(_validate_options(file, node, name, spec, validator))
        for index, policy in enumerate(document.policies):
            line = _line_of(node, ("policies", index, "name"))
            if policy.name in policy_lines:
                other_file, other_line = policy_lines[policy.name]
                errors.append(
                    PolicyError(
                        str(file),
                        line,
                        f"policies[{index}].name",
                        f"policy {policy.name!r} also defined at {other_file}:{other_line}",
                    )
                )
                continue
            policy_lines[policy.name] = (str(file), line)
            policies.append(policy)
            for g_index, grant in enumerate(policy.grants):
                g_line = _line_of(node, ("policies", index, "grants", g_index, "target"))
                grant_refs.append(
                    (str(file), g_line, f"policies[{index}].grants[{g_index}].target", grant.target)
                )

    for file_name, line, field_path, target in grant_refs:
        if target not in targets:
            errors.append(
                PolicyError(file_name, line, field_path, f"unknown target {target!r}")
            )
    if errors:
        raise PolicyLoadError(errors)
    return PolicySet(targets=targets, policies=tuple(policies))


def _policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
    if path.exists():
        return [path]
    return []


def _load_file(
    file: Path, env: Mapping[str, str], errors: list[PolicyError]
) -> tuple[PolicyFile, yaml.Node] | None:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(PolicyError(str(file), None, "", f"cannot read: {exc.__class__.__name__}"))
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        errors.append(PolicyError(str(file), line, "", f"invalid YAML: {exc.problem}"))
        return None
    except yaml.YAMLError as exc:
        errors.append(PolicyError(str(file), None, "", f"invalid YAML: {exc}"))
        return None
    if node is None:
        errors.append(PolicyError(str(file), 1, "", "the file is empty"))
        return None
    own: list[PolicyError] = []
    data = _to_python(node, env, file, (), own)
    errors.extend(own)
    try:
        document = PolicyFile.model_validate(data)
    except ValidationError as exc:
        errors.extend(_from_validation(file, node, exc))
        return None
    # Keep validating the rest of the file, but never load a file with errors.
    return None if own else (document, node)


def _validate_options(
    file: Path, node: yaml.Node, name: str, spec: TargetSpec, validator: TargetValidator
) -> Iterator[PolicyError]:
    try:
        validator(name, spec.options)
    except ValidationError as exc:
        yield from _from_validation(file, node, exc, prefix=("targets", name))
    except ValueError as exc:
        yield PolicyError(str(file), _line_of(node, ("targets", name)), f"targets.{name}", str(exc))


def _from_validation(
    file: Path, node: yaml.Node, exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> Iterator[PolicyError]:
    for err in exc.errors(include_url=False, include_input=False):
        loc = prefix + tuple(err["loc"])
        # pydantic reports union/tagged branches in loc; drop non-key parts it adds
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        yield PolicyError(str(file), _line_of(node, loc), _dotted(loc), message)


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """Line of the deepest node along ``loc`` that exists (1-based)."""
    best = node.start_mark.line + 1 if node is not None else None
    current = node
    for part in loc:
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    best = key_node.start_mark.line + 1
                    current = value_node
                    break
            else:
                return best
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(current.value):
                return best
            current = current.value[part]
            best = current.start_mark.line + 1
        else:
            return best
    return best


def _to_python(
    node: yaml.Node,
    env: Mapping[str, str],
    file: Path,
    loc: tuple[str | int, ...],
    errors: list[PolicyError],
) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                errors.append(
                    PolicyError(
                        str(file),
                        key_node.start_mark.line + 1,
                        _dotted((*loc, key)),
                        "duplicate key",
                    )
                )
            out[key] = _to_python(value_node, env, file, (*loc, key), errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, env, file, (*loc, i), errors) for i, item in enumerate(node.value)
        ]
    try:
        value = _scalar(node)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "cannot read this value"
        errors.append(PolicyError(str(file), node.start_mark.line + 1, _dotted(loc), problem))
        return None
    if isinstance(value, str) and "${" in value:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name not in env and default is not None:
                return default
            if name not in env:
                errors.append(
                    PolicyError(
                        str(file),
                        node.start_mark.line + 1,
                        _dotted(loc),
                        f"environment variable {name} is not set",
                    )
                )
                return ""
            return env[name]

        return _VAR.sub(substitute, value)
    return value


def _scalar(node: yaml.Node) -> Any:
    # Resolve the scalar with the safe loader's own rules (ints, bools, nulls).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def validate_with(model: type[BaseModel]) -> TargetValidator:
    """Adapter for a connector config model used as a target validator."""

    def validate(_name: str, options: Mapping[str, Any]) -> object:
        return model.model_validate(dict(options))

    return validate
