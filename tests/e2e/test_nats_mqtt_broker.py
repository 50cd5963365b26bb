"""The same commands end to end where no Mosquitto is installed: nats-server's MQTT 3.1.1
listener is the broker (no MQTT 5 properties, no message expiry)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiomqtt
import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import TERMINAL, Baton, make_stack, running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def nats_mqtt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("nats-mqtt"), broker="nats")) as started:
        yield started


def test_mqtt_protocol_is_3_1_1(nats_mqtt_stack: Stack) -> None:
    assert nats_mqtt_stack.env()["BATON_MQTT_PROTOCOL"] == "3.1.1"


def test_success_progress_and_failure(nats_mqtt_stack: Stack) -> None:
    baton = Baton(nats_mqtt_stack)
    ok = baton.send("demo-thermostat-1", "set_temperature", {"value": 18}, wait=10).json()
    assert ok["status"] == "SUCCEEDED"
    assert ok["result"] == {"current_temperature": 18}
    rebooted = baton.wait_for(baton.send("demo-thermostat-2", "reboot").json()["id"], TERMINAL)
    assert [e["status"] for e in rebooted["log"]] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    failed = baton.send("demo-thermostat-3", "self_test", wait=10).json()
    assert failed["status"] == "FAILED"


def test_silent_device_times_out(nats_mqtt_stack: Stack) -> None:
    baton = Baton(nats_mqtt_stack)
    execution = baton.send("demo-silent-1", "reboot", ttl=2).json()
    done = baton.wait_for(execution["id"], TERMINAL, timeout=2 + 2)
    assert done["status"] == "TIMED_OUT"


def test_device_credentials_are_issued_on_nats_server_too(nats_mqtt_stack: Stack) -> None:
    """The api rewrites nats-server's MQTT users and has it reload them: the device connects
    with what the API answered."""
    baton = Baton(nats_mqtt_stack)
    issued = baton.http.post("/v1/devices/demo-thermostat-1/credentials")
    assert issued.status_code == 201, issued.text
    body = issued.json()

    async def connects(password: str) -> bool:
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                nats_mqtt_stack.mqtt_port or 0,
                username=body["username"],
                password=password,
                identifier=body["username"],
                protocol=aiomqtt.ProtocolVersion.V311,
            ):
                return True
        except aiomqtt.MqttError:
            return False

    async def eventually_connects() -> bool:
        for _ in range(40):  # the reload is asynchronous: up to 2 s
            if await connects(body["password"]):
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(eventually_connects())
    assert not asyncio.run(connects("not-the-password"))
