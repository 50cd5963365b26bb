"""deploy/kubernetes: every manifest loaded and its invariants checked (no cluster needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton_cli.mqtt_setup import DYNSEC_FILE, write_mqtt_accounts
from baton_cli.nats_setup import node_name, write_cluster_configs
from tests.unit.deploy_support import unknown_settings

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy/kubernetes"
WORKLOADS = {"Deployment", "StatefulSet"}
Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in load(HERE / name)]


def of_kind(docs: list[Doc], *kinds: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] in kinds}


def containers(workload: Doc) -> list[Doc]:
    found: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    return found


def baton_workloads(docs: list[Doc]) -> dict[str, Doc]:
    return {
        name: doc
        for name, doc in of_kind(docs, *WORKLOADS).items()
        if any(c["image"] == "baton" for c in containers(doc))
    }


def program(container: Doc) -> str:
    """The program a container runs: its command's, or the one its `sh -c` script execs."""
    command: list[str] = container["command"]
    if command[0] == "sh":
        return command[-1].rpartition("exec ")[2].split()[0]
    return command[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def settings_map(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = of_kind(docs, "ConfigMap")["baton-settings"]["data"]
    return data


def secrets_example() -> dict[str, Doc]:
    return of_kind(load(HERE / "secrets.example.yaml"), "Secret")


def test_every_manifest_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in HERE.glob("*.yaml")} - {"kustomization.yaml"}
    # The example Secrets stay out: applying them would overwrite the real ones.
    assert listed == present - {"secrets.example.yaml"}


def test_each_service_runs_replicas_with_a_disruption_budget(docs: list[Doc]) -> None:
    budgets = [doc["spec"] for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    workloads = baton_workloads(docs)
    assert {program(c) for w in workloads.values() for c in containers(w)} == {
        "baton-api",
        "baton-dispatcher",
        "baton-device-bridge",
        "baton-timeout-scheduler",
    }
    workloads["baton-nats"] = of_kind(docs, "StatefulSet")["baton-nats"]
    for name, workload in workloads.items():
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        assert spec["replicas"] >= 2, name
        assert any(
            b["selector"]["matchLabels"].items() <= labels.items() and b["maxUnavailable"] == 1
            for b in budgets
        ), name


def test_every_container_has_probes_and_resources(docs: list[Doc]) -> None:
    for name, workload in of_kind(docs, *WORKLOADS).items():
        for container in containers(workload):
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_the_api_is_ready_when_ready_and_alive_when_healthy(docs: list[Doc]) -> None:
    (api,) = containers(of_kind(docs, "Deployment")["baton-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert env_of(api)["BATON_API_HOST"]["value"] == "0.0.0.0"


def test_the_other_services_are_probed_on_their_metrics_port(docs: list[Doc]) -> None:
    """Their one listening port (they serve no HTTP of their own): it must be served on the
    pod's address, on the port the settings give."""
    settings = settings_map(docs)
    assert settings["BATON_METRICS_HOST"] == "0.0.0.0"
    for name, workload in baton_workloads(docs).items():
        for container in containers(workload):
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == int(settings["BATON_METRICS_PORT"]), name
            if program(container) != "baton-api":
                for probe in ("livenessProbe", "readinessProbe"):
                    assert container[probe]["httpGet"]["port"] == "metrics", name


def test_each_replica_is_named_after_its_pod(docs: list[Doc]) -> None:
    for name, workload in baton_workloads(docs).items():
        for container in containers(workload):
            instance = env_of(container)["BATON_INSTANCE"]
            assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, name


def test_every_baton_variable_is_a_setting(docs: list[Doc]) -> None:
    used = set(settings_map(docs))
    for workload in baton_workloads(docs).values():
        for container in containers(workload):
            used |= set(env_of(container))
            refs = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])]
            assert refs == ["baton-settings"]
    assert unknown_settings(used) == set()


def secret_refs(docs: list[Doc]) -> Iterator[tuple[str, str]]:
    for workload in of_kind(docs, *WORKLOADS).values():
        for container in containers(workload):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield ref["name"], ref["key"]
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                yield volume["secret"]["secretName"], ""


def test_every_secret_read_is_described(docs: list[Doc]) -> None:
    """secrets.example.yaml names each Secret and key a pod reads (or how it is made)."""
    examples = secrets_example()
    text = (HERE / "secrets.example.yaml").read_text()
    for secret, key in secret_refs(docs):
        if key:
            assert key in examples[secret]["stringData"], (secret, key)
        else:
            assert f"create secret generic {secret}" in text, secret


def test_each_service_has_its_own_nats_password(docs: list[Doc]) -> None:
    for workload in baton_workloads(docs).values():
        for container in containers(workload):
            service = program(container).removeprefix("baton-")
            ref = env_of(container)["BATON_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "baton-nats-passwords", "key": service}


def test_the_stores_are_in_postgresql(docs: list[Doc]) -> None:
    for workload in baton_workloads(docs).values():
        for container in containers(workload):
            if program(container) == "baton-device-bridge":
                continue  # its bridge.sqlite only, on its own volume
            ref = env_of(container)["BATON_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "baton-database", "key": "uri"}


def test_each_bridge_has_its_number_and_its_volume(docs: list[Doc]) -> None:
    bridge = of_kind(docs, "StatefulSet")["baton-device-bridge"]
    (container,) = containers(bridge)
    env = env_of(container)
    assert int(env["BATON_BRIDGE_REPLICAS"]["value"]) == bridge["spec"]["replicas"]
    index = "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["BATON_BRIDGE_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == index
    claims = [claim["metadata"]["name"] for claim in bridge["spec"]["volumeClaimTemplates"]]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == settings_map(docs)["BATON_DATA_DIR"]
    assert "data" in claims


def test_the_catalog_is_the_demo_catalog(docs: list[Doc]) -> None:
    catalog = of_kind(docs, "ConfigMap")["baton-catalog"]["data"]
    assert catalog["demo.yaml"] == (ROOT / "deploy/catalog/demo.yaml").read_text()
    path = Path(settings_map(docs)["BATON_CATALOG_PATH"])
    for workload in baton_workloads(docs).values():
        (container,) = containers(workload)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert Path(mounts["catalog"]) == path.parent


def test_the_nats_nodes_form_one_cluster(docs: list[Doc], tmp_path: Path) -> None:
    """The services list every pod of the StatefulSet; each pod runs the config nats-setup
    writes for its name, whose routes name every pod through the headless Service."""
    nats = of_kind(docs, "StatefulSet")["baton-nats"]
    service = of_kind(docs, "Service")["baton-nats"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert nats["spec"]["serviceName"] == "baton-nats"
    pods = [f"baton-nats-{n}" for n in range(nats["spec"]["replicas"])]
    hosts = [f"{pod}.baton-nats" for pod in pods]
    assert nats["spec"]["replicas"] == 3
    assert settings_map(docs)["BATON_NATS_URL"].split(",") == [f"nats://{h}:4222" for h in hosts]
    assert settings_map(docs)["BATON_NATS_REPLICAS"] == "3"
    (container,) = containers(nats)
    assert container["args"] == ["-c", "/etc/nats-config/$(POD_NAME).conf"]
    configs = write_cluster_configs(tmp_path, ROOT / "deploy/nats/cluster.conf", ["default"], hosts)
    assert [config.name for config in configs] == [f"{pod}.conf" for pod in pods]
    for host, config in zip(hosts, configs, strict=True):
        text = config.read_text()
        assert f'server_name: "{node_name(host)}"' in text
        routes = re.findall(r"nats-route://route:[^@]+@([^\"]+)", text)
        assert routes == [f"{h}:6222" for h in hosts]


def test_mqtt_clients_read_their_accounts_from_mqtt_setup(docs: list[Doc], tmp_path: Path) -> None:
    """The files of baton-mqtt-accounts as `baton mqtt-setup` writes them for the bridges'
    pods: the api reads api.env, each bridge its pod's file (mounted for every pod), and
    Mosquitto starts from dynamic-security.json with deploy/mosquitto's config."""
    bridge = of_kind(docs, "StatefulSet")["baton-device-bridge"]
    pods = [f"baton-device-bridge-{n}" for n in range(bridge["spec"]["replicas"])]
    written = {path.name: path for path in write_mqtt_accounts(tmp_path, pods, False)}
    for path in written.values():
        keys = {line.split("=", 1)[0] for line in path.read_text().splitlines()}
        assert unknown_settings(keys) == set(), path.name
    (container,) = containers(bridge)
    assert ". /etc/baton-mqtt/$(BATON_INSTANCE).env" in container["command"][-1]
    volumes = {v["name"]: v for v in bridge["spec"]["template"]["spec"]["volumes"]}
    items = [item["key"] for item in volumes["mqtt-accounts"]["secret"]["items"]]
    assert items == [f"{pod}.env" for pod in pods]
    assert set(items) <= set(written)
    (api,) = containers(of_kind(docs, "Deployment")["baton-api"])
    assert ". /etc/baton-mqtt/api.env" in api["command"][-1]
    assert "api.env" in written
    mosquitto = of_kind(docs, "StatefulSet")["baton-mosquitto"]
    (broker,) = containers(mosquitto)
    assert f"/etc/baton-mqtt/{DYNSEC_FILE}" in broker["args"][-1]
    config = of_kind(docs, "ConfigMap")["baton-mosquitto"]["data"]["mosquitto.conf"]
    assert config == (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()


def test_kustomize_builds_it(docs: list[Doc]) -> None:
    """What `kubectl apply -k` would apply: every object, in the namespace, the image named."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    built = subprocess.run(
        [kubectl, "kustomize", str(HERE)], capture_output=True, text=True, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(built) if doc]
    assert {(d["kind"], d["metadata"]["name"]) for d in objects} == {
        (d["kind"], d["metadata"]["name"]) for d in docs
    }
    for doc in objects:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "baton", doc["metadata"]["name"]
        if doc["kind"] in WORKLOADS:
            for container in containers(doc):
                assert container["image"] != "baton", doc["metadata"]["name"]
