"""Every key of the policy file model is in the README's Policies reference table (the
names are a contract with users; a key nobody can find is a key nobody uses right)."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from policies.model import PolicyFile

README = Path(__file__).resolve().parents[2] / "README.md"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
        return
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def _keys(model: type[BaseModel], path: str = "") -> Iterator[str]:
    """Dotted paths of every key a policy file may contain."""
    for name, info in model.model_fields.items():
        key = info.alias or name
        dotted = f"{path}.{key}" if path else key
        yield dotted
        for inner in _models_in(info.annotation):
            yield from _keys(inner, dotted)


def _reference_words() -> set[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Policies\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, "README has no '## Policies' section"
    words: set[str] = set()
    for line in match.group(1).splitlines():
        if line.startswith("|"):
            for span in re.findall(r"`([^`]+)`", line):
                words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span))
    return words


def test_the_model_walk_finds_nested_keys() -> None:
    keys = set(_keys(PolicyFile))
    assert {"version", "policies.approvers.min_approvals", "policies.principal.from",
            "targets.reserved_principals", "policies.drift.missing"} <= keys


def test_every_policy_key_is_in_the_reference_table() -> None:
    words = _reference_words()
    missing = sorted(k for k in _keys(PolicyFile) if k.rsplit(".", 1)[-1] not in words)
    assert not missing, "README '## Policies' reference table lacks: " + ", ".join(missing)
