"""infra/: the compose and Kubernetes files, parsed and checked against the code they run.

No Docker engine or cluster is needed: these tests read the files and compare every name, port,
variable and command in them with rtml's own settings, CLI and metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from rtml.app.cli import cli
from rtml.metrics import Counters
from rtml.records import Prediction
from rtml.serving.app import Metrics, create_app
from rtml.serving.model_holder import ModelHolder
from rtml.serving.monitor import Monitor
from rtml.serving.monitor_service import MonitorCollector
from rtml.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent

INFRA = PROJECT_ROOT / "infra"
K8S = INFRA / "k8s"
CONVENTIONAL = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MLFLOW_TRACKING_URI"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _env_example() -> dict[str, str]:
    lines = (INFRA / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with `env` as infra/.env."""
    return INTERPOLATION.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = (INFRA / "docker-compose.yml").read_text()
    return yaml.safe_load(_interpolate(text, _env_example()))


def _rtml_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = _env_example()["RTML_IMAGE"]
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("image") == image and "entrypoint" not in s
    }


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("RTML_") or k in CONVENTIONAL]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _check_env_names(env: dict[str, Any], where: str) -> None:
    fields = set(Settings.model_fields)
    for key in env:
        if key in CONVENTIONAL:
            continue
        assert key.startswith("RTML_"), f"{where}: {key} is not an rtml setting"
        assert key.removeprefix("RTML_").lower() in fields, f"{where}: {key} is not a setting"


def _metric_names() -> dict[str, set[str]]:
    """Every series name the API, the monitor and the consumers export, with its labels."""
    monitor = Monitor()
    monitor.on_prediction(Prediction("X", 60.0, 0.1, 1, 0.0))
    monitor.on_example("X", 60.0, 0.2)
    monitor.reject("features")
    registry = CollectorRegistry()
    registry.register(MonitorCollector(monitor))
    counters = Counters("trainer")  # what every consumer's loop exports
    counters.read["examples"] += 1
    counters.done["learned"] += 1
    counters.reject("examples", "future")
    registry.register(counters)
    api = Metrics()
    api.errors.labels("redis").inc()
    api.latency.labels("symbol").observe(0.001)
    api.predictions.labels("symbol").inc()
    names: dict[str, set[str]] = {}
    for reg in (registry, api.registry):
        for family in reg.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    text = generate_latest(api.registry).decode()
    assert "rtml_request_seconds_bucket" in text
    return names


# -- compose ------------------------------------------------------------------------------


def test_compose_services_depend_on_services_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep in deps:
            assert dep in services, f"{name} depends on unknown {dep}"
            if isinstance(deps, dict):
                assert deps[dep]["condition"] in {
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                }
                if deps[dep]["condition"] == "service_healthy":
                    assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    for needed in ("redpanda", "redis", "postgres", "minio", "mlflow", "prometheus", "grafana"):
        assert needed in services


def test_compose_runs_every_rtml_service_with_a_real_command_and_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _rtml_services(compose)
    commands = {s["command"][0] for s in services.values()}
    assert commands == {"feast-apply", "feed", "features", "train", "serve"} | {
        "predict-stream",
        "monitor",
    }
    assert commands <= set(cli.commands)
    shards_seen = set()
    for name, service in services.items():
        env = service["environment"]
        _check_env_names(env, name)
        settings = _settings_from(env, monkeypatch)
        assert settings.kafka_bootstrap == "redpanda:9092"
        assert settings.redis == "redis://redis:6379/0"
        assert settings.mlflow_uri == "http://mlflow:5000"
        assert set(settings.model_routes()) == set(settings.symbols)
        assert settings.api_token is not None, "the API is exposed: it must demand a token"
        if service["command"][0] == "train":
            assert settings.shard is not None, (
                f"{name}: a trainer of sharded models needs RTML_SHARD"
            )
            shards_seen.add(settings.as_shard().model_name)
            assert service.get("deploy", {}).get("replicas", 1) == 1, "one writer per model"
        if service["command"][0] == "predict-stream":
            assert service["deploy"]["replicas"] <= settings.kafka_partitions
    assert shards_seen == {settings.shard_model(s) for s in settings.shards}, "a trainer per shard"


def test_compose_publishes_ports_on_loopback_to_the_ports_services_listen_on(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    for name, host, port in (
        ("predictor", "api_host", "api_port"),
        ("monitor", "monitor_host", "monitor_port"),
    ):
        settings = _settings_from(services[name]["environment"], monkeypatch)
        assert getattr(settings, host) == "0.0.0.0"  # inside its container, behind the mapping
        assert services[name]["ports"] == [
            f"127.0.0.1:{getattr(settings, port)}:{getattr(settings, port)}"
        ]


def test_mlflow_runs_on_postgres_and_s3_with_allowed_hosts(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    args = dict(a.split("=", 1) for a in mlflow["entrypoint"] if a.startswith("--") and "=" in a)
    assert args["--backend-store-uri"].startswith("postgresql://")
    assert "@postgres:5432/" in args["--backend-store-uri"]
    assert args["--artifacts-destination"].startswith("s3://mlflow/")
    assert "--serve-artifacts" in mlflow["entrypoint"]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    allowed = args["--allowed-hosts"].split(",")
    assert "mlflow:5000" in allowed  # what the rtml services send as Host
    assert f"mlflow:{args['--port']}" in allowed
    init = compose["services"]["minio-init"]["entrypoint"][-1]
    assert "store/mlflow" in init, "the artifact bucket is created before MLflow starts"


def test_compose_mounts_files_that_exist_and_declares_its_volumes(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    used = set(INTERPOLATION.findall((INFRA / "docker-compose.yml").read_text()))
    assert {var for var, _ in used} <= set(_env_example()), "env.example lists every variable"


def test_prometheus_scrapes_the_services_where_they_listen(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    services = compose["services"]
    assert "api_token" in services["prometheus"]["secrets"]
    targets: set[str] = set()
    discovered: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):  # the API and the monitor: token needed
            assert job["authorization"]["credentials_file"] == "/run/secrets/api_token"
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):  # each replica of the headless consumers
            discovered.update(f"{name}:{dns['port']}" for name in dns["names"])
    api = _settings_from(services["predictor"]["environment"], monkeypatch)
    monitor = _settings_from(services["monitor"]["environment"], monkeypatch)
    assert targets == {f"predictor:{api.api_port}", f"monitor:{monitor.monitor_port}"}
    consumers = set()
    for name, service in services.items():
        if service.get("command", [None])[0] in ("features", "train", "predict-stream"):
            settings = _settings_from(service["environment"], monkeypatch)
            assert settings.metrics_host == "0.0.0.0", name
            consumers.add(f"{name}:{settings.metrics_port}")
    assert discovered == consumers


def test_grafana_dashboard_queries_metrics_that_rtml_exports() -> None:
    exported = _metric_names()
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "rtml.json").read_text())
    datasource = yaml.safe_load(
        (INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
    for expr in exprs:
        names = set(re.findall(r"\brtml_\w+", expr))
        assert names, expr
        for name in names:
            assert name in exported, f"{name} in the dashboard is not exported"
            labels = set(re.findall(r"by \(([\w, ]+)\)", expr))
            labels |= set(re.findall(r"(\w+)\s*!?=\s*\"", expr))
            used = {label.strip() for group in labels for label in group.split(",")}
            assert used - {"le"} <= exported[name], f"{expr}: labels {used} not on {name}"


def test_feast_config_for_compose_is_what_the_services_build(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((INFRA / "feast" / "feature_store.yaml").read_text())
    settings = _settings_from(compose["services"]["features"]["environment"], monkeypatch)
    assert config["project"] == settings.feast_project
    assert Path(config["registry"]) == settings.feast_registry_path
    assert config["online_store"]["connection_string"] == settings.feast_redis_connection
    repo = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    assert config.keys() == repo.keys()
    assert config["offline_store"] == repo["offline_store"]
    assert config["entity_key_serialization_version"] == repo["entity_key_serialization_version"]


def test_dockerfile_installs_the_pinned_lock_and_copies_what_exists() -> None:
    lines = (PROJECT_ROOT / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert any("requirements-production.lock" in line and "install" in line for line in lines)
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert exposed == {defaults.api_port, defaults.monitor_port}

    def pins(path: Path) -> dict[str, str]:
        found = re.findall(r"^([\w.-]+)==(\S+)", path.read_text(), re.MULTILINE)
        return {name.lower(): version for name, version in found}

    dev, prod = (
        pins(PROJECT_ROOT / "requirements.lock"),
        pins(INFRA / "requirements-production.lock"),
    )
    for package in ("feast", "mlflow", "river", "confluent-kafka", "pandas", "redis", "pyarrow"):
        assert prod[package] == dev[package], f"{package}: the image and the tests differ"
    assert {"psycopg2-binary", "boto3"} <= set(prod)


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = set(kustomization["resources"])
    assert files == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _of(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests if d["kind"] == kind}


def _k8s_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    config = _of(manifests, "ConfigMap")["rtml-config"]["data"]
    secret = _of(manifests, "Secret")["rtml-secrets"]["stringData"]
    return {**config, **secret}


def test_k8s_workloads_select_their_pods_and_run_real_commands(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    workloads = {**_of(manifests, "Deployment"), **_of(manifests, "StatefulSet")}
    assert {"feed", "features", "predictor", "predict-stream", "monitor"} <= set(workloads)
    configmaps, secrets = _of(manifests, "ConfigMap"), _of(manifests, "Secret")
    claims = _of(manifests, "PersistentVolumeClaim")
    jobs = _of(manifests, "Job")
    for name, w in {**workloads, **jobs}.items():
        pod = w["spec"]["template"]
        if name in workloads:
            selector = w["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod["metadata"]["labels"].items(), name
        for container in pod["spec"]["containers"]:
            assert container["image"] == "rtml"
            assert container["args"][0] in cli.commands, container["args"]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            _check_env_names(env, name)
            for ref in container["envFrom"]:
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps
                else:
                    assert ref["secretRef"]["name"] in secrets
            settings = _settings_from({**_k8s_env(manifests), **env}, monkeypatch)
            if container["args"][0] == "serve":
                assert settings.api_host == "0.0.0.0"
                assert {p["containerPort"] for p in container["ports"]} == {settings.api_port}
            if container["args"][0] in ("features", "train", "predict-stream"):
                assert settings.metrics_host == "0.0.0.0", name
                assert {p["containerPort"] for p in container["ports"]} == {settings.metrics_port}
                annotations = pod["metadata"]["annotations"]
                assert annotations["prometheus.io/port"] == str(settings.metrics_port), name
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for d in (*configmaps.values(), *secrets.values()):
        _check_env_names(d.get("data") or d["stringData"], d["metadata"]["name"])


def test_k8s_has_one_single_writer_statefulset_per_trainer_shard(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_from(_k8s_env(manifests), monkeypatch)
    assert settings.shards, "the ConfigMap shards the models"
    shards = {}
    for name, sts in _of(manifests, "StatefulSet").items():
        assert sts["spec"]["replicas"] == 1, f"{name}: one writer per registered model"
        assert sts["spec"]["serviceName"] in _of(manifests, "Service")
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["train"]
        env = {e["name"]: e["value"] for e in container["env"]}
        shards[env["RTML_SHARD"]] = name
    assert set(shards) == set(settings.shards)
    predict_stream = _of(manifests, "Deployment")["predict-stream"]
    assert predict_stream["spec"]["replicas"] <= settings.kafka_partitions


def test_k8s_services_and_autoscaler_point_at_real_pods_and_ports(
    manifests: list[dict[str, Any]],
) -> None:
    pods = [
        w["spec"]["template"]
        for w in [*_of(manifests, "Deployment").values(), *_of(manifests, "StatefulSet").values()]
    ]
    for name, service in _of(manifests, "Service").items():
        selector = service["spec"]["selector"]
        matching = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
        assert matching, f"service {name} selects no pods"
        for port in service["spec"].get("ports", []):
            named = {
                cp["name"] for p in matching for c in p["spec"]["containers"] for cp in c["ports"]
            }
            assert port["targetPort"] in named, f"service {name}: no port {port['targetPort']}"
    (hpa,) = _of(manifests, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in _of(manifests, "Deployment")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    predictor = _of(manifests, "Deployment")["predictor"]["spec"]["template"]["spec"]
    (container,) = predictor["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, ModelHolder(settings), store=None)  # type: ignore[arg-type]
    assert {"/readyz", "/healthz"} <= {getattr(r, "path", "") for r in app.routes}


def test_kustomize_builds_the_manifests_into_one_namespace() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed: install kubectl (it bundles kustomize) to check infra/k8s"
        )
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "Job"} <= kinds
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "rtml", d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rtml"
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert c["image"] == "rtml:latest"
