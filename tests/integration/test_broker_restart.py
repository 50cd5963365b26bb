"""The Mosquitto that `make run` and the tests start keeps persistent sessions and their queued
QoS 1 messages across a graceful restart (issue 6, defect 12).

Started as root, Mosquitto 2.0 drops to user `mosquitto` unless told otherwise, and then
cannot write `mosquitto.db` into a directory root made: every restart lost every session.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import aiomqtt
import nats
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from baton_cli.localstack import Server, find_binary, start_mosquitto
from baton_contracts.mqtt import response_topic
from baton_platform.nats import ensure_streams
from baton_platform.nats_access import OPS
from tests.conftest import eventually, start_baton_nats
from tests.integration.test_device_bridge import (
    DEVICE,
    Bridge,
    make_settings,
    reports_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_binary("mosquitto") is None, reason="Mosquitto is not installed"),
]


class Mosquitto:
    """One broker on one port and data directory, restarted gracefully by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: Server = start_mosquitto(workdir)
        self.port = self.server.port

    def restart(self) -> None:
        proc = self.server.proc
        proc.send_signal(signal.SIGTERM)  # graceful: Mosquitto saves its database on the way out
        assert proc.wait(timeout=10) == 0, (self.workdir / "mosquitto.log").read_text()
        self.server = start_mosquitto(self.workdir, port=self.port)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


def persistent(port: int, identifier: str) -> aiomqtt.Client:
    """A client whose session (subscriptions, queued QoS 1 messages) outlives its connection."""
    expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    expiry.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=expiry,
    )


async def test_a_queued_qos1_message_survives_a_graceful_broker_restart(
    mosquitto: Mosquitto,
) -> None:
    identifier, topic = f"offline-{uuid4().hex[:8]}", "baton-test/persistence"
    async with persistent(mosquitto.port, identifier) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    # The subscriber is offline now; its session holds the message.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as publisher:
        await publisher.publish(topic, b"kept", qos=1)

    mosquitto.restart()

    assert (mosquitto.workdir / "mosquitto.db").exists(), "no persistence file written"
    log = (mosquitto.workdir / "mosquitto.log").read_text()
    assert "Permission denied" not in log, log
    async with persistent(mosquitto.port, identifier) as subscriber:
        message = await asyncio.wait_for(anext(aiter(subscriber.messages)), timeout=10)
    assert (str(message.topic), message.payload, message.qos) == (topic, b"kept", 1)


async def test_a_device_answer_sent_while_the_bridge_is_away_survives_a_broker_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    nats_server = start_baton_nats(tmp_path / "nats")
    try:
        nc = await nats.connect(nats_server.url_as(OPS))
        js = nc.jetstream()
        await ensure_streams(js)
        bridge = Bridge(make_settings(nats_server, mosquitto.port, "5", tmp_path))
        await bridge.start()  # subscribes in its persistent session
        await bridge.stop()

        execution_id = uuid4()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
            body = {"status": "SUCCEEDED", "payload": {"t": 21}, "answer_id": "a-1"}
            await device.publish(
                response_topic(DEVICE, execution_id), json.dumps(body).encode(), qos=1
            )
        mosquitto.restart()

        await bridge.start()
        try:
            [report] = await eventually(
                lambda: reports_for(js, execution_id), what="the answer after the restart"
            )
        finally:
            await bridge.stop()
            await nc.close()
        assert (report.status, report.payload) == ("SUCCEEDED", {"t": 21})
    finally:
        nats_server.stop()
