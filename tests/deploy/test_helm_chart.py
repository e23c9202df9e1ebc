"""The Helm chart (deploy/helm/jitgate), rendered with Go text/template + sprig
(tests/deploy/helmrender) and checked against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors) and against jitgate itself: its
CLI commands, settings and secret fields."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from deploy_helpers import (
    CHART,
    DEPLOY,
    Manifest,
    Render,
    assert_cli_command,
    heartbeat_every,
    load_yaml,
)
from kubernetes_validate import utils as kv_utils

from policies.loader import load_policies
from worker.runtime import target_validators
from worker.settings import SECRET_FIELDS, Settings

CI_VALUES = CHART / "ci" / "test-values.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", str(kv_utils.latest_version()))
WORKLOAD_KINDS = {"Deployment", "Job", "CronJob", "Pod"}


# ------------------------------------------------------------------ helpers


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    body = manifest.body
    if manifest.kind == "Pod":
        spec: dict[str, Any] = body["spec"]
    elif manifest.kind == "CronJob":
        spec = body["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = body["spec"]["template"]["spec"]
    return spec


def pod_labels(manifest: Manifest) -> dict[str, str]:
    body = manifest.body
    if manifest.kind == "Pod":
        labels: dict[str, str] = body["metadata"]["labels"]
    elif manifest.kind == "CronJob":
        labels = body["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    else:
        labels = body["spec"]["template"]["metadata"]["labels"]
    return labels


def workloads(manifests: list[Manifest]) -> Iterator[Manifest]:
    return (m for m in manifests if m.kind in WORKLOAD_KINDS)


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(manifest)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def one(manifests: list[Manifest], kind: str, suffix: str) -> Manifest:
    found = [m for m in manifests if m.kind == kind and m.name.endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[m.name for m in found]}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def env_value(container: dict[str, Any], name: str) -> str:
    return str(env_of(container)[name]["value"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists expressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (
                op == "NotIn" and labels.get(key) in values) or (
                op == "Exists" and key not in labels) or (
                op == "DoesNotExist" and key in labels):
            return False
    return True


def jitgate_command(container: dict[str, Any]) -> list[str] | None:
    """The jitgate CLI words a container runs (image entrypoint `jitgate` + args)."""
    if "command" in container:
        command = [str(c) for c in container["command"]]
        return command[1:] if command[0] == "jitgate" else None
    return [str(a) for a in container.get("args", [])]


# ------------------------------------------------------------------ schema and shape


@pytest.mark.parametrize("values", ["default", "ci", "cronjob"])
def test_every_manifest_is_valid_kubernetes(render: Render, values: str) -> None:
    files = (CI_VALUES,) if values != "default" else ()
    sets = {"beat.mode": "cronjob"} if values == "cronjob" else {}
    manifests = render(values_files=files, sets=sets).manifests()
    assert manifests
    checked = 0
    for manifest in manifests:
        if manifest.body["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: checked structurally in test_service_monitor
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest.body, version, strict=True)
            except kv_utils.ValidationError as exc:
                pytest.fail(f"{manifest.source} {manifest.kind}/{manifest.name} is invalid "
                            f"for Kubernetes {version} at {list(exc.path)}: {exc.message}")
        checked += 1
    assert checked >= 6


def test_default_values_render_the_core_only(default_manifests: list[Manifest]) -> None:
    kinds = sorted((m.kind, m.name) for m in default_manifests)
    assert kinds == [
        ("Deployment", "jitgate-beat"), ("Deployment", "jitgate-web"),
        ("Deployment", "jitgate-worker"), ("Job", "jitgate-migrate"),
        ("Pod", "jitgate-test-connection"), ("Service", "jitgate"),
        ("Service", "jitgate-worker-metrics"), ("ServiceAccount", "jitgate"),
    ]


def test_ci_values_switch_on_every_optional_object(ci_manifests: list[Manifest]) -> None:
    kinds = {m.kind for m in ci_manifests}
    assert {"ServiceMonitor", "PodDisruptionBudget", "Ingress", "ConfigMap"} <= kinds
    assert not kinds & {"Secret"}, "the chart must never create a Secret"


@pytest.mark.parametrize("mode", ["deployment", "cronjob"])
def test_names_fit_dns_labels_with_the_longest_release_name(render: Render, mode: str) -> None:
    name = "a" * 53  # Helm's limit for release names
    manifests = render(values_files=(CI_VALUES,), name=name, sets={"beat.mode": mode}
                       ).manifests()
    names = [(m.kind, m.name) for m in manifests]
    assert len(set(names)) == len(names), f"duplicate object names: {names}"
    for kind, object_name in names:
        # CronJob: its Jobs append 11 characters to the name.
        limit = 52 if kind == "CronJob" else 63
        assert len(object_name) <= limit, f"{kind} {object_name} is longer than {limit}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", object_name), object_name


# ------------------------------------------------------------------ security


@pytest.mark.parametrize("values", ["default", "ci", "cronjob"])
def test_every_pod_runs_locked_down(render: Render, values: str) -> None:
    files = (CI_VALUES,) if values != "default" else ()
    sets = {"beat.mode": "cronjob"} if values == "cronjob" else {}
    dockerfile_uid = int(re.findall(r"^USER\s+(\d+)", (DEPLOY / "Dockerfile").read_text(
        encoding="utf-8"), re.MULTILINE)[-1])
    for manifest in workloads(render(values_files=files, sets=sets).manifests()):
        spec = pod_spec(manifest)
        where = f"{manifest.kind}/{manifest.name}"
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] == dockerfile_uid != 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in containers(manifest):
            sc = container["securityContext"]
            at = f"{where} container {container['name']}"
            assert sc["runAsNonRoot"] is True, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc.get("privileged", False) is False, at
            assert sc["capabilities"] == {"drop": ["ALL"]}, at
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, at
            assert container["resources"]["limits"]["memory"], at
            assert container["resources"]["requests"], at


def test_writable_paths_are_volumes(ci_manifests: list[Manifest]) -> None:
    """Under a read-only root filesystem, every folder jitgate writes is a mounted volume:
    /tmp, JITGATE_DATA_DIR (heartbeat, beat schedule) and JITGATE_METRICS_DIR."""
    for manifest in workloads(ci_manifests):
        volumes = {v["name"]: v for v in pod_spec(manifest).get("volumes", [])}
        for container in containers(manifest):
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for mount in mounts.values():
                assert mount["name"] in volumes, f"{manifest.name}: no volume {mount['name']}"
            if jitgate_command(container) is None:
                continue
            env = env_of(container)
            wanted = ["/tmp", env["JITGATE_DATA_DIR"]["value"]]
            if manifest.kind == "Deployment":
                wanted.append(env["JITGATE_METRICS_DIR"]["value"])
            for path in wanted:
                assert path in mounts, f"{manifest.name}/{container['name']}: {path} not mounted"
                assert not mounts[path].get("readOnly"), path
                assert "emptyDir" in volumes[mounts[path]["name"]], path


def _entries(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) of a YAML document, list items included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), value
            yield from _entries(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, str(index)), value
            yield from _entries(value, (*path, str(index)))


def test_secrets_never_inline(ci_manifests: list[Manifest]) -> None:
    secret_like = re.compile(r"SECRET|TOKEN|PASSWORD|DSN|DATABASE_URL|BROKER_URL")
    for file in (CHART / "values.yaml", CI_VALUES):
        for path, value in _entries(load_yaml(file)):
            # secretFiles maps a variable to a key *name* in the Secret: not a secret.
            if secret_like.search(path[-1]) and path[:2] != ("secretFiles", "files"):
                pytest.fail(f"{file.name}: {'.'.join(path)} puts a secret in values")
            if path[-1] == "name" and isinstance(value, str) and secret_like.search(value):
                item = dict(_entries(load_yaml(file))).get(path[:-1])
                assert isinstance(item, dict) and "valueFrom" in item, f"{file.name}: {path}"
    for manifest in workloads(ci_manifests):
        for container in containers(manifest):
            if jitgate_command(container) is None:
                continue
            assert container["envFrom"] == [{"secretRef": {"name": "jitgate-ci"}}]
            for name, item in env_of(container).items():
                if re.search(r"SECRET|TOKEN|PASSWORD|DSN|DATABASE_URL|BROKER_URL", name) and (
                        not name.endswith("_FILE")):
                    assert "valueFrom" in item, f"{manifest.name}: {name} has an inline value"


# ------------------------------------------------------------------ jitgate itself


def test_containers_run_real_cli_commands(render: Render) -> None:
    seen: set[str] = set()
    for sets in ({}, {"beat.mode": "cronjob"}):
        for manifest in workloads(render(values_files=(CI_VALUES,), sets=sets).manifests()):
            for container in containers(manifest):
                probes = [container.get(p, {}).get("exec", {}).get("command")
                          for p in ("startupProbe", "livenessProbe", "readinessProbe")]
                for words in [jitgate_command(container), *[
                        p[1:] for p in probes if p and p[0] == "jitgate"]]:
                    if words:
                        assert_cli_command(words)
                        seen.add(" ".join(w for w in words if not w.startswith("-")
                                          and not w.isdigit()))
    assert {"web", "worker", "beat", "db upgrade", "sweep", "reconcile", "alive"} <= seen


def test_environment_names_are_jitgate_settings(ci_manifests: list[Manifest]) -> None:
    """Every JITGATE_* variable the chart sets is a real setting (a typo would be ignored
    silently by pydantic-settings), and every _FILE twin belongs to a secret setting."""
    fields = set(Settings.model_fields)
    for manifest in workloads(ci_manifests):
        for container in containers(manifest):
            for name in env_of(container):
                if not name.startswith("JITGATE_"):
                    continue
                field = name.removeprefix("JITGATE_").lower()
                if field.endswith("_file"):
                    assert field.removesuffix("_file") in SECRET_FIELDS, name
                else:
                    assert field in fields, f"{manifest.name}: {name} is not a jitgate setting"


def test_every_secret_setting_can_be_a_mounted_file(render: Render) -> None:
    sets = {f"secretFiles.files.JITGATE_{f.upper()}": f.replace("_", "-") for f in SECRET_FIELDS}
    web = one(render(sets=sets).manifests(), "Deployment", "-web")
    container = pod_spec(web)["containers"][0]
    for field in SECRET_FIELDS:
        path = env_value(container, f"JITGATE_{field.upper()}_FILE")
        assert path == f"/run/secrets/jitgate/{field.replace('_', '-')}"
    items = next(v for v in pod_spec(web)["volumes"] if v["name"] == "secret-files")
    assert len(items["secret"]["items"]) == len(SECRET_FIELDS)
    # A variable without a _FILE twin would be ignored by jitgate: the chart refuses it.
    refused = render(sets={"secretFiles.files.JITGATE_DATABASE_URL": "db"})
    assert refused.returncode == 1
    assert "JITGATE_DATABASE_URL has no _FILE twin" in refused.stderr


def test_web_probes_and_port(ci_manifests: list[Manifest]) -> None:
    web = one(ci_manifests, "Deployment", "-web")
    [container] = pod_spec(web)["containers"]
    assert container["args"] == ["web"]
    port = container["ports"][0]
    assert port["name"] == "http"
    assert port["containerPort"] == int(env_value(container, "JITGATE_HTTP_PORT"))
    assert env_value(container, "JITGATE_HTTP_HOST") == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz?scope=intake",
                                                      "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    service = one(ci_manifests, "Service", "jitgate")
    assert service.body["spec"]["ports"][0]["targetPort"] == "http"
    assert selects({"matchLabels": service.body["spec"]["selector"]}, pod_labels(web))


def test_worker_liveness_is_the_heartbeat_and_grace_outlasts_tasks(
        ci_manifests: list[Manifest]) -> None:
    worker = one(ci_manifests, "Deployment", "-worker")
    spec = pod_spec(worker)
    container = next(c for c in spec["containers"] if c["name"] == "worker")
    assert container["args"] == ["worker"]
    assert "readinessProbe" not in container  # a worker serves no traffic
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["jitgate", "alive", "--max-age"]
        # Several heartbeats may be missed before the worker counts as dead.
        assert float(command[3]) >= 3 * heartbeat_every()
        assert container[probe]["timeoutSeconds"] >= 10  # the probe imports the app
    task_limit = int(env_value(container, "JITGATE_TASK_TIME_LIMIT"))
    assert task_limit < int(env_value(container, "JITGATE_VISIBILITY_TIMEOUT"))
    assert spec["terminationGracePeriodSeconds"] > task_limit
    # Settings' own default, for installs that drop the variable.
    default_limit = Settings.model_fields["task_time_limit"].default
    assert spec["terminationGracePeriodSeconds"] > default_limit


def test_grace_not_above_task_time_limit_is_refused(render: Render) -> None:
    refused = render(sets={"worker.terminationGracePeriodSeconds": "180"})
    assert refused.returncode == 1
    assert "must exceed config.taskTimeLimit (180)" in refused.stderr
    refused = render(sets={"config.taskTimeLimit": "1000"})  # above the visibility timeout
    assert "taskSoftTimeLimit < taskTimeLimit < visibilityTimeout" in refused.stderr
    ok = render(sets={"config.taskTimeLimit": "300", "worker.terminationGracePeriodSeconds":
                      "330"}).manifests()
    worker = one(ok, "Deployment", "-worker")
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == 330
    assert env_value(pod_spec(worker)["containers"][0], "JITGATE_TASK_TIME_LIMIT") == "300"


def test_exactly_one_beat(render: Render) -> None:
    beat = one(render(sets={"web.replicaCount": "5", "worker.replicaCount": "7"}).manifests(),
               "Deployment", "-beat")
    assert beat.body["spec"]["replicas"] == 1
    assert beat.body["spec"]["strategy"] == {"type": "Recreate"}
    assert pod_spec(beat)["containers"][0]["args"] == ["beat"]


def test_cronjob_mode_replaces_beat(render: Render) -> None:
    manifests = render(sets={"beat.mode": "cronjob"}).manifests()
    assert not [m for m in manifests if m.name.endswith("-beat")]
    jobs = {m.name: m for m in manifests if m.kind == "CronJob"}
    assert set(jobs) == {"jitgate-sweep", "jitgate-reconcile"}
    for name, job in jobs.items():
        spec = job.body["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
        assert pod_spec(job)["restartPolicy"] == "Never"
        assert pod_spec(job)["containers"][0]["args"] == [name.removeprefix("jitgate-")]
    assert render(sets={"beat.mode": "both"}).returncode == 1


def test_migration_job_runs_before_everything(ci_manifests: list[Manifest]) -> None:
    job = one(ci_manifests, "Job", "-migrate")
    annotations = job.body["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = pod_spec(job)
    assert spec["containers"][0]["args"] == ["db", "upgrade"]
    assert spec["restartPolicy"] == "Never"
    # A pre-install hook runs before the release's own objects exist: it may not need them.
    own = {m.name for m in ci_manifests if not m.body["metadata"].get("annotations", {})
           .get("helm.sh/hook")}
    assert spec.get("serviceAccountName") not in own
    for volume in spec.get("volumes", []):
        assert volume.get("configMap", {}).get("name") not in own, volume
    for item in spec["containers"][0].get("env", []):
        ref = item.get("valueFrom", {}).get("configMapKeyRef", {}).get("name")
        assert ref not in own, item


def test_policies_configmap_is_mounted_and_loads(ci_manifests: list[Manifest],
                                                 tmp_path: Path) -> None:
    configmap = one(ci_manifests, "ConfigMap", "-policies")
    for name, body in configmap.body["data"].items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    loaded = load_policies(tmp_path, env={"WAREHOUSE_DSN": "postgresql://x@db/warehouse"},
                           target_validators=target_validators())
    assert [p.name for p in loaded.policies] == ["warehouse-read"]
    checksum = None
    for manifest in (m for m in ci_manifests if m.kind == "Deployment"):
        container = pod_spec(manifest)["containers"][0]
        path = env_value(container, "JITGATE_POLICY_PATH")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
        volume = next(v for v in pod_spec(manifest)["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == configmap.name
        annotations = manifest.body["spec"]["template"]["metadata"]["annotations"]
        checksum = checksum or annotations["checksum/policies"]
        assert annotations["checksum/policies"] == checksum  # a policy change rolls pods


def test_metrics_dir_and_worker_metrics_sidecar(ci_manifests: list[Manifest]) -> None:
    worker = one(ci_manifests, "Deployment", "-worker")
    spec = pod_spec(worker)
    main_c = next(c for c in spec["containers"] if c["name"] == "worker")
    sidecar = next(c for c in spec["containers"] if c["name"] == "metrics")
    metrics_dir = env_value(main_c, "JITGATE_METRICS_DIR")
    assert env_value(sidecar, "JITGATE_METRICS_DIR") == metrics_dir

    def volume_at(container: dict[str, Any]) -> str:
        return str(next(m["name"] for m in container["volumeMounts"]
                        if m["mountPath"] == metrics_dir))

    assert volume_at(main_c) == volume_at(sidecar)  # the sidecar reads the workers' files
    # The sidecar is jitgate's own metrics server (a real command: see the command test).
    assert sidecar["args"][:1] == ["serve-metrics"]
    assert sidecar["args"][-1] == str(sidecar["ports"][0]["containerPort"])
    service = one(ci_manifests, "Service", "-worker-metrics")
    assert service.body["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": service.body["spec"]["selector"]}, pod_labels(worker))
    assert service.body["spec"]["ports"][0]["targetPort"] == sidecar["ports"][0]["name"]


def test_service_monitor(ci_manifests: list[Manifest]) -> None:
    """ServiceMonitor is a CRD (no schema in kubernetes-validate): check its structure and
    that it really selects the Services and ports that serve /metrics."""
    monitor = one(ci_manifests, "ServiceMonitor", "jitgate")
    assert monitor.body["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor.body["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor.body["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["namespaceSelector"] == {"matchNames": ["access"]}
    services = [m for m in ci_manifests if m.kind == "Service"
                and selects(spec["selector"], m.body["metadata"]["labels"])]
    assert sorted(s.name for s in services) == ["jitgate", "jitgate-worker-metrics"]
    ports = {p["name"] for s in services for p in s.body["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    assert {e["port"] for e in spec["endpoints"]} == {"http", "metrics"}


def test_pod_disruption_budgets(ci_manifests: list[Manifest]) -> None:
    budgets = {m.name: m.body["spec"] for m in ci_manifests if m.kind == "PodDisruptionBudget"}
    assert set(budgets) == {"jitgate-web", "jitgate-worker"}
    assert budgets["jitgate-web"].get("maxUnavailable") == 1
    assert budgets["jitgate-worker"].get("minAvailable") == 1
    for name, spec in budgets.items():
        assert not ("minAvailable" in spec and "maxUnavailable" in spec), name
        deployment = one(ci_manifests, "Deployment", name.removeprefix("jitgate"))
        assert selects(spec["selector"], pod_labels(deployment))
        assert spec["selector"]["matchLabels"] == deployment.body["spec"]["selector"][
            "matchLabels"]


def test_selectors_match_their_pods(render: Render) -> None:
    manifests = render(values_files=(CI_VALUES,)).manifests()
    pods = [m for m in manifests if m.kind == "Deployment"]
    for deployment in pods:
        assert selects(deployment.body["spec"]["selector"], pod_labels(deployment))
        others = [d for d in pods if d is not deployment]
        for other in others:  # each Deployment owns only its own pods
            assert not selects(deployment.body["spec"]["selector"], pod_labels(other))


def test_ingress_exposes_only_webhooks(ci_manifests: list[Manifest]) -> None:
    ingress = one(ci_manifests, "Ingress", "jitgate")
    for rule in ingress.body["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["path"].startswith("/webhooks")
            assert path["backend"]["service"] == {"name": "jitgate", "port": {"name": "http"}}


def test_ingress_refuses_metrics_path(render: Render, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"ingress": {"enabled": True, "hosts": [
        {"host": "x.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}),
        encoding="utf-8")
    refused = render(values_files=(values,))
    assert refused.returncode == 1
    assert "expose only /webhooks" in refused.stderr


def test_notes_and_helm_test(render: Render) -> None:
    result = render(notes=True)
    notes = result.notes()
    assert "jitgate-env" in notes  # the Secret to create
    assert "WARNING: no policies configured" in notes
    assert "grace 210 s > task time limit 180 s" in notes
    test_pod = one(result.manifests(), "Pod", "-test-connection")
    assert test_pod.body["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod.body["spec"]["containers"][0]["command"][2]
    compile(script, "test-connection", "exec")
    assert "http://jitgate:8080/healthz" in script


def test_chart_files_follow_helm_create(render: Render) -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    for path in ("values.yaml", "templates/_helpers.tpl", "templates/NOTES.txt",
                 "templates/tests/test-connection.yaml", "ci/test-values.yaml", ".helmignore"):
        assert (CHART / path).is_file(), path
    values = load_yaml(CHART / "values.yaml")
    for key in ("image", "imagePullSecrets", "serviceAccount", "podAnnotations",
                "podSecurityContext", "securityContext", "service", "ingress", "web",
                "worker", "beat", "existingSecret", "metrics"):
        assert key in values, key
    assert values["image"]["tag"] == ""  # defaults to appVersion
    web = one(render().manifests(), "Deployment", "-web")
    assert pod_spec(web)["containers"][0]["image"] == f"jitgate:{chart['appVersion']}"
