"""deploy/alerts/jitgate-rules.yaml: Prometheus rule-file shape, metric names that exist
in worker/metrics.py, and the rules run by `promtool` against synthetic series
(tests/deploy/alerts/jitgate-rules.test.yaml)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from deploy_helpers import DEPLOY, REPO, clean_env, load_yaml, require_tool

RULES = DEPLOY / "alerts" / "jitgate-rules.yaml"
RULE_TESTS = REPO / "tests" / "deploy" / "alerts" / "jitgate-rules.test.yaml"
METRICS_SOURCE = REPO / "worker" / "metrics.py"

# PromQL words that are not metric names.
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp_max",
    "clamp_min", "count_over_time", "delta", "deriv", "floor", "histogram_quantile",
    "idelta", "increase", "irate", "label_replace", "last_over_time", "max_over_time",
    "min_over_time", "predict_linear", "rate", "resets", "round", "scalar", "sort", "time",
    "timestamp", "vector", "sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk",
    "quantile", "count_values", "group",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Series Prometheus makes itself.
BUILTIN_SERIES = {"up"}
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (labels, strings, durations, functions and
    grouping clauses removed). Unknown functions are errors, so typos cannot hide."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(" + "|".join(GROUPING) + r")\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?[a-z]*", text):
        word = match.group()
        if word[0].isdigit() or word.lower() in KEYWORDS or word in GROUPING:
            continue
        if text[match.end():].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        names.add(word)
    return names


def defined_in_metrics(name: str) -> bool:
    """Whether worker/metrics.py defines `name` (as itself or as the family a counter or
    histogram sample belongs to: prometheus_client adds _total, _bucket, ...)."""
    source = METRICS_SOURCE.read_text(encoding="utf-8")
    candidates = {name} | {name.removesuffix(s) for s in SUFFIXES if name.endswith(s)}
    return any(f'"{candidate}"' in source for candidate in candidates)


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = load_yaml(RULES)
    assert set(document) == {"groups"}
    found: list[dict[str, Any]] = []
    names = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"] not in names
        names.add(group["name"])
        assert group["rules"]
        found.extend(group["rules"])
    return found


def test_rule_shape(rules: list[dict[str, Any]]) -> None:
    alerts = [r["alert"] for r in rules if "alert" in r]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"
    for rule in rules:
        assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                             "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "record" in rule:
            continue
        assert re.fullmatch(r"Jitgate[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description"} <= set(rule["annotations"])
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smhd])+", rule["for"]), rule["for"]


def test_the_alerts_ops_expect(rules: list[dict[str, Any]]) -> None:
    by_name = {r["alert"]: r for r in rules if "alert" in r}
    expected = {
        "JitgateRevokeFailed": "jitgate_revoke_failed",
        "JitgateGrantsOverdue": "jitgate_grants_overdue",
        "JitgatePollLagging": "jitgate_poll_lag_seconds",
        "JitgateDriftOpen": "jitgate_drift_open",
        "JitgateMetricsDown": "up",
        "JitgateMetricsAbsent": "jitgate_revoke_failed",
    }
    for alert, metric in expected.items():
        assert metric in metric_names(by_name[alert]["expr"]), alert
    # A revocation that keeps failing pages at once: no `for`, threshold zero.
    revoke = by_name["JitgateRevokeFailed"]
    assert "for" not in revoke and revoke["labels"]["severity"] == "critical"
    assert revoke["expr"].rstrip().endswith("> 0")


def test_every_metric_exists_in_worker_metrics(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        for name in metric_names(rule["expr"]):
            if name in BUILTIN_SERIES:
                continue
            assert name.startswith("jitgate_"), f"{rule.get('alert')}: {name}"
            assert defined_in_metrics(name), (
                f"{rule.get('alert')}: {name} is not defined in worker/metrics.py")


def test_metric_name_check_can_fail() -> None:
    expr = ('max without (instance) (jitgate_revoke_failed{a="x"}) > 0 and on (job) '
            'rate(jitgate_nonexistent_total[5m]) > bool 1 offset 5m')
    assert metric_names(expr) == {"jitgate_revoke_failed", "jitgate_nonexistent_total"}
    assert defined_in_metrics("jitgate_revoke_failed")
    assert not defined_in_metrics("jitgate_nonexistent_total")
    with pytest.raises(AssertionError, match="unknown PromQL function"):
        metric_names("rat(jitgate_revoke_failed[5m])")


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "Debian prometheus")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests(rules: list[dict[str, Any]]) -> None:
    """Each alert fires (once, though two listener replicas report the same gauges) when
    it should, stays quiet when it should not, and its annotations render."""
    promtool = require_tool("promtool", "Debian prometheus")
    done = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=False,
                          cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    assert tested == {r["alert"] for r in rules if "alert" in r}, "an alert without a test"
