"""`BATON_CATALOG_PATH=deploy/catalog/seeds.yaml make run`: the simulator `make run` starts
runs the seed devices, each in its profile, so they answer (issue 6, defect 15).

Only the broker and the simulator of the stack `baton dev run` builds are started: a
request published as Baton would publish it gets the seed device's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aiomqtt
import pytest

from baton_cli.devstack import dev_stack
from baton_cli.localstack import Stack
from baton_contracts.profiles import DecodedAnswer, OutgoingCommand, codec_for
from baton_domain.catalog import Catalog

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "deploy/catalog/seeds.yaml"
CATALOG = Catalog.from_yaml(SEEDS)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    started = dev_stack(data_dir=tmp_path, api_key="k", catalog=SEEDS, metrics_port=0)
    try:
        started.start_infrastructure()
        started.start("simulator")  # returns once every simulated device is online
        yield started
    finally:
        started.stop_all()


@pytest.mark.parametrize(
    ("device_id", "name", "params"),
    [
        ("thermostat-001", "setTemperature", {"value": 22}),  # emqx-fleets
        ("a1b2c3d4", "unlock", {}),  # raw-mapped (iotee)
        ("fecbbba0-79f2-4e9e-a6f0-69a310ab110b", "change_lux", {"temp_kelvins": 3000}),  # baton
    ],
)
async def test_the_seed_devices_answer_under_make_run(
    stack: Stack, device_id: str, name: str, params: dict[str, object]
) -> None:
    device = CATALOG.device(device_id)
    device_type = CATALOG.device_types[device.type]
    codec = codec_for(device_type.wire_profile)
    wire_id = device.id if codec.topic_id == "device_id" else device.wire_id
    command = device_type.command(name)
    assert command is not None
    now = datetime.now(UTC)
    request = codec.encode_request(
        OutgoingCommand(
            wire_id=wire_id,
            execution_id=uuid4(),
            name=command[0],
            params=params,
            deadline=now + timedelta(seconds=30),
            ttl=30,
            now=now,
            command_wire=command[1].wire,
            type_wire=device_type.wire,
        )
    )
    v5 = stack.mqtt_protocol == "5"
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    bridge = stack.accounts.bridge  # the stack's broker admits its accounts only
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.mqtt_port or 0,
        protocol=protocol,
        username=bridge.username,
        password=bridge.password,
        identifier=bridge.client_id,
    ) as baton:
        for topic_filter in codec.answer_filters(device_type.wire):
            await baton.subscribe(topic_filter, qos=1)
        await baton.publish(request.topic, request.payload, qos=1)

        async def first_answer() -> DecodedAnswer:
            async for message in baton.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                found = codec.decode_answer(str(message.topic), payload, device_type.wire)
                if found is not None and found.wire_id == wire_id:
                    return found
            raise AssertionError("the subscription ended")

        answer = await asyncio.wait_for(first_answer(), timeout=10)
    # The device took the command: whatever its behaviour says, it answered this one.
    assert answer.status in ("STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
