"""The deployment files in deploy/ (issue 12), checked without a cluster: every Kubernetes object against the API
schema of the official client's models (kubernetes >= 37: pydantic models that refuse an unknown key, a wrong type
and a missing required field), what the PUs need of them (probes on their health endpoints, a grace period above
their bounded hand-off, the PDB and HPA on their Deployment, the adapter rule behind the HPA's metric), every
spacegrid command in the manifests, the compose file and the systemd unit parsed by spacegrid's own CLI, the
monitoring copies equal to their sources, and the compose demo's and the image's security settings."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pydantic
import pytest
import yaml
from kubernetes import client as k8s

from spacegrid.cli.main import cli
from spacegrid.engine.server import SERVER_VERSION_MIN
from spacegrid.examples.tickets import space as example_space
from spacegrid.limits import DEFAULT_LIMITS, PU_STOP_HANDOFF_SHARE, PU_STOP_KILL_GRACE_S
from spacegrid.observability.prometheus import COUNTERS, PROBES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
UNIT = DEPLOY / "systemd" / "spacegrid-pu@.service"
HELM_VALUES = {KUBE / "nats" / "values.yaml", KUBE / "prometheus-adapter" / "values.yaml"}
CUSTOM_GROUPS = ("monitoring.coreos.com/",)  # CRDs of the Prometheus Operator: checked structurally below
PU_LABELS = {"app.kubernetes.io/name": "spacegrid", "app.kubernetes.io/component": "pu"}
IMAGE_UID = 10001


# ---- loading ------------------------------------------------------------------------------------------------------

def manifest_paths() -> list[Path]:
    """Every YAML file under deploy/kubernetes but kustomizations and Helm values (not Kubernetes objects)."""
    return sorted(path for path in KUBE.rglob("*.yaml")
                  if path.name != "kustomization.yaml" and path not in HELM_VALUES)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_paths():
        for doc in documents(path):
            yield path, doc


def one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/kubernetes, found {len(found)}"
    return found[0]


def model_of(doc: dict[str, Any]) -> type[pydantic.BaseModel]:
    """The client's model class of an object: apps/v1 Deployment -> V1Deployment, autoscaling/v2
    HorizontalPodAutoscaler -> V2HorizontalPodAutoscaler, v1 ConfigMap -> V1ConfigMap."""
    version = str(doc["apiVersion"]).rsplit("/", 1)[-1]
    model = getattr(k8s, f"{version[0].upper()}{version[1:]}{doc['kind']}", None)
    assert model is not None, f"no model in the kubernetes client for {doc['apiVersion']} {doc['kind']}"
    return model  # type: ignore[no-any-return]


def validate(doc: dict[str, Any]) -> None:
    """Raises pydantic.ValidationError naming the path of every unknown key, wrong type or missing required field."""
    model_of(doc).model_validate(doc)


def is_custom(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).startswith(CUSTOM_GROUPS)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(doc: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    containers = pod_spec(doc)["initContainers" if init else "containers"]
    return next(c for c in containers if c["name"] == name)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def parse_cli(args: list[str]) -> click.Context:
    """Parse `spacegrid ARGS` as the CLI would, down to the subcommand, without running it: an unknown option, a
    missing value or a value of the wrong type raises click.UsageError (or BadParameter)."""
    command: click.Command = cli
    name = "spacegrid"
    while isinstance(command, click.Group):
        assert args, f"`{name}` needs a subcommand"
        name, args = args[0], args[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"no command `{name}`"
        command = found
    return command.make_context(name, list(args))


# ---- the API schema -----------------------------------------------------------------------------------------------

def test_every_kubernetes_object_is_valid_against_the_api_schema() -> None:
    """Every object in deploy/kubernetes (the Prometheus Operator's CRDs aside) validates against its model in the
    official client: no unknown key, every type right, every required field present; and the files hold the objects
    the deployment needs (no vacuous pass)."""
    kinds = set()
    for path, doc in objects():
        if is_custom(doc):
            continue
        try:
            validate(doc)
        except pydantic.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata'].get('name')}: {exc}")
        kinds.add(f"{doc['apiVersion']} {doc['kind']}")
    assert {"apps/v1 Deployment", "policy/v1 PodDisruptionBudget", "autoscaling/v2 HorizontalPodAutoscaler",
            "batch/v1 Job", "v1 ServiceAccount", "v1 ConfigMap"} <= kinds, kinds


def test_a_typo_a_wrong_type_or_a_missing_field_fails_the_schema_check() -> None:
    """The check is not lenient: a misspelt key deep in a probe, a number given as a string where the API wants an
    int, an env value given as an int, and a Deployment without its selector are each refused."""
    deployment = one("Deployment")

    def broken(change: Any) -> dict[str, Any]:
        doc = json.loads(json.dumps(deployment))
        change(doc)
        return doc

    cases = {
        "paht": lambda d: container(d, "pu")["livenessProbe"]["httpGet"].update(paht="/healthz"),
        "terminationGracePeriodSeconds": lambda d: pod_spec(d).update(terminationGracePeriodSeconds="75"),
        "value": lambda d: container(d, "pu")["env"].append({"name": "X", "value": 9400}),
        "selector": lambda d: d["spec"].pop("selector"),
    }
    for field, change in cases.items():
        with pytest.raises(pydantic.ValidationError, match=field):
            validate(broken(change))
    validate(broken(lambda d: None))  # the unchanged copy passes


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
def test_the_kustomizations_build_and_render_valid_objects() -> None:
    """`kubectl kustomize` builds deploy/kubernetes and deploy/kubernetes/init; every object they render (the
    generated ConfigMaps included) is valid, in namespace spacegrid, and every container runs the image set in
    the kustomization; the PUs' ConfigMap reference follows its generated (hashed) name."""
    rendered = kustomize(KUBE) + kustomize(KUBE / "init")
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    dashboard = next(doc for doc in rendered if doc["metadata"]["name"] == "spacegrid-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    grid = next(name for kind, name in names if kind == "ConfigMap" and name.startswith("spacegrid-grid-"))
    for doc in rendered:
        assert doc["metadata"]["namespace"] == "spacegrid", doc["metadata"]["name"]
        if is_custom(doc):
            continue
        validate(doc)
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            for each in spec.get("initContainers", []) + spec["containers"]:
                assert each["image"] == "spacegrid:0.1.0"
    pu = container(next(doc for doc in rendered if doc["kind"] == "Deployment"), "pu")
    assert {env["valueFrom"]["configMapKeyRef"]["name"] for env in pu["env"]
            if "configMapKeyRef" in env.get("valueFrom", {})} == {grid}


def test_every_kustomization_names_files_that_exist() -> None:
    """Each kustomization's resources and generator files exist below it (kustomize refuses files outside its
    root); the top one combines the PUs and their monitoring."""
    for path in KUBE.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        assert kustomization["kind"] == "Kustomization"
        for resource in kustomization.get("resources", []):
            assert (path.parent / resource).exists(), f"{path}: {resource}"
        for generator in kustomization.get("configMapGenerator", []):
            for file in generator.get("files", []):
                assert (path.parent / file).resolve().is_relative_to(path.parent), f"{path}: {file} is outside"
                assert (path.parent / file).exists(), f"{path}: {file}"
    assert yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"] == ["pu", "monitoring"]


# ---- what the PUs need ----------------------------------------------------------------------------------------------

def test_the_probes_ask_the_pu_on_its_metrics_port() -> None:
    """Startup and liveness probes ask /healthz, readiness /readyz (the endpoints observability.prometheus serves),
    on the named container port whose number is the PU's --metrics-port; the metrics host lets the kubelet in."""
    pu = container(one("Deployment"), "pu")
    port = next(p for p in pu["ports"] if p["name"] == "metrics")
    assert str(port["containerPort"]) == option(pu["args"], "--metrics-port")
    assert option(pu["args"], "--metrics-host") == "0.0.0.0"
    probes = {kind: pu[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (get["path"], get["port"]) for kind, get in probes.items()} == {
        "startupProbe": ("/healthz", "metrics"), "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics")}
    assert {get["path"] for get in probes.values()} == set(PROBES)


def stop_bound_s(args: list[str]) -> float:
    """How long a PU with these arguments takes at most after SIGTERM (its own watchdog's bound)."""
    stop_timeout_s = float(option(args, "--stop-timeout-s")) if "--stop-timeout-s" in args \
        else DEFAULT_LIMITS.pu_stop_timeout_s
    assert min(DEFAULT_LIMITS.handoff_timeout_s, PU_STOP_HANDOFF_SHARE * stop_timeout_s) \
        == DEFAULT_LIMITS.handoff_timeout_s, "the stop bound cuts the hand-off short of limits.handoff_timeout_s"
    return stop_timeout_s + PU_STOP_KILL_GRACE_S


def test_the_grace_period_outlasts_the_pus_hand_off() -> None:
    """Kubernetes, compose and systemd each wait longer after SIGTERM than the PU can take (its --stop-timeout-s,
    long enough for the whole hand-off bound of 30 s, plus its watchdog's grace): a PU is never killed mid-hand-off."""
    deployment = one("Deployment")
    grace_s = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace_s > stop_bound_s(container(deployment, "pu")["args"]) and grace_s > DEFAULT_LIMITS.handoff_timeout_s
    for name, service in compose()["services"].items():
        if service.get("command", [None])[0] == "pu":
            assert service["stop_signal"] == "SIGTERM"
            assert duration_s(service["stop_grace_period"]) > stop_bound_s(service["command"]), name
    unit = unit_settings()
    assert unit["KillSignal"] == ["SIGTERM"]
    assert duration_s(unit["TimeoutStopSec"][0]) > stop_bound_s(unit["ExecStart"][0].split())


def test_the_pdb_and_the_hpa_act_on_the_pus_deployment() -> None:
    """The Deployment's selector matches its pods; the PDB selects exactly those pods and lets one go at a time;
    the HPA scales that Deployment (which leaves the count to it) between at least 3 PUs and fewer than the
    example space's partitions, one PU per step."""
    deployment, pdb, hpa = one("Deployment"), one("PodDisruptionBudget"), one("HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == PU_LABELS and PU_LABELS.items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == PU_LABELS and pdb["spec"]["maxUnavailable"] == 1
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]
    assert 3 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"] < example_space.partitions
    for direction in ("scaleUp", "scaleDown"):
        assert [p["value"] for p in hpa["spec"]["behavior"][direction]["policies"]] == [1]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (strategy["maxSurge"], strategy["maxUnavailable"]) == (1, 0)  # as `spacegrid roll`


def test_the_hpa_metric_is_the_adapter_rule_over_a_series_the_pus_export() -> None:
    """The HPA's Pods metric is the name prometheus-adapter's rule serves, over spacegrid_requests_total (a counter
    every PU exports), mapped onto namespace and pod; the adapter's values load that ConfigMap."""
    hpa = one("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    rules_map = next(doc for _, doc in objects() if doc["metadata"]["name"] == "spacegrid-adapter-rules")
    (rule,) = yaml.safe_load(rules_map["data"]["config.yaml"])["rules"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"].strip("'")).group(1)  # type: ignore[union-attr]
    assert series == "spacegrid_requests_total" and series.removeprefix("spacegrid_").removesuffix("_total") in COUNTERS
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())["rules"]["existing"] \
        == rules_map["metadata"]["name"]


def test_each_pod_mints_its_own_credential_and_only_the_init_container_sees_the_account_key() -> None:
    """The PU's init container mints a pu credential for member $(POD_NAME) into a memory-backed volume the PU
    reads it from (SPACEGRID_CREDS); the account key's Secret reaches that init container only, never the PU
    container; the Job's admin credential is minted the same way; pods run as the image's non-root user."""
    for doc, main in ((one("Deployment"), "pu"), (one("Job"), "init")):
        minter, runner = container(doc, "credential", init=True), container(doc, main)
        out = option(minter["args"], "--out")
        assert {env["name"]: env.get("value") for env in runner["env"]}["SPACEGRID_CREDS"] == out
        mounts = {m["name"]: m["mountPath"] for m in minter["volumeMounts"]}
        assert out.startswith(mounts["creds"] + "/")
        volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == "creds")
        assert volume["emptyDir"]["medium"] == "Memory"
        secret_refs = [env["valueFrom"]["secretKeyRef"]["name"] for env in runner["env"]
                       if "secretKeyRef" in env.get("valueFrom", {})]
        assert "spacegrid-account-key" not in secret_refs
        assert option(minter["args"], "--account-key-env") in {env["name"] for env in minter["env"]}
        context = pod_spec(doc)["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == IMAGE_UID
        assert not pod_spec(doc)["automountServiceAccountToken"]
    pu_minter = container(one("Deployment"), "credential", init=True)
    assert pu_minter["args"][:3] == ["auth", "creds", "pu"]
    assert option(pu_minter["args"], "--member-id") == "$(POD_NAME)"


def test_the_init_job_configures_the_grid_the_pus_join() -> None:
    """`spacegrid init` (the Job) writes the configuration of the NATS URL and app the PUs' ConfigMap names, with
    the replicas and metrics host the PUs insist on; the PUs wait for it rather than write their own."""
    kustomization = yaml.safe_load((KUBE / "pu" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    grid = dict(literal.split("=", 1) for literal in generator["literals"])
    init = container(one("Job"), "init")["args"]
    pu = container(one("Deployment"), "pu")["args"]
    assert (option(init, "--nats"), option(init, "--app")) == (grid["SPACEGRID_NATS"], grid["SPACEGRID_APP"])
    for setting in ("--replicas", "--metrics-host"):
        assert option(init, setting) == option(pu, setting)
    assert "--wait-for-config" in pu and option(pu, "--replicas") == "3"


def test_every_spacegrid_command_in_the_deploy_files_parses() -> None:
    """The arguments of every spacegrid container (Deployment, Job), compose service and the systemd unit's
    ExecStart are accepted by spacegrid's CLI: no misspelt or removed option."""
    commands = []
    for _, doc in objects():
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            commands += [c["args"] for c in spec.get("initContainers", []) + spec["containers"]]
    services = compose()["services"]
    for service in services.values():
        if "build" in service and "entrypoint" not in service:
            commands.append(service["command"])
    script = services["secrets"]["command"][0].replace("\\\n", " ").replace("$$", "$")
    commands += [shlex.split(line)[1:] for line in script.splitlines() if line.strip().startswith("spacegrid ")]
    exec_start = unit_settings()["ExecStart"][0].split()
    assert exec_start[0].endswith("/spacegrid")
    placeholders = {"SPACEGRID_METRICS_PORT": "9401"}
    commands.append([re.sub(r"\$\{(\w+)\}", lambda m: placeholders.get(m.group(1), m.group(1)), arg)
                     for arg in exec_start[1:]])
    assert len(commands) >= 14
    for args in commands:
        parse_cli(list(args))
    with pytest.raises(click.UsageError):
        parse_cli(["pu", "--nats", "nats://x:4222", "--metrics-prot", "9400"])


# ---- monitoring ---------------------------------------------------------------------------------------------------

def test_the_monitoring_copies_equal_their_sources() -> None:
    """The dashboard ConfigMap's file is docs/monitoring/grafana-dashboard.json byte for byte, and the
    PrometheusRule's groups are docs/monitoring/alerts.yml's (kustomize can't read files outside its root, so these
    are copies: refresh them from the sources when this fails)."""
    source = ROOT / "docs" / "monitoring"
    assert (KUBE / "monitoring" / "grafana-dashboard.json").read_bytes() == \
        (source / "grafana-dashboard.json").read_bytes(), \
        "cp docs/monitoring/grafana-dashboard.json deploy/kubernetes/monitoring/"
    rule = one("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((source / "alerts.yml").read_text())["groups"], \
        "paste docs/monitoring/alerts.yml's groups into deploy/kubernetes/monitoring/prometheusrule.yaml"


def test_the_pod_monitor_scrapes_the_pus_metrics_port() -> None:
    """The PodMonitor (a CRD, checked structurally) selects the PUs' pods and scrapes their named metrics port."""
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == PU_LABELS
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


# ---- NATS from its Helm chart ---------------------------------------------------------------------------------------

def test_the_nats_values_ask_for_a_secured_three_node_jetstream_cluster() -> None:
    """The Helm values: a 3-node cluster with JetStream on persistent volumes, fsync before acknowledging, TLS on
    client connections and routes (routes verifying each other) with the grid's CA, payloads as large as spacegrid's
    replies, and a nats-server image of a version the grid supports."""
    values = yaml.safe_load((KUBE / "nats" / "values.yaml").read_text())
    config = values["config"]
    assert config["cluster"]["enabled"] and config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] and config["jetstream"]["fileStore"]["pvc"]["size"]
    assert config["jetstream"]["merge"]["sync_interval"] == "always"
    for block in (config["nats"]["tls"], config["cluster"]["tls"]):
        assert block["enabled"] and block["secretName"] == "nats-server-tls"
    assert config["cluster"]["tls"]["merge"]["verify"] is True
    assert values["tlsCA"] == {"enabled": True, "secretName": "nats-ca", "key": "ca.crt"}
    assert config["merge"]["max_payload"] == "<< 8MB >>"
    version = tuple(int(part) for part in values["container"]["image"]["tag"].split("-")[0].split("."))
    assert version[:2] >= SERVER_VERSION_MIN


# ---- Docker Compose -------------------------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", str(text))
    assert match, f"unexpected duration {text!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_compose_demo_is_secured_and_publishes_only_loopback_ports() -> None:
    """Only the one-shot `secrets` service mounts the grid's keys; each PU mounts only its own credential volume;
    NATS includes the exported auth and TLS settings; PostgreSQL's password has no default; every published port is
    bound to 127.0.0.1; dependencies name existing services."""
    services = compose()["services"]
    mounting_keys = [name for name, s in services.items() if any(v.startswith("keys:") for v in s.get("volumes", []))]
    assert mounting_keys == ["secrets"]
    pus = {name: s for name, s in services.items() if s.get("command", [None])[0] == "pu"}
    assert len(pus) == 3
    for name, service in pus.items():
        assert service["volumes"] == [f"{name}:/grid/pu:ro"]
        assert service["environment"]["SPACEGRID_CREDS"].startswith("/grid/pu/")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on an unknown {dependency}"
    assert "${SPACEGRID_DB_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    nats_conf = (DEPLOY / "compose" / "nats.conf").read_text()
    for include in ("include server/auth.conf", "include server/tls.conf", "include server/route-tls.conf"):
        assert include in nats_conf


# ---- systemd ------------------------------------------------------------------------------------------------------

def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_systemd_unit_restarts_on_failure_and_is_hardened(tmp_path: Path) -> None:
    """The PU unit restarts only on failure (a graceful stop exits 0), reads its secrets from EnvironmentFiles, runs
    as its own user without privileges, and `systemd-analyze verify` (where installed) has nothing to say about it."""
    unit = unit_settings()
    assert unit["Restart"] == ["on-failure"] and unit["User"] == ["spacegrid"]
    assert any(path.endswith("/etc/spacegrid/pu-%i.env") for path in unit["EnvironmentFile"])
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": "", "UMask": "0077"}.items():
        assert unit[key] == [value], key
    if shutil.which("systemd-analyze") is None:
        return
    instance = tmp_path / "spacegrid-pu@1.service"  # an instance of the template, its ExecStart an executable here
    instance.write_text(UNIT.read_text().replace("/opt/spacegrid/bin/spacegrid", "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr


# ---- the image ----------------------------------------------------------------------------------------------------

def test_the_image_runs_spacegrid_as_the_manifests_non_root_user() -> None:
    """The Dockerfile builds on python:3.11-slim, installs the package with pip, runs as uid 10001 (the manifests'
    runAsUser) with `spacegrid` as its entrypoint; .dockerignore keeps a data dir, the venv and git out of the build
    but not what `pip install .` needs."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \. ", dockerfile, re.M)
    assert re.search(rf"^USER {IMAGE_UID}:{IMAGE_UID}$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["spacegrid"\]$', dockerfile, re.M)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".spacegrid"} <= ignored
    assert not ignored & {"src", "pyproject.toml", "README.md"}
