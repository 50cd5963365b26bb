"""compose.yaml and what it mounts from deploy/: the production topology on one host.

No Docker engine is needed: the file is read as YAML (with its anchors and merge keys, as
compose reads them) and its invariants are checked, and the NATS nodes' configs are written
with the very command line its `nats-setup` runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton_cli.mqtt_setup import DYNSEC_FILE, write_mqtt_accounts
from baton_cli.nats_setup import write_cluster_configs
from tests.unit.deploy_support import unknown_settings

ROOT = Path(__file__).resolve().parents[2]
BATON_COMMANDS = {"baton-api", "baton-dispatcher", "baton-device-bridge", "baton-timeout-scheduler"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def program(service: dict[str, Any]) -> str | None:
    """The program a service runs: its command's, or the one its `sh -c` script execs."""
    command: list[str] = service.get("command") or [None]
    if command[0] == "sh":
        return command[-1].rpartition("exec ")[2].split()[0]
    return command[0]


def sourced(service: dict[str, Any]) -> list[str]:
    """The env files its `sh -c` script reads (`. FILE`)."""
    command: list[str] = service.get("command") or [""]
    return re.findall(r"\. (\S+\.env)", command[-1]) if command[0] == "sh" else []


def replicas_of(compose: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in services(compose).items() if program(service) == command
    }


def baton_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services(compose).items()
        if program(service) in BATON_COMMANDS
    }


def env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        assert "image" in service or "build" in service, name


def test_two_replicas_of_each_service(compose: dict[str, Any]) -> None:
    for command in BATON_COMMANDS:
        assert len(replicas_of(compose, command)) == 2, command


def test_no_data_volume_is_written_by_two_services(compose: dict[str, Any]) -> None:
    writers: dict[str, list[str]] = {}
    for name, service in services(compose).items():
        for mount in service.get("volumes", []):
            source, _, rest = mount.partition(":")
            if source.startswith((".", "/")):
                continue  # a file of the repository, mounted read-only
            if not rest.endswith(":ro"):
                writers.setdefault(source, []).append(name)
    assert {volume: names for volume, names in writers.items() if len(names) > 1} == {}
    declared = set(compose["volumes"])
    assert set(writers) <= declared


def test_each_replica_has_its_own_instance(compose: dict[str, Any]) -> None:
    instances = [env(service).get("BATON_INSTANCE") for service in baton_services(compose).values()]
    assert None not in instances
    assert len(set(instances)) == len(instances)


def test_every_baton_variable_is_a_setting(compose: dict[str, Any]) -> None:
    used = {key for service in services(compose).values() for key in env(service)}
    assert unknown_settings(used) == set()


def test_bridge_replicas_are_numbered_once_each(compose: dict[str, Any]) -> None:
    bridges = [env(s) for s in replicas_of(compose, "baton-device-bridge").values()]
    counts = {int(bridge["BATON_BRIDGE_REPLICAS"]) for bridge in bridges}
    assert counts == {len(bridges)}
    assert sorted(int(bridge["BATON_BRIDGE_REPLICA"]) for bridge in bridges) == list(
        range(len(bridges))
    )


def nats_nodes(compose: dict[str, Any]) -> list[str]:
    command: list[str] = services(compose)["nats-setup"]["command"]
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--node"]


def test_the_services_reach_every_nats_node_and_keep_three_copies(
    compose: dict[str, Any],
) -> None:
    nodes = nats_nodes(compose)
    assert len(nodes) == 3
    for name, service in baton_services(compose).items():
        settings = env(service)
        assert settings["BATON_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes], name
        assert settings["BATON_NATS_REPLICAS"] == "3", name
        assert settings["BATON_DATABASE_URL"].startswith("postgresql://"), name


def test_the_nats_nodes_configs_name_each_others_routes(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The configs written by nats-setup's own command line: each node runs its own, with
    its server_name and a route to every node, all with one route password."""
    setup = services(compose)["nats-setup"]
    command: list[str] = setup["command"]
    base_in_container = command[command.index("--base") + 1]
    mounts = dict(reversed(m.split(":")[:2]) for m in setup["volumes"])
    base = ROOT / mounts[base_in_container]
    nodes = nats_nodes(compose)
    configs = write_cluster_configs(tmp_path, base, ["default"], nodes)
    passwords = set()
    for node, config in zip(nodes, configs, strict=True):
        assert services(compose)[node]["command"] == ["-c", f"/etc/baton-nats/{config.name}"]
        text = config.read_text()
        assert f'server_name: "{node}"' in text
        match = re.search(r"^cluster (\{.*?^\})", text, re.M | re.S)
        assert match is not None, node
        cluster = json.loads(match.group(1))
        hosts = [re.sub(r"^nats-route://route:[^@]+@", "", r) for r in cluster["routes"]]
        assert hosts == [f"{n}:6222" for n in nodes]
        passwords.add(cluster["authorization"]["password"])
        assert "sync_interval: always" in text
        assert "authorization {" in text
    assert len(passwords) == 1


def test_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = set()
    for name, service in baton_services(compose).items():
        settings = env(service)
        assert settings["BATON_METRICS_HOST"] == "0.0.0.0", name
        expected.add(f"{name}:{settings['BATON_METRICS_PORT']}")
    assert targets == expected


def test_the_api_address_balances_over_every_api_replica(compose: dict[str, Any]) -> None:
    gateway = services(compose)["api"]
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]
    nginx = (ROOT / "deploy/nginx/nginx.conf").read_text()
    upstream = set(re.findall(r"^\s*server (\S+?):8080", nginx, re.M))
    assert upstream == set(replicas_of(compose, "baton-api"))
    for name, service in replicas_of(compose, "baton-api").items():
        assert env(service)["BATON_API_HOST"] == "0.0.0.0", name
        assert "ports" not in service, name  # reached through the balancer only


def test_nats_setup_keeps_the_route_password_and_refuses_two_nodes_of_one_name(
    tmp_path: Path,
) -> None:
    base = ROOT / "deploy/nats/cluster.conf"
    first = [c.read_text() for c in write_cluster_configs(tmp_path, base, ["default"], ["a", "b"])]
    again = [c.read_text() for c in write_cluster_configs(tmp_path, base, ["default"], ["a", "b"])]
    assert first == again  # passwords and the route password kept: a node restarts as it was
    assert (tmp_path / "route-password").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        write_cluster_configs(tmp_path, base, ["default"], ["n1.east", "n1.west"])


def test_each_mqtt_client_reads_the_account_mqtt_setup_writes_for_it(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """mqtt-setup's own command line: an env file for the api, each bridge (named after its
    BATON_INSTANCE) and the simulator, each holding known settings; the broker starts from
    its dynamic-security file and the deploy/mosquitto config."""
    command: list[str] = services(compose)["mqtt-setup"]["command"]
    folder = command[2]
    bridges = [command[i + 1] for i, arg in enumerate(command) if arg == "--bridge"]
    written = write_mqtt_accounts(tmp_path, bridges, simulator="--simulator" in command)
    files = {f"{folder}/{path.name}": path for path in written}
    readers = {
        name: sourced(service) for name, service in services(compose).items() if sourced(service)
    }
    assert set(readers) == {
        *replicas_of(compose, "baton-api"),
        *replicas_of(compose, "baton-device-bridge"),
        "simulator",
    }
    for name, (path,) in readers.items():
        keys = {line.split("=", 1)[0] for line in files[path].read_text().splitlines()}
        assert unknown_settings(keys) == set(), name
        assert any(m.startswith(f"mqtt-auth:{folder}:") for m in services(compose)[name]["volumes"])
    for name, service in replicas_of(compose, "baton-device-bridge").items():
        assert sourced(service) == [f"{folder}/{env(service)['BATON_INSTANCE']}.env"], name
    for name, service in services(compose).items():
        if name not in {*readers, "mqtt-setup", "mosquitto"}:  # the passwords: no one else
            assert not any(m.startswith("mqtt-auth:") for m in service.get("volumes", [])), name
    mosquitto = services(compose)["mosquitto"]
    assert f"{folder}/{DYNSEC_FILE}" in mosquitto["command"][-1]
    assert (
        "./deploy/mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"
        in (mosquitto["volumes"])
    )
    config = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in config
    assert f"plugin_opt_config_file /mosquitto/data/{DYNSEC_FILE}" in config
