"""The target contract suite runs once per target kind, each against its real server."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator

import pytest

from tests.contract.targets import Harness

# Every shipped target; a new target adds its harness module and its name here.
TARGET_KINDS = ["postgres", "mysql", "redis_acl", "ldap", "http"]


@pytest.fixture(params=TARGET_KINDS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    module = importlib.import_module(f"tests.contract.targets.{request.param}")
    built: Harness = module.harness(request, uuid.uuid4().hex[:8])
    yield built
    for step in built.cleanup:
        step()
