"""Presence and state through the device-bridge, against a real nats-server and both MQTT
brokers (Mosquitto, MQTT 5; nats-server's MQTT 3.1.1 listener).

A device says it is online/offline on its retained status topic (and its last will); it
reports its state on its state topic. The bridge turns each into a `presence` / `state`
report in BATON_REPORTS. The dispatcher is absent: the reports stay in the work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from baton_cli.localstack import Server
from baton_contracts.nats import (
    REPORT_ADAPTER,
    REPORTS_STREAM,
    DeviceReport,
    PresenceReport,
    StateReport,
)
from baton_contracts.profiles import codec_for
from baton_device_bridge.edges import SERVICE
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.settings import Settings
from baton_simulator import CHARGER, DeviceWire, SimulatedDevice
from baton_simulator.device import Broker
from tests.conftest import eventually, nats_access
from tests.integration.test_device_bridge import Bridge

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "deploy/catalog/policies.yaml"
BATON = codec_for("baton")

Report = DeviceReport | PresenceReport | StateReport


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return Settings(
        **nats_access(nats_server),
        mqtt_host="127.0.0.1",
        mqtt_port=mqtt_broker.port,
        mqtt_protocol=mqtt_broker.extra["protocol"],
        data_dir=tmp_path / "data",
        instance=f"test-{uuid4().hex[:8]}",
        catalog_path=CATALOG,
    )


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[Bridge]:
    service = Bridge(settings)
    await service.start()
    yield service
    await service.stop()


def protocol_of(broker: Server) -> aiomqtt.ProtocolVersion:
    v5 = broker.extra["protocol"] == "5"
    return aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311


async def all_reports(js: JetStreamContext) -> list[Report]:
    info = await js.stream_info(REPORTS_STREAM)
    found: list[Report] = []
    if info.state.messages == 0:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(REPORTS_STREAM, seq=seq)
        assert msg.data is not None
        found.append(REPORT_ADAPTER.validate_json(msg.data))
    return found


async def presence_of(js: JetStreamContext, device_id: str) -> list[PresenceReport]:
    return [
        r
        for r in await all_reports(js)
        if isinstance(r, PresenceReport) and r.device_id == device_id
    ]


async def states_of(js: JetStreamContext, device_id: str) -> list[StateReport]:
    return [
        r for r in await all_reports(js) if isinstance(r, StateReport) and r.device_id == device_id
    ]


async def presence_count(js: JetStreamContext, device_id: str, n: int) -> list[PresenceReport]:
    async def probe() -> list[PresenceReport] | None:
        found = await presence_of(js, device_id)
        return found if len(found) >= n else None

    return await eventually(probe, what=f"{n} presence report(s) of {device_id}")


def rejected(reason: str) -> float:
    value: float = REJECTED_MESSAGES.labels(service=SERVICE, reason=reason)._value.get()
    return value


def status_body(online: bool, connection: str) -> bytes:
    return json.dumps({"online": online, "connection": connection}).encode()


async def publish(broker: Server, topic: str, payload: bytes, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=protocol_of(broker)) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


# --- the simulator's devices ------------------------------------------------------------------


async def test_a_simulated_device_is_online_while_connected_and_offline_after_a_clean_stop(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    broker = Broker("127.0.0.1", mqtt_broker.port, mqtt_broker.extra["protocol"])
    for n in range(2):  # online, offline, online, offline: no change may collapse
        device = SimulatedDevice("charger-1", CHARGER, broker, wire=DeviceWire("charger-1"))
        running = asyncio.create_task(device.run())
        await presence_count(js, "charger-1", 2 * n + 1)
        running.cancel()  # a clean stop: the device says it is offline, then disconnects
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await presence_count(js, "charger-1", 2 * n + 2)
    reports = await presence_of(js, "charger-1")
    assert [r.online for r in reports] == [True, False, True, False]
    assert len({r.report_id for r in reports}) == 4


async def test_a_simulated_device_reports_the_state_its_command_asked_for(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    broker = Broker("127.0.0.1", mqtt_broker.port, mqtt_broker.extra["protocol"])
    device = SimulatedDevice("charger-2", CHARGER, broker, wire=DeviceWire("charger-2"))
    running = asyncio.create_task(device.run())
    try:
        await device.wait_online()
        execution_id = uuid4()
        request = {
            "execution_id": str(execution_id),
            "name": "StartCharging",
            "params": {},
            "deadline": "2099-01-01T00:00:00Z",
        }
        topic = f"baton/v1/devices/charger-2/executions/{execution_id}/request"
        await publish(mqtt_broker, topic, json.dumps(request).encode())
        [state] = await eventually(lambda: states_of(js, "charger-2"), what="state report")
        assert state.state == {"charging": True}
        assert state.report_id.startswith("state:charger-2:")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


# --- the last will ------------------------------------------------------------------------------


async def test_an_unclean_disconnect_is_announced_by_the_last_will(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    """Mosquitto and nats-server's MQTT listener both publish a retained last will."""
    js = nc.jetstream()
    offline = BATON.encode_status("charger-3", False, "c-1", {})
    online = BATON.encode_status("charger-3", True, "c-1", {})
    assert offline is not None and online is not None
    will = aiomqtt.Will(offline.topic, offline.payload, qos=1, retain=True)
    client = aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol_of(mqtt_broker), will=will
    )
    await client.__aenter__()
    await client.publish(online.topic, online.payload, qos=1, retain=True)
    await presence_count(js, "charger-3", 1)
    # The connection breaks without a DISCONNECT, as when a device loses power.
    sock = client._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    [_, gone] = await presence_count(js, "charger-3", 2)
    assert gone.online is False
    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)

    # The broker kept the will as the retained status: a bridge that subscribes later reads it.
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol_of(mqtt_broker)
    ) as reader:
        await reader.subscribe(offline.topic, qos=1)
        retained = await asyncio.wait_for(anext(aiter(reader.messages)), 5)
        assert retained.payload == offline.payload


# --- retained status and repeats ---------------------------------------------------------------


async def test_a_retained_status_is_read_at_start_and_again_after_a_restart_harmlessly(
    settings: Settings, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    await publish(mqtt_broker, "baton/v1/devices/charger-1/status", status_body(False, "r"), True)
    bridge = Bridge(settings)
    await bridge.start()
    try:
        [first] = await presence_count(js, "charger-1", 1)
        assert first.online is False
        # Restarted, the bridge subscribes again and the broker hands the retained status over
        # again: the same message, the same report id, so JetStream stores it once. A later
        # change proves the bridge has read everything before it.
        await bridge.stop()
        await bridge.start()
        await publish(
            mqtt_broker, "baton/v1/devices/charger-1/status", status_body(True, "s"), True
        )
        reports = await presence_count(js, "charger-1", 2)
        assert [r.online for r in reports] == [False, True]
    finally:
        await bridge.stop()


async def test_a_repeated_status_message_is_stored_once(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    topic = "baton/v1/devices/charger-2/status"
    await publish(mqtt_broker, topic, status_body(True, "a"))
    await publish(mqtt_broker, topic, status_body(True, "a"))  # a QoS 1 repeat
    await publish(mqtt_broker, topic, status_body(False, "a"))
    reports = await presence_count(js, "charger-2", 2)
    assert [r.online for r in reports] == [True, False]


async def test_bare_words_are_presence_too_and_never_collapse(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    topic = "baton/v1/devices/charger-3/status"
    for word in (b"offline", b"online", b"offline"):
        await publish(mqtt_broker, topic, word)
    reports = await presence_count(js, "charger-3", 3)
    assert [r.online for r in reports] == [False, True, False]


# --- state --------------------------------------------------------------------------------------


async def test_each_state_message_becomes_a_state_report(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    topic = "baton/v1/devices/charger-1/state"
    # The same state twice (charging, stopped, charging again) is two reports, not one.
    for charging in (True, False, True):
        await publish(mqtt_broker, topic, json.dumps({"charging": charging}).encode())

    async def three() -> list[StateReport] | None:
        found = await states_of(js, "charger-1")
        return found if len(found) == 3 else None

    reports = await eventually(three, what="three state reports")
    assert [r.state for r in reports] == [{"charging": c} for c in (True, False, True)]
    assert len({r.report_id for r in reports}) == 3


# --- bad input ----------------------------------------------------------------------------------


async def test_bad_status_and_state_messages_are_dropped_and_counted(
    bridge: Bridge, nc: Client, mqtt_broker: Server
) -> None:
    js = nc.jetstream()
    before = {
        reason: rejected(reason)
        for reason in ("malformed-presence", "malformed-state", "unknown-device")
    }
    await publish(mqtt_broker, "baton/v1/devices/charger-1/status", b"maybe")
    await publish(mqtt_broker, "baton/v1/devices/charger-1/status", b'{"online": "yes"}')
    await publish(mqtt_broker, "baton/v1/devices/charger-1/state", b"[1, 2]")
    await publish(mqtt_broker, "baton/v1/devices/charger-1/state", b"{not json")
    await publish(mqtt_broker, "baton/v1/devices/nobody/status", status_body(True, "x"))
    await publish(mqtt_broker, "baton/v1/devices/nobody/state", b"{}")
    # Messages on one topic arrive in order: once this one is stored, the bad ones were read.
    await publish(mqtt_broker, "baton/v1/devices/charger-1/state", b'{"ok": true}')
    [state] = await eventually(lambda: states_of(js, "charger-1"), what="the good state")
    assert state.state == {"ok": True}

    async def counted() -> bool:
        return (
            rejected("malformed-presence") - before["malformed-presence"] == 2
            and rejected("malformed-state") - before["malformed-state"] == 2
            and rejected("unknown-device") - before["unknown-device"] == 2
        )

    await eventually(counted, what="the bad messages counted")
    assert [r for r in await all_reports(js) if not isinstance(r, StateReport)] == []
