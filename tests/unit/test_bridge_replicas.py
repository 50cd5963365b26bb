"""Bridge replicas: each device belongs to exactly one replica, which alone subscribes to its
topics (baton_device_bridge.replicas, docs/operations.md "Bridge replicas")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from baton_cli.localstack import Stack
from baton_cli.mqtt_setup import SLOTS_FILE, write_mqtt_accounts
from baton_contracts.mqtt import is_probe_topic, probe_topic
from baton_device_bridge.replicas import (
    ReplicasError,
    Share,
    probe_filter,
    share_of,
    slot_settings,
)
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog
from baton_platform.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy/catalog/demo.yaml"
PROFILES = Catalog.from_yaml(ROOT / "deploy/catalog/profiles.yaml")


def settings(**values: Any) -> Settings:
    return Settings(**{"instance": "b1", "mqtt_protocol": "5", **values})


@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_every_device_belongs_to_exactly_one_replica_and_each_has_some(replicas: int) -> None:
    devices = [f"device-{n}" for n in range(300)]
    shares = [Share(replicas, index) for index in range(replicas)]
    for device_id in devices:
        assert sum(share.owns(device_id) for share in shares) == 1, device_id
    for share in shares:
        assert any(share.owns(device_id) for device_id in devices), share


def test_the_share_is_a_function_of_the_device_id_alone() -> None:
    # Two processes (or a restart) must agree on it: no per-process salt (hash()).
    assert [Share(4, i).owns("demo-thermostat-1") for i in range(4)] == [
        Share(4, i).owns("demo-thermostat-1") for i in range(4)
    ]
    assert Share().owns("anything") and Share().alone


def test_a_replica_subscribes_to_its_own_devices_topics_and_no_wildcard_device() -> None:
    wiring = Wiring(PROFILES)
    shares = [Share(2, 0), Share(2, 1)]
    own = [set(wiring.device_filters(share)) for share in shares]
    assert own[0] and own[1] and not own[0] & own[1]
    every: set[str] = set()
    for device in PROFILES.devices:
        target = wiring.target(device.id)
        assert target is not None
        topics = set(target.codec.device_topics(target.wire_id, target.type_wire))
        owner = [i for i, share in enumerate(shares) if share.owns(device.id)]
        assert topics <= own[owner[0]], device.id
        every |= topics
    assert own[0] | own[1] == every
    # A single bridge keeps its wildcard filters, as before.
    assert wiring.device_filters(Share()) == wiring.device_filters()


def test_a_replicas_probe_travels_its_own_topic() -> None:
    topic = probe_topic(probe_filter("b1"))
    assert topic == "baton/v1/bridges/b1/_baton_probe_"
    assert is_probe_topic(topic)
    assert probe_topic(probe_filter("b2")) != topic


def test_replicas_are_refused_on_mqtt_3_1_1_and_a_single_bridge_is_not() -> None:
    with pytest.raises(ReplicasError, match="needs MQTT 5"):
        share_of(settings(mqtt_protocol="3.1.1", bridge_replicas=2, bridge_replica=1))
    assert share_of(settings(mqtt_protocol="3.1.1")) == Share(1, 0)
    assert share_of(settings(bridge_replicas=3, bridge_replica=2)) == Share(3, 2)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"bridge_replicas": 2, "bridge_replica": 2}, "not one of 0..1"),
    ],
)
def test_replica_settings_that_cannot_work_are_refused(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ReplicasError, match=says):
        share_of(settings(**values))


def test_a_replica_on_mqtt_3_1_1_stops_at_start_with_one_line_naming_the_setting() -> None:
    env = {
        **os.environ,
        "BATON_BRIDGE_REPLICAS": "2",
        "BATON_BRIDGE_REPLICA": "1",
        "BATON_MQTT_PROTOCOL": "3.1.1",
        "BATON_NATS_URL": "nats://127.0.0.1:1",  # never reached: it stops before
    }
    done = subprocess.run(
        [sys.executable, "-m", "baton_device_bridge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("device-bridge: BATON_BRIDGE_REPLICAS=2 needs MQTT 5")
    ), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("broker", ["mosquitto", "nats"])
def test_the_local_stack_gives_each_bridge_replica_its_number_and_its_own_account(
    tmp_path: Path, broker: str
) -> None:
    stack = Stack(tmp_path, "key", DEMO, broker=broker, replicas=2)
    bridges = [name for name in stack.names if name.startswith("device-bridge")]
    if broker == "nats":  # MQTT 3.1.1: one bridge
        assert bridges == ["device-bridge-1"]
        assert stack.service_env("device-bridge-1")["BATON_BRIDGE_REPLICAS"] == "1"
        return
    assert bridges == ["device-bridge-1", "device-bridge-2"]
    envs = [stack.service_env(name) for name in bridges]
    assert [e["BATON_BRIDGE_REPLICA"] for e in envs] == ["0", "1"]
    assert {e["BATON_BRIDGE_REPLICAS"] for e in envs} == {"2"}
    assert len({e["BATON_INSTANCE"] for e in envs}) == 2
    assert len({e["BATON_DATA_DIR"] for e in envs}) == 2
    # Own client ids (own sessions), each bound to an account the broker admits.
    assert len({e["BATON_MQTT_CLIENT_ID"] for e in envs}) == 2
    admitted = {(a.username, a.client_id) for a in stack.accounts.every}
    assert {(e["BATON_MQTT_USERNAME"], e["BATON_MQTT_CLIENT_ID"]) for e in envs} <= admitted
    # Made once: the next look finds the same accounts.
    assert [stack.service_env(name) for name in bridges] == envs


def test_a_lone_bridge_runs_with_its_own_settings_unchanged() -> None:
    """Its session, durable and watermark are named after its instance, as always."""
    lone = settings(mqtt_client_id="given")
    assert slot_settings(lone, 0) is lone


def test_a_slot_is_named_the_same_whichever_replica_runs_it() -> None:
    mine = slot_settings(settings(instance="r1", bridge_replicas=2, bridge_replica=0), 1)
    theirs = slot_settings(settings(instance="r2", bridge_replicas=2, bridge_replica=1), 1)
    for ran in (mine, theirs):
        assert (ran.instance, ran.bridge_replica) == ("slot-1", 1)
        assert ran.mqtt_client_id == "baton-device-bridge-slot-1"
    assert share_of(mine) == Share(2, 1)


def test_each_slot_connects_with_its_account_from_the_file_mqtt_setup_writes(
    tmp_path: Path,
) -> None:
    """mqtt-setup's bridge-slots.json: slot k is the k-th --bridge's account and client id."""
    write_mqtt_accounts(tmp_path, ["bridge-a", "bridge-b"], simulator=False)
    path = tmp_path / SLOTS_FILE
    assert path.stat().st_mode & 0o077 == 0  # passwords: its owner's only
    replica = settings(bridge_replicas=2, bridge_replica=0, bridge_slot_accounts=path)
    share_of(replica)  # accepted
    for slot, instance in enumerate(["bridge-a", "bridge-b"]):
        ran = slot_settings(replica, slot)
        assert ran.mqtt_username == ran.mqtt_client_id == f"baton-device-bridge-{instance}"
        assert ran.mqtt_password is not None and ran.mqtt_password.get_secret_value()
    three = replica.model_copy(update={"bridge_replicas": 3})
    with pytest.raises(ReplicasError, match="slot"):
        share_of(three)
    path.write_text("{not json")
    with pytest.raises(ReplicasError, match="BATON_BRIDGE_SLOT_ACCOUNTS"):
        share_of(replica)
