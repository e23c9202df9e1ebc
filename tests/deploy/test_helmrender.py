"""The chart renderer itself (tests/deploy/helmrender): it must behave like `helm template`
on the features the chart uses, or the chart tests would prove nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from deploy_helpers import clean_env, parse_rendered


def _run(helmrender: Path, chart: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helmrender), "-chart", str(chart), *args], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=False)


def _write(chart: Path, values: str, **templates: str) -> None:
    (chart / "values.yaml").write_text(values, encoding="utf-8")
    for name, body in templates.items():
        (chart / "templates" / name.replace("__", ".")).write_text(body, encoding="utf-8")


def test_helpers_values_and_builtin_objects(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "replicas: 3\nbig: 65536\nlabels: {b: two, a: one}\nname: ''\n",
           _helpers__tpl='{{- define "probe.name" -}}{{ default .Chart.Name .Values.name }}'
                         '{{- end }}',
           cm__yaml="""apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "probe.name" . }}-{{ .Release.Name }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- toYaml .Values.labels | nindent 4 }}
data:
  replicas: {{ .Values.replicas | quote }}
  big: {{ .Values.big | quote }}
  chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
  app: {{ .Chart.AppVersion | quote }}
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
  minor: {{ .Capabilities.KubeVersion.Minor | quote }}
  hasApps: {{ .Capabilities.APIVersions.Has "apps/v1" | quote }}
  hasCRD: {{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" | quote }}
  template: {{ .Template.Name | quote }}
  install: {{ .Release.IsInstall | quote }}
  missing: "{{ .Values.nothing }}"
""")
    done = _run(helmrender, tmp_chart, "-name", "rel", "-namespace", "ns",
                "-kube-version", "1.29.4")
    assert done.returncode == 0, done.stderr
    [manifest] = parse_rendered(done.stdout)
    assert manifest.source == "probe/templates/cm.yaml"
    assert manifest.body["metadata"] == {"name": "probe-rel", "namespace": "ns",
                                         "labels": {"a": "one", "b": "two"}}
    assert manifest.body["data"] == {
        # sigs.k8s.io/yaml makes numbers float64, printed like Helm prints them.
        "replicas": "3", "big": "65536", "chart": "probe-1.2.3", "app": "4.5",
        "kube": "v1.29.4", "minor": "29", "hasApps": "true", "hasCRD": "false",
        "template": "probe/templates/cm.yaml", "install": "true",
        # A missing key renders as nothing (Helm's missingkey=zero + "<no value>" removal).
        "missing": "",
    }


def test_strict_mode_refuses_missing_keys(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "web: {replicas: 2}\n",
           cm__yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
                    "data:\n  r: {{ .Values.web.replica | quote }}\n")
    lenient = _run(helmrender, tmp_chart)
    assert lenient.returncode == 0, lenient.stderr
    # Missing → nil, and sprig's quote drops nil: `r:` with no value at all.
    assert parse_rendered(lenient.stdout)[0].body["data"] == {"r": None}
    strict = _run(helmrender, tmp_chart, "-strict")
    assert strict.returncode == 1
    assert 'map has no entry for key "replica"' in strict.stderr


def test_value_files_merge_deeply_and_null_deletes(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "a: {keep: 1, change: 2, drop: 3}\nlist: [1, 2]\n",
           cm__yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
                    "data:\n  a: {{ toJson .Values.a | quote }}\n"
                    "  list: {{ toJson .Values.list | quote }}\n"
                    "  set: {{ toJson .Values.set | quote }}\n")
    override = tmp_chart.parent / "override.yaml"
    override.write_text("a: {change: 20, drop: null, new: 4}\nlist: [9]\n", encoding="utf-8")
    done = _run(helmrender, tmp_chart, "-f", str(override), "-set", "set.n=5",
                "-set", "set.b=true", "-set", "set.s=05", "-set", "a.keep=10")
    assert done.returncode == 0, done.stderr
    [manifest] = parse_rendered(done.stdout)
    assert manifest.body["data"] == {
        "a": '{"change":20,"keep":10,"new":4}',  # lists replace, maps merge, null deletes
        "list": "[9]",
        "set": '{"b":true,"n":5,"s":"05"}',  # --set typing: bool, int64, "05" stays a string
    }


def test_tpl_and_required(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "greeting: 'hello {{ .Values.who }}'\nwho: world\nneeded: ''\n",
           cm__yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
                    "data:\n  g: {{ tpl .Values.greeting . | quote }}\n"
                    "  n: {{ required \"set needed\" .Values.needed | quote }}\n")
    failed = _run(helmrender, tmp_chart)
    assert failed.returncode == 1
    assert "execution error: set needed" in failed.stderr
    done = _run(helmrender, tmp_chart, "-set", "needed=yes")
    assert done.returncode == 0, done.stderr
    [manifest] = parse_rendered(done.stdout)
    assert manifest.body["data"] == {"g": "hello world", "n": "yes"}


def test_fail_env_and_bad_yaml_are_errors(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "x: 1\n", cm__yaml='{{ fail "no way" }}')
    assert "execution error: no way" in _run(helmrender, tmp_chart).stderr
    # Helm removes sprig's env/expandenv: a chart must not read the renderer's environment.
    _write(tmp_chart, "x: 1\n", cm__yaml='{{ env "HOME" }}')
    assert 'function "env" not defined' in _run(helmrender, tmp_chart).stderr
    _write(tmp_chart, "x: 1\n", cm__yaml="apiVersion: v1\nkind: ConfigMap\n  bad: [\n")
    assert "YAML parse error on probe/templates/cm.yaml" in _run(helmrender, tmp_chart).stderr
    _write(tmp_chart, "x: 1\n", cm__yaml="metadata: {name: x}\n")
    assert "without apiVersion or kind" in _run(helmrender, tmp_chart).stderr


def test_partials_and_empty_output_are_not_manifests(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "on: false\n",
           _helpers__tpl='{{- define "x" }}apiVersion: v1{{ end }}',
           off__yaml="{{- if .Values.on }}\napiVersion: v1\nkind: ConfigMap\n{{- end }}\n",
           two__yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"
                     "# only a comment\n---\napiVersion: v1\nkind: Secret\n"
                     "metadata: {name: b}\n")
    done = _run(helmrender, tmp_chart)
    assert done.returncode == 0, done.stderr
    assert [(m.source, m.kind) for m in parse_rendered(done.stdout)] == [
        ("probe/templates/two.yaml", "ConfigMap"), ("probe/templates/two.yaml", "Secret")]


def test_chart_metadata_is_checked(helmrender: Path, tmp_chart: Path) -> None:
    _write(tmp_chart, "x: 1\n")
    (tmp_chart / "Chart.yaml").write_text("apiVersion: v1\nname: probe\nversion: 1.0.0\n",
                                          encoding="utf-8")
    assert "apiVersion must be v2" in _run(helmrender, tmp_chart).stderr
    (tmp_chart / "Chart.yaml").write_text("apiVersion: v2\nname: other\nversion: 1.0.0\n",
                                          encoding="utf-8")
    assert "must be named like the chart" in _run(helmrender, tmp_chart).stderr
