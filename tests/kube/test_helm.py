"""The Helm chart (helm/tessera) with the real helm and kubectl against the real API server of
tests/kube/cluster.py: lint, the rendered objects, the values schema, a server-side dry run, and
an install whose Deployments and DaemonSet get pods (KWOK runs no containers but marks bound pods
Running), then an uninstall."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessera.api.queues import PLACEMENTS
from tessera.platform.settings import Settings
from tessera.scheduler.registry import SCHEDULERS
from tests.kube.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tessera"
GPU_LABEL = "tessera.io/gpu-node"
# PostgreSQL from a Secret the operator made: several replicas, no volume
POSTGRES = {
    "database": {"existingSecret": "tessera-db", "existingSecretKey": "url"},
    "controlPlane": {"replicas": 3},
    "persistence": {"enabled": False},
}
INGRESS = (
    "--set ingress.enabled=true --set ingress.hosts.controlPlane=tessera.example.com "
    "--set ingress.hosts.gateway=serve.example.com"
)
Obj = dict[str, Any]


def render(k8s: LocalCluster, *args: str, namespace: str = "tessera", release: str = "rel") -> list[Obj]:
    out = k8s.helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[Obj], kind: str, suffix: str = "") -> Obj:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs: list[Obj], kind: str, suffix: str = "") -> Obj:
    spec: Obj = one(docs, kind, suffix)["spec"]["template"]["spec"]
    return spec


def controlplane(docs: list[Obj]) -> Obj:
    container: Obj = pod_spec(docs, "Deployment", "-controlplane")["containers"][0]
    return container


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture
def values_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "postgres.yaml"
    path.write_text(yaml.safe_dump(POSTGRES))
    yield path


# lint and render ------------------------------------------------------------------------------


def test_lint_default_and_postgres_values(k8s: LocalCluster, values_file: Path) -> None:
    for extra in ([], ["--values", str(values_file)]):
        for strict in ([], ["--strict"]):
            r = k8s.helm("lint", str(CHART), *strict, *extra)
            assert "0 chart(s) failed" in r.stdout, r.stdout


def test_default_render_is_sqlite_on_one_replica_with_a_volume(k8s: LocalCluster) -> None:
    docs = render(k8s)
    cp = one(docs, "Deployment", "-controlplane")
    assert cp["spec"]["replicas"] == 1
    assert cp["spec"]["strategy"]["type"] == "Recreate"
    pvc = one(docs, "PersistentVolumeClaim", "-controlplane")
    pod = cp["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    (container,) = pod["containers"]
    assert container["command"] == [
        *("tessera", "up", "--host", "0.0.0.0", "--port", "8080", "--no-agent", "--no-gateway"),
    ]
    env = env_of(container)
    assert env["TESSERA_BACKEND"] == "kubernetes"
    assert env["TESSERA_KUBE_NAMESPACE"] == "tessera"
    assert env["TESSERA_HOME"] == "/var/lib/tessera"
    assert "TESSERA_DATABASE_URL" not in env  # SQLite under TESSERA_HOME
    assert env["TESSERA_KUBE_NODE_TOKEN_SECRET"] == "rel-tessera-node-token"
    assert env["TESSERA_KUBE_GATEWAY_TOKEN_SECRET"] == "rel-tessera-gateway-token"
    assert env["TESSERA_KUBE_SECONDARY_SCHEDULER"] == "true"
    assert env["TESSERA_GATEWAY_URL"] == "http://rel-tessera-gateway.tessera.svc"
    assert container["envFrom"] == [{"configMapRef": {"name": "rel-tessera-config"}}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    for secret in ("rel-tessera-node-token", "rel-tessera-gateway-token"):
        obj = one(docs, "Secret", secret)
        assert obj["type"] == "Opaque" and "data" not in obj
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "component", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], doc["metadata"]["name"], key)


def test_postgres_render_runs_replicas_without_a_volume(k8s: LocalCluster, values_file: Path) -> None:
    docs = render(k8s, "--values", str(values_file))
    cp = one(docs, "Deployment", "-controlplane")
    assert cp["spec"]["replicas"] == 3
    assert "strategy" not in cp["spec"]  # rolling updates
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    env = env_of(controlplane(docs))
    assert env["TESSERA_DATABASE_URL"] == {"secretKeyRef": {"name": "tessera-db", "key": "url"}}
    inline = render(
        k8s, "--set", "database.url=postgresql+psycopg://u:p@db/t", "--set", "persistence.enabled=false"
    )
    env = env_of(controlplane(inline))
    assert env["TESSERA_DATABASE_URL"] == {"secretKeyRef": {"name": "rel-tessera-database", "key": "url"}}
    assert one(inline, "Secret", "-database")["data"]["url"]  # the URL stays out of the pod spec


def test_rbac_names_every_verb_and_limits_secrets(k8s: LocalCluster) -> None:
    docs = render(k8s, "--set", "jobs.namespace=jobs")
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert len(roles) == 4
    for role in roles:
        for rule in role["rules"]:
            assert rule["verbs"] and isinstance(rule["verbs"], list), rule
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            if "secrets" in rule["resources"]:
                assert role["kind"] == "Role", "secrets only in the release namespace"
                assert sorted(rule["resourceNames"]) == [
                    "rel-tessera-gateway-token",
                    "rel-tessera-node-token",
                ]
                assert sorted(rule["verbs"]) == ["get", "patch", "update"]
    jobs = one(docs, "Role", "-controlplane-jobs")
    assert jobs["metadata"]["namespace"] == "jobs"
    assert one(docs, "RoleBinding", "-controlplane-jobs")["subjects"][0]["namespace"] == "tessera"
    pod_rule = next(r for r in jobs["rules"] if r["resources"] == ["pods"])
    assert pod_rule["verbs"] == ["get", "list", "watch", "create", "delete", "patch"]
    # the secondary scheduler's cluster-wide pod rights come and go with scheduler.secondary
    cluster = one(docs, "ClusterRole", "-controlplane")
    assert any("pods/binding" in r["resources"] for r in cluster["rules"])
    assert "tessera-rel-tessera" in cluster["metadata"]["name"]  # the namespace keeps releases apart
    off = one(render(k8s, "--set", "scheduler.secondary=false"), "ClusterRole", "-controlplane")
    assert all(r["resources"] in (["nodes"], ["podgroups"]) for r in off["rules"]), off["rules"]
    node = one(docs, "ClusterRole", "-node")
    assert {r["resources"][0]: r["verbs"] for r in node["rules"]} == {
        "pods": ["get", "list", "watch", "patch"],
        "nodes": ["get"],
    }
    # the gateway never speaks to the Kubernetes API
    assert one(docs, "ServiceAccount", "-gateway")["automountServiceAccountToken"] is False
    gateway = pod_spec(docs, "Deployment", "-gateway")
    assert gateway["automountServiceAccountToken"] is False
    assert not [
        d for d in docs if d["kind"].endswith("Binding") and d["subjects"][0]["name"].endswith("-gateway")
    ]


def test_node_daemonset(k8s: LocalCluster) -> None:
    docs = render(k8s)
    pod = pod_spec(docs, "DaemonSet", "-node")
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {GPU_LABEL: "true"}
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "device-plugins": "/var/lib/kubelet/device-plugins",
        "cache": "/var/lib/tessera/cache",
        "state": "/var/lib/tessera/node",
        "cgroup": "/sys/fs/cgroup",
    }
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cache"]["mountPath"] == "/var/lib/tessera/cache"
    assert mounts["cgroup"]["readOnly"] is True
    assert mounts["token"]["mountPath"] == "/var/run/tessera"
    token = next(v for v in pod["volumes"] if v["name"] == "token")["secret"]
    assert token == {"secretName": "rel-tessera-node-token", "optional": True}
    assert container["command"] == [
        *("tessera", "node", "--kubernetes", "--url", "http://rel-tessera-controlplane:8080"),
        *("--token-file", "/var/run/tessera/token", "--cache-dir", "/var/lib/tessera/cache"),
    ]
    env = env_of(container)
    assert env["TESSERA_ADVERTISE_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    for name in ("NODE_NAME", "TESSERA_NODE_NAME"):
        assert env[name] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["runAsUser"] == 0
    assert "runtimeClassName" not in pod_spec(render(k8s, "--set", "node.runtimeClassName="), "DaemonSet")


def test_gateway_and_ingress(k8s: LocalCluster) -> None:
    docs = render(
        k8s,
        *INGRESS.split(),
        *"--set ingress.tls[0].secretName=tls --set ingress.tls[0].hosts[0]=serve.example.com".split(),
    )
    (container,) = pod_spec(docs, "Deployment", "-gateway")["containers"]
    assert container["command"] == [
        *("tessera", "gateway", "--url", "http://rel-tessera-controlplane:8080"),
        *("--token-file", "/var/run/tessera/token", "--host", "0.0.0.0", "--port", "8000"),
        *("--name", "$(POD_NAME)"),  # each replica reports under its own pod's name
    ]
    assert env_of(container)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    service = one(docs, "Service", "-gateway")["spec"]
    assert service["ports"][0]["port"] == 80 and service["ports"][0]["targetPort"] == "http"
    rules = {
        r["host"]: r["http"]["paths"][0]["backend"]["service"]["name"]
        for r in one(docs, "Ingress")["spec"]["rules"]
    }
    assert rules == {
        "tessera.example.com": "rel-tessera-controlplane",
        "serve.example.com": "rel-tessera-gateway",
    }
    assert env_of(controlplane(docs))["TESSERA_GATEWAY_URL"] == "https://serve.example.com"
    off = render(k8s, "--set", "gateway.enabled=false")
    assert not [d for d in off if d["metadata"]["name"].endswith("-gateway")]
    assert "TESSERA_GATEWAY_URL" not in env_of(controlplane(off))


def test_config_becomes_tessera_settings(k8s: LocalCluster) -> None:
    docs = render(
        k8s,
        *"--set config.scheduler_interval=0.5 --set config.placement=fgd".split(),
        *'--set config.change_log_retention=1000000 --set-json config.checkpoints="s3://bucket/ckpt"'.split(),
    )
    data = one(docs, "ConfigMap", "-config")["data"]
    assert data == {
        "TESSERA_SCHEDULER_INTERVAL": "0.5",
        "TESSERA_PLACEMENT": "fgd",
        "TESSERA_CHANGE_LOG_RETENTION": "1000000",  # not 1e+06
        "TESSERA_CHECKPOINTS": "s3://bucket/ckpt",
    }
    # what the ConfigMap says, the control plane's Settings accept
    settings = Settings(**{k.removeprefix("TESSERA_").lower(): v for k, v in data.items()})
    assert settings.change_log_retention == 1_000_000 and settings.scheduler_interval == 0.5


def test_schema_follows_settings(k8s: LocalCluster) -> None:
    """The schema's view of the control plane's settings cannot drift from Settings, and every
    setting the chart sets itself is one that values.config may not override."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]["properties"]
    assert set(config) <= set(Settings.model_fields), set(config) - set(Settings.model_fields)
    assert config["placement"]["enum"] == list(PLACEMENTS)
    assert set(config["scheduler"]["enum"]) == set(SCHEDULERS)
    reserved = {key for key, rule in config.items() if rule.get("not") == {}}
    cp = controlplane(render(k8s))
    chart_sets = {name.removeprefix("TESSERA_").lower() for name in env_of(cp) if name.startswith("TESSERA_")}
    assert chart_sets | {"host", "port", "start_agent", "start_gateway"} <= reserved
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


# values the schema refuses, naming the field ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "controlPlane.replicas=2"], "/controlPlane/replicas"),
        (["--set", "persistence.enabled=false"], "/persistence/enabled"),
        (
            ["--set", "database.url=sqlite:////data/t.db", "--set", "controlPlane.replicas=2"],
            "/controlPlane/replicas",
        ),
        (["--set", "database.existingSecret=db", "--set", "controlPlane.replicas=2"], "/persistence/enabled"),
        (["--set", "replica=2"], "additional properties 'replica' not allowed"),
        (["--set", "controlPlane.replica=2"], "additional properties 'replica' not allowed"),
        (["--set", "gateway.replicas=-1"], "/gateway/replicas"),
        (["--set", "controlPlane.replicas=one"], "/controlPlane/replicas"),
        (["--set", "scheduler.secondary=maybe"], "/scheduler/secondary"),
        (["--set", "node.cacheDir=cache"], "/node/cacheDir"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "config.backend=local"], "/config/backend"),
        (["--set", "config.placement=best"], "/config/placement"),
        (["--set", "ingress.enabled=true"], "/ingress/hosts/controlPlane"),
    ],
)
def test_bad_values_are_refused_naming_the_field(k8s: LocalCluster, args: list[str], expected: str) -> None:
    for verb in ("template", "lint"):
        name = ["rel"] if verb == "template" else []
        r = k8s.helm(verb, *name, str(CHART), *args, check=False)
        assert r.returncode != 0, f"helm {verb} {args} passed"
        assert expected in r.stderr + r.stdout, r.stderr + r.stdout


def test_templates_refuse_sqlite_replicas_without_the_schema(k8s: LocalCluster) -> None:
    args = ["template", "rel", str(CHART), "--skip-schema-validation", "--set", "controlPlane.replicas=2"]
    r = k8s.helm(*args, check=False)
    assert r.returncode != 0 and "controlPlane.replicas: SQLite" in r.stderr, r.stderr


# against the API server -----------------------------------------------------------------------


def test_server_side_dry_run(k8s: LocalCluster, namespace: str, values_file: Path) -> None:
    """Every object, cluster-scoped ones included, as the API server would take it (strict
    field validation: a misspelt field fails)."""
    for extra in ([], ["--values", str(values_file), *INGRESS.split(), "--set", "config.placement=fgd"]):
        manifest = k8s.helm("template", "dry", str(CHART), "--namespace", namespace, *extra).stdout
        apply = ["apply", "--server-side", "--dry-run=server", "--namespace", namespace, "--filename", "-"]
        out = k8s.kubectl(*apply, input=manifest)
        applied = [line for line in out.splitlines() if "serverside-applied" in line]
        assert len(applied) == len([d for d in yaml.safe_load_all(manifest) if d]), out
        assert any(line.startswith("clusterrole.rbac.authorization.k8s.io/") for line in applied), out


def test_install_and_uninstall(k8s: LocalCluster, namespace: str, values_file: Path) -> None:
    assert k8s.kube is not None
    kube = k8s.kube
    release = f"t{uuid.uuid4().hex[:8]}"
    node = f"gpu-{release}"
    # the NVIDIA GPU Operator's RuntimeClass, which the agent's pods name
    runtime_class = (
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: nvidia}\nhandler: nvidia\n"
    )
    k8s.kubectl("apply", "--server-side", "--filename", "-", input=runtime_class)
    k8s.add_gpu_node(node, labels={GPU_LABEL: "true"})
    try:
        kube.create(
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "tessera-db"},
                "stringData": {"url": "postgresql+psycopg://tessera:pw@db:5432/tessera"},
            },
        )
        values = ["--values", str(values_file), "--set", "controlPlane.replicas=2"]
        k8s.helm(
            "install", release, str(CHART), "--namespace", namespace, *values, "--wait", "--timeout", "60s"
        )
        status = json.loads(k8s.helm("status", release, "--namespace", namespace, "--output", "json").stdout)
        assert status["info"]["status"] == "deployed"
        assert "kubectl label node NODE tessera.io/gpu-node=true" in status["info"]["notes"]

        pods = f"/api/v1/namespaces/{namespace}/pods"

        def running(component: str) -> list[Obj]:
            selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}"
            items: list[Obj] = kube.list(pods, label_selector=selector)["items"]
            return [p for p in items if p["status"].get("phase") == "Running"]

        assert len(running("controlplane")) == 2
        assert len(running("gateway")) == 1
        agents = running("node")
        mine = [p for p in agents if p["spec"]["nodeName"] == node]
        assert len(mine) == 1, [p["spec"].get("nodeName") for p in agents]
        assert mine[0]["spec"]["hostPID"] is True and mine[0]["spec"]["runtimeClassName"] == "nvidia"
        # only onto GPU nodes: any other agent pod is on a node another test labelled so
        for pod in agents:
            labels = kube.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")["metadata"]["labels"]
            assert labels.get(GPU_LABEL) == "true"

        k8s.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
        instance = f"app.kubernetes.io/instance={release}"
        k8s.wait_for(
            "the release's pods to go", lambda: not kube.list(pods, label_selector=instance)["items"]
        )
        for path in (
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            f"/apis/apps/v1/namespaces/{namespace}/daemonsets",
            f"/api/v1/namespaces/{namespace}/services",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        ):
            assert not kube.list(path, label_selector=instance)["items"], path
        kept = kube.list(f"/api/v1/namespaces/{namespace}/secrets", label_selector=instance)["items"]
        assert sorted(s["metadata"]["name"] for s in kept) == [
            f"{release}-tessera-gateway-token",
            f"{release}-tessera-node-token",
        ]
    finally:
        kube.delete(f"/api/v1/nodes/{node}")
