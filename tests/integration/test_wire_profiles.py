"""Wire profiles against a real nats-server and a real MQTT broker (both flavours): the
bridge publishes a dispatched command in each profile of deploy/catalog/profiles.yaml, the
simulator (speaking the same profile) answers, and the answers come back as reports of
Baton's device id. Raw-mapped attribution survives a bridge restart.

nats-server's MQTT listener accepts the `$emqx/...` and `$aws/...` topics (checked here), so
no profile is skipped on either broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from baton_cli.localstack import Server
from baton_contracts.nats import DeviceReport
from baton_device_bridge.app import DeviceBridge
from baton_domain.catalog import Catalog
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from tests.conftest import eventually
from tests.integration.test_device_bridge import (
    make_settings,
    publish_event,
    rejected,
    reports_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CATALOG_PATH = ROOT / "deploy/catalog/profiles.yaml"
CATALOG = Catalog.from_yaml(CATALOG_PATH)


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return make_settings(nats_server, mqtt_broker.port, mqtt_broker.extra["protocol"], tmp_path)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[DeviceBridge]:
    bridge = DeviceBridge(settings, reconnect_cap=0.5, retry_cap=0.5, catalog=CATALOG)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[DeviceBridge]:
    async with running_bridge(settings) as service:
        yield service


@pytest.fixture
async def js(nats_server: Server) -> AsyncIterator[JetStreamContext]:
    import nats

    from baton_platform.nats import ensure_streams

    client: Client = await nats.connect(nats_server.url_as(OPS))
    await ensure_streams(client.jetstream())
    yield client.jetstream()
    await client.close()


async def dispatch(
    js: JetStreamContext,
    device_id: str,
    name: str,
    params: dict[str, Any] | None = None,
    ttl: float = 30,
) -> UUID:
    execution_id = uuid4()
    await publish_event(
        js,
        execution_id,
        "Dispatched",
        {
            "device_id": device_id,
            "device_type": CATALOG.device(device_id).type,
            "name": name,
            "params": params or {},
            "deadline": (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(),
        },
    )
    return execution_id


async def until_final(js: JetStreamContext, execution_id: UUID) -> list[DeviceReport]:
    async def ended() -> list[DeviceReport] | None:
        reports = await reports_for(js, execution_id)
        final = {"SUCCEEDED", "FAILED", "REJECTED"}
        return reports if any(r.status in final for r in reports) else None

    return await eventually(ended, what=f"a final answer for {execution_id}")


async def published(js: JetStreamContext, execution_id: UUID) -> bool:
    return any(r.kind == "published" for r in await reports_for(js, execution_id))


def answers(reports: list[DeviceReport]) -> list[tuple[str | None, dict[str, Any]]]:
    return [(r.status, r.payload) for r in reports if r.kind == "answer"]


@pytest.mark.parametrize("device_id", ["baton-thermo-1", "fleets-thermo-1", "aws-thermo-1"])
@pytest.mark.usefixtures("bridge", "simulated")
async def test_each_json_profile_carries_a_command_and_its_answers(
    js: JetStreamContext, device_id: str
) -> None:
    ok = await dispatch(js, device_id, "set_temperature", {"value": 24})
    refused = await dispatch(js, device_id, "factory_reset")
    reports = await until_final(js, ok)
    # The `published` report may be stored after the first answer: two paths race.
    await eventually(lambda: published(js, ok), what="published report")
    assert {r.device_id for r in reports} == {device_id}
    statuses = [status for status, _ in answers(reports)]
    # AWS has no STARTED: its device says IN_PROGRESS.
    assert statuses == (
        ["IN_PROGRESS", "SUCCEEDED"] if device_id == "aws-thermo-1" else ["STARTED", "SUCCEEDED"]
    )
    assert answers(reports)[-1] == ("SUCCEEDED", {"current_temperature": 24})
    [(status, payload)] = answers(await until_final(js, refused))
    assert status == "REJECTED"
    assert "not allowed" in payload["message"]


@pytest.mark.usefixtures("bridge", "simulated")
async def test_raw_mapped_answers_are_attributed_to_the_command_in_flight(
    js: JetStreamContext,
) -> None:
    lock = await dispatch(js, "iotee-1", "lock")
    assert answers(await until_final(js, lock)) == [
        ("STARTED", {"answer": "ack"}),
        ("SUCCEEDED", {"answer": "done"}),
    ]
    test = await dispatch(js, "iotee-1", "self_test")
    assert answers(await until_final(js, test))[-1] == ("FAILED", {"answer": "err"})
    assert answers(await reports_for(js, lock))[-1][0] == "SUCCEEDED"  # nothing leaked over


def protocol(broker: Server) -> aiomqtt.ProtocolVersion:
    v5 = broker.extra["protocol"] == "5"
    return aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311


async def test_raw_mapped_attribution_survives_a_bridge_restart(
    settings: Settings, mqtt_broker: Server, js: JetStreamContext
) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol(mqtt_broker)
    ) as device:
        await device.subscribe("iotee/dev/ABC123/rls", qos=1)
        async with running_bridge(settings):
            execution_id = await dispatch(js, "iotee-1", "unlock")
            message = await asyncio.wait_for(anext(aiter(device.messages)), 10)
            assert (str(message.topic), message.payload) == ("iotee/dev/ABC123/rls", b"0")
            await eventually(lambda: reports_for(js, execution_id), what="published report")
        # A new bridge: only what it reads back from its SQLite file can attribute this.
        async with running_bridge(settings):
            await device.publish("iotee/dev/ABC123/rls/ack", b"done", qos=1)
            await device.publish("iotee/dev/ABC123/rls/ack", b"done", qos=1)  # a QoS 1 repeat
            reports = await until_final(js, execution_id)
            assert answers(reports) == [("SUCCEEDED", {"answer": "done"})]
            assert reports[-1].device_id == "iotee-1"
    assert (settings.data_dir / "bridge.sqlite").exists()


@pytest.mark.usefixtures("bridge")
async def test_unreadable_and_unknown_answers_are_dropped_and_counted(
    mqtt_broker: Server, js: JetStreamContext
) -> None:
    unknown, malformed = rejected("unknown-device"), rejected("malformed-answer")
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol(mqtt_broker)
    ) as device:
        stranger = uuid4()
        await device.publish(
            f"$emqx/commands/things/NOBODY/executions/{stranger}/response",
            b'{"status": "SUCCEEDED"}',
            qos=1,
        )
        await device.publish("iotee/dev/ABC123/rls/ack", b"exploded", qos=1)
        good = uuid4()
        await device.publish(
            f"$aws/commands/things/AWS-T1/executions/{good}/response/json",
            b'{"status": "SUCCEEDED", "result": {"t": 1}}',
            qos=1,
        )
        [report] = await eventually(lambda: reports_for(js, good), what="the good answer")
    assert (report.device_id, report.status, report.payload) == (
        "aws-thermo-1",
        "SUCCEEDED",
        {"t": 1},
    )
    assert rejected("unknown-device") - unknown == 1
    assert rejected("malformed-answer") - malformed == 1
    assert await reports_for(js, stranger) == []
