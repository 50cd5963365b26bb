"""The harness itself: the servers it starts are real and reachable."""

from __future__ import annotations

import aiomqtt
import nats
import pytest

from baton_cli.localstack import Server

pytestmark = pytest.mark.integration


async def test_nats_server_has_jetstream(nats_server: Server) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_mqtt_broker_round_trip(mqtt_broker: Server) -> None:
    protocol = (
        aiomqtt.ProtocolVersion.V5
        if mqtt_broker.extra["protocol"] == "5"
        else aiomqtt.ProtocolVersion.V311
    )
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol, identifier="harness"
    ) as client:
        await client.subscribe("harness/echo", qos=1)
        await client.publish("harness/echo", b"ping", qos=1)
        async for message in client.messages:
            assert message.payload == b"ping"
            break
