"""A device of a tenant other than `default` gets its commands, and its answers count.

The dispatcher and the device-bridge in-process against a real nats-server and a real MQTT
broker (both flavours); the device is driven by hand. The tenant and its device are made
while the bridge runs: a catalog change of any tenant reaches the bridge's wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client

from baton_cli.localstack import Server
from baton_contracts.nats import (
    CATALOG_CHANGE_SUBJECT,
    SUBMIT_SUBJECT,
    CatalogChange,
    CatalogReply,
    ExecutionReply,
    SubmitCommand,
)
from baton_platform.settings import Settings
from tests.conftest import eventually, service_settings
from tests.integration.test_device_bridge import Bridge, Device, bridge
from tests.integration.test_dispatcher import dispatcher, stream_events, types_of

__all__ = ["bridge", "dispatcher"]  # the fixtures, on this module's settings

pytestmark = pytest.mark.integration

TENANT = "acme"
DEVICE = "acme-1"
THERMOSTAT = {"commands": {"reboot": {"params": {"type": "object", "additionalProperties": False}}}}


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return service_settings(
        nats_server,
        tmp_path,
        mqtt_port=mqtt_broker.port,
        mqtt_protocol=mqtt_broker.extra["protocol"],
        instance=f"tenants-{uuid4().hex[:8]}",
    )


async def change_catalog(nc: Client, **change: Any) -> None:
    body = CatalogChange.model_validate({"tenant": TENANT, **change}).model_dump_json()
    reply = await nc.request(CATALOG_CHANGE_SUBJECT, body.encode(), timeout=5)
    assert CatalogReply.model_validate_json(reply.data).problem is None


async def submit(nc: Client) -> UUID:
    command = SubmitCommand(device_id=DEVICE, name="reboot", tenant=TENANT)
    reply = await nc.request(SUBMIT_SUBJECT, command.model_dump_json().encode(), timeout=5)
    answer = ExecutionReply.model_validate_json(reply.data)
    assert answer.execution is not None, answer.problem
    return answer.execution.id


@pytest.mark.usefixtures("dispatcher")  # first: the bridge loads the catalog it stores
async def test_a_device_of_another_tenant_gets_its_command_and_its_answer_counts(
    nc: Client, bridge: Bridge, mqtt_broker: Server
) -> None:
    await change_catalog(nc, op="create-device-type", name="acme-thermostat", definition=THERMOSTAT)
    await change_catalog(nc, op="create-device", device={"id": DEVICE, "type": "acme-thermostat"})

    async def wired() -> bool:
        return bridge.service is not None and bridge.service.wiring.target(DEVICE) is not None

    await eventually(wired, what=f"{DEVICE} in the bridge's wiring")
    js = nc.jetstream()
    async with Device(mqtt_broker, DEVICE) as device:
        execution_id = await submit(nc)

        async def arrived() -> bool:
            return bool(device.on("request", execution_id))

        await eventually(arrived, what=f"the request at {DEVICE}")
        await device.answer(execution_id, {"status": "SUCCEEDED"})

        async def succeeded() -> bool:
            return "Succeeded" in await types_of(js, execution_id)

        await eventually(succeeded, what="the answer recorded")
    [requested] = [
        e
        for e in await stream_events(js)
        if e.execution_id == execution_id and e.type == "Requested"
    ]
    assert requested.data["tenant"] == TENANT
