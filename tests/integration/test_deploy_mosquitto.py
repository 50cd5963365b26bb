"""deploy/mosquitto/mosquitto.conf with the accounts `baton mqtt-setup` writes (what
compose.yaml and deploy/kubernetes run): a real Mosquitto admits each Baton process with the
account of its env file, each bridge only under its own client id, and no one anonymous."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from baton_cli.localstack import find_binary, find_dynsec_plugin, free_port, wait_for_port
from baton_cli.mqtt_setup import DYNSEC_FILE, write_mqtt_accounts
from baton_cli.processes import start_process

ROOT = Path(__file__).resolve().parents[2]
BRIDGES = ["device-bridge-1", "device-bridge-2"]


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {key: shlex.split(value)[0] for key, value in pairs}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = find_binary("mosquitto")
    if binary is None:
        pytest.skip("mosquitto not installed")
    setup = tmp_path / "mqtt-auth"
    write_mqtt_accounts(setup, BRIDGES, simulator=True)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(setup / DYNSEC_FILE, data / DYNSEC_FILE)  # what the broker's start does once
    port = free_port()
    config = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    config = config.replace("/usr/lib/mosquitto_dynamic_security.so", find_dynsec_plugin())
    config = config.replace("/mosquitto/data/", f"{data}/")
    config = config.replace("listener 1883", f"listener {port} 127.0.0.1")
    config += f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    (tmp_path / "mosquitto.conf").write_text(config)
    proc = start_process(
        [binary, "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port, proc)
        yield port, setup
    finally:
        proc.terminate()
        proc.wait()


def client(
    port: int, username: str | None, password: str | None, identifier: str
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=username,
        password=password,
        identifier=identifier,
    )


async def admitted(mqtt: aiomqtt.Client) -> bool:
    try:
        async with mqtt:
            return True
    except aiomqtt.MqttError:
        return False


async def test_each_process_connects_with_its_own_account(broker: tuple[int, Path]) -> None:
    port, setup = broker
    for instance in BRIDGES:
        env = env_file(setup / f"{instance}.env")
        user, password = env["BATON_MQTT_USERNAME"], env["BATON_MQTT_PASSWORD"]
        assert await admitted(client(port, user, password, env["BATON_MQTT_CLIENT_ID"]))
    simulator = env_file(setup / "simulator.env")
    assert await admitted(
        client(port, simulator["BATON_MQTT_USERNAME"], simulator["BATON_MQTT_PASSWORD"], "sim-x")
    )
    api = env_file(setup / "api.env")
    assert api["BATON_MQTT_DEVICE_ACCOUNTS"] == "mosquitto-dynsec"
    admin = (api["BATON_MQTT_ADMIN_USERNAME"], api["BATON_MQTT_ADMIN_PASSWORD"])
    assert await admitted(client(port, *admin, "baton-api-x"))


async def test_no_one_takes_a_bridges_session(broker: tuple[int, Path]) -> None:
    port, setup = broker
    first, second = (env_file(setup / f"{instance}.env") for instance in BRIDGES)
    # The first bridge's account under the second's client id, and anonymous clients.
    user, password = first["BATON_MQTT_USERNAME"], first["BATON_MQTT_PASSWORD"]
    assert not await admitted(client(port, user, password, second["BATON_MQTT_CLIENT_ID"]))
    assert not await admitted(client(port, None, None, first["BATON_MQTT_CLIENT_ID"]))
    assert not await admitted(client(port, None, None, "anyone"))


def test_mqtt_setup_keeps_the_passwords(tmp_path: Path) -> None:
    write_mqtt_accounts(tmp_path, ["b1"], simulator=False)
    before = (tmp_path / "b1.env").read_text()
    write_mqtt_accounts(tmp_path, ["b1", "b2"], simulator=False)
    assert (tmp_path / "b1.env").read_text() == before
    assert (tmp_path / DYNSEC_FILE).stat().st_mode & 0o077 == 0
