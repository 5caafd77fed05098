"""Deployment files: no Docker engine or cluster runs here, so check what can be checked offline.

YAML parses; files the compose stack mounts or builds from exist; the files that must agree
with each other do (ports, names, paths, the datasource uid); Kubernetes has its probes and
scrape annotations; the ConfigMap's config loads with the gateway's own loader; Prometheus'
config passes `promtool check config`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *(ROOT / "grafana").rglob("*.yaml")])
# Packaging files the Dockerfile copies that another change adds; until then that test xfails.
PENDING_BUILD_FILES = {"pyproject.toml", "constraints.txt"}
SKIP_ENV = "GATEWAY_SKIP_PROMETHEUS"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s(kind: str, name: str | None = None) -> dict:
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    found = [d for d in docs if d.get("kind") == kind and name in (None, d["metadata"]["name"])]
    assert found, f"no {kind} {name or ''} in {K8S}"
    assert name or len(found) == 1, f"several {kind}s in {K8S}: name the one"
    return found[0]


GATEWAY_CONFIG = "llm-gateway-config"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    assert all(doc is not None for doc in yaml.safe_load_all(path.read_text())), f"{path}: empty document"


def test_compose_references_existing_files():
    compose = load(DEPLOY / "compose.yaml")
    assert {"gateway", "redis", "prometheus", "grafana"} <= set(compose["services"])
    for name, svc in compose["services"].items():
        if "build" in svc:
            context = DEPLOY / svc["build"]["context"]
            assert (context / svc["build"]["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # a bind mount, relative to the compose file
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"


def test_dockerfile_copies_existing_files():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    sources = [s for line in lines if line.startswith("COPY") and "--from" not in line for s in line.split()[1:-1]]
    missing = {s for s in sources if not (ROOT / s).exists()}  # compose builds from the repository root
    assert missing <= PENDING_BUILD_FILES, f"Dockerfile copies files that do not exist: {missing}"
    if missing:
        pytest.xfail(f"waiting for packaging files: {sorted(missing)}")


def test_observability_files_agree():
    """Grafana finds the dashboard and its datasource; Prometheus scrapes the gateway's port."""
    compose = load(DEPLOY / "compose.yaml")
    grafana_mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    provider = load(ROOT / "grafana/provisioning/dashboards/gateway.yaml")["providers"][0]
    assert grafana_mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"

    datasource = load(ROOT / "grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    dashboard = json.loads((ROOT / "grafana/dashboards/gateway.json").read_text())
    ds_var = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["current"]["value"] == datasource["uid"]

    prom = load(DEPLOY / "prometheus/prometheus.yml")
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8080"]
    assert "8080:8080" in compose["services"]["gateway"]["ports"]
    # Grafana sizes $__rate_interval from this; a mismatch makes rate() panels read gaps.
    assert datasource["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]


def test_kubernetes_deployment():
    dep = k8s("Deployment")
    assert "replicas" not in dep["spec"], "hpa.yaml owns the replica count; a re-apply would reset it"
    pod = dep["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["http"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    secret = k8s("Secret")
    assert {"OPENAI_API_KEY", "GATEWAY_API_KEYS"} <= set(secret["stringData"])
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    config_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == k8s("ConfigMap", GATEWAY_CONFIG)["metadata"]["name"]

    service = k8s("Service", "llm-gateway")
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_kustomization_resources_exist():
    for resource in load(K8S / "kustomization.yaml")["resources"]:
        assert (K8S / resource).is_file(), resource


def test_configmap_config_loads():
    """The ConfigMap is config.yaml verbatim, and passes the gateway's own validation."""
    assert k8s("ConfigMap", GATEWAY_CONFIG)["data"]["config.yaml"] == (ROOT / "config.yaml").read_text(), \
        "deploy/kubernetes/configmap.yaml differs from config.yaml: copy it over"
    config = yaml.safe_load(k8s("ConfigMap", GATEWAY_CONFIG)["data"]["config.yaml"])
    env = {"REDIS_URL": "redis://redis:6379/0", "OPENAI_API_KEY": "sk-test", "GATEWAY_API_KEYS": "k1"}
    parsed = parse_config(config, str(K8S / "configmap.yaml"), env)
    assert parsed.state.redis_url == env["REDIS_URL"]


def test_kubernetes_runs_several_replicas_and_drains_one_at_a_time():
    dep, hpa, pdb = k8s("Deployment"), k8s("HorizontalPodAutoscaler"), k8s("PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"], "a CPU utilization target needs a CPU request"
    labels = dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    # a drain may take one replica while at least one other serves
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == labels and spread["topologyKey"] == "kubernetes.io/hostname"
    kustomized = load(K8S / "kustomization.yaml")["resources"]
    assert {"hpa.yaml", "pdb.yaml", "redis.yaml"} <= set(kustomized)


def test_kubernetes_replicas_reach_the_redis_deployed_beside_them():
    """REDIS_URL names redis.yaml's Service and port; the Secret can override it (managed Redis)."""
    dep = k8s("Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    state = k8s("ConfigMap", "llm-gateway-state")
    assert container["envFrom"] == [{"configMapRef": {"name": "llm-gateway-state"}},
                                    {"secretRef": {"name": k8s("Secret")["metadata"]["name"]}}], \
        "the Secret must come last: a later envFrom source wins"
    assert not any(e["name"].startswith("REDIS") for e in container.get("env", [])), "env would beat the Secret"
    url = state["data"]["REDIS_URL"]
    service, sts = k8s("Service", "llm-gateway-redis"), k8s("StatefulSet", "llm-gateway-redis")
    host, port = re.fullmatch(r"redis://([^:/]+):(\d+)/0", url).groups()
    assert host == service["metadata"]["name"] and int(port) == service["spec"]["ports"][0]["port"]
    pod = sts["spec"]["template"]
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert service["spec"]["selector"] != dep["spec"]["selector"]["matchLabels"], "the gateway Service would pick Redis"
    (redis,) = pod["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in redis["ports"]}
    args = " ".join(redis["args"])
    assert "--appendonly yes" in args and "--appendfsync always" in args, "a restart must not empty the ledger"
    assert sts["spec"]["replicas"] == 1
    mount = redis["volumeMounts"][0]
    assert mount["name"] == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] and \
        f"--dir {mount['mountPath']}" in args

    config = yaml.safe_load(k8s("ConfigMap", GATEWAY_CONFIG)["data"]["config.yaml"])
    for cluster, expected in ((state["data"]["REDIS_CLUSTER"], False), ("true", True)):
        env = {**state["data"], "REDIS_CLUSTER": cluster, "OPENAI_API_KEY": "sk-test"}
        parsed = parse_config(config, str(K8S / "configmap.yaml"), env)
        assert (parsed.state.redis_url, parsed.state.redis_cluster) == (url, expected)


def test_servicemonitor_scrapes_the_gateway_service():
    monitor, service = k8s("ServiceMonitor"), k8s("Service", "llm-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # needs the Prometheus Operator's CRD: applied on its own, never by `kubectl apply -k`
    assert "servicemonitor.yaml" not in load(K8S / "kustomization.yaml")["resources"]


def test_kustomize_builds_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (its built-in kustomize checks the kustomization offline)")
    res = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(res.stdout) if d)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Service", "Service", "Deployment", "StatefulSet",
                            "PodDisruptionBudget", "HorizontalPodAutoscaler"])


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"promtool not installed and {SKIP_ENV}=1")
        pytest.fail("`promtool` not found: apt-get install -y prometheus, or set GATEWAY_SKIP_PROMETHEUS=1",
                    pytrace=False)
    res = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"SUCCESS", res.stdout), res.stdout
