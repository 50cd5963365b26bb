"""A fleet of 1,000 simulated devices in one process, against a real broker: every device
reports itself online, and a sample answers commands in Baton's wire profile after the answer
time the test sets.

Start-up time, RSS and CPU per answer are printed (`-s`), never asserted: they depend on the
machine. 10,000 devices are measured by hand (docs/operations.md), not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aiomqtt
import pytest

from baton_cli.localstack import Server, find_binary, start_mosquitto
from baton_contracts.mqtt import (
    RESPONSE_FILTER,
    TOPIC_ROOT,
    CommandRequest,
    DeviceAnswer,
    parse_execution_topic,
    request_topic,
)
from baton_simulator import Timing, fleet_ids, run_simulator
from baton_simulator.device import PROTOCOLS
from tests.conftest import eventually
from tests.integration.test_simulator import protocol_of

pytestmark = pytest.mark.integration

FLEET = 1000
SAMPLE = 50
ANSWER_DELAY = 0.3  # long enough to tell from "at once" on a busy machine


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - Linux has it


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Server]:
    """Mosquitto only: nats-server's MQTT listener (2.15.1) keeps each QoS 1 subscription of a
    persistent session as a JetStream consumer, two per device here, and past about 1,000 of
    them refuses more ("maximum consumers limit reached", 10026): ~500 devices is its fleet."""
    if find_binary("mosquitto") is None:
        pytest.skip("Mosquitto is not installed (deploy/local/install-broker.sh)")
    server = start_mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


@pytest.fixture
async def observer(broker: Server) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        protocol=PROTOCOLS[protocol_of(broker)],
        identifier=f"fleet-observer-{uuid4()}",
    ) as client:
        await client.subscribe([(f"{TOPIC_ROOT}/+/status", 1), (RESPONSE_FILTER, 1)])
        yield client


async def test_a_thousand_devices_come_online_and_answer_after_the_set_delay(
    broker: Server, observer: aiomqtt.Client
) -> None:
    devices = fleet_ids(FLEET)
    online: dict[str, bool] = {}
    answered: dict[str, tuple[float, DeviceAnswer]] = {}  # execution -> first answer

    async def listen() -> None:
        async for message in observer.messages:
            topic = message.topic.value
            assert isinstance(message.payload, bytes)
            if topic.endswith("/status"):
                device = topic.removeprefix(f"{TOPIC_ROOT}/").removesuffix("/status")
                online[device] = json.loads(message.payload)["online"]
                continue
            parsed = parse_execution_topic(topic)
            assert parsed is not None, topic
            answer = DeviceAnswer.model_validate_json(message.payload)
            answered.setdefault(parsed[1], (time.monotonic(), answer))

    listening = asyncio.create_task(listen())
    stop = asyncio.Event()
    started, cpu_before = time.monotonic(), cpu_seconds()
    simulating = asyncio.create_task(
        run_simulator(
            "127.0.0.1",
            broker.port,
            protocol_of(broker),
            devices,
            [],
            stop,
            timing=Timing(answer_delay=ANSWER_DELAY),
        )
    )
    try:

        async def all_online() -> bool:
            assert not simulating.done(), simulating
            return len(online) == FLEET and all(online.values())

        await eventually(all_online, timeout=60, what=f"{FLEET} devices online")
        up, startup_cpu = time.monotonic() - started, cpu_seconds() - cpu_before
        assert set(online) == set(devices)

        sent: dict[str, float] = {}
        sample = devices[:: FLEET // SAMPLE]
        cpu_before = cpu_seconds()
        for device in sample:
            request = CommandRequest(
                execution_id=uuid4(),
                name="set_temperature",
                params={"value": 21},
                deadline=datetime.now(UTC) + timedelta(seconds=60),
            )
            sent[str(request.execution_id)] = time.monotonic()
            await observer.publish(
                request_topic(device, request.execution_id), request.model_dump_json(), qos=1
            )

        async def all_answered() -> bool:
            return set(sent) <= set(answered)

        await eventually(all_answered, timeout=30, what=f"answers from {len(sample)} devices")
        answer_cpu = cpu_seconds() - cpu_before
        waits = sorted(answered[e][0] - at for e, at in sent.items())
        for execution_id in sent:
            assert answered[execution_id][1].status == "STARTED"
        # The device waited the answer time it was given before its first answer.
        assert waits[0] >= ANSWER_DELAY
        print(
            f"\n{FLEET} devices online in {up:.2f} s ({startup_cpu:.2f} s CPU), "
            f"RSS {rss_mib():.0f} MiB (test process); {len(sample)} answers: first after "
            f"{waits[0] * 1000:.0f}-{waits[-1] * 1000:.0f} ms (delay {ANSWER_DELAY * 1000:.0f} "
            f"ms), {answer_cpu / len(sample) * 1000:.2f} ms CPU per answer (device and test)"
        )
    finally:
        stop.set()
        await asyncio.wait_for(simulating, timeout=30)
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
