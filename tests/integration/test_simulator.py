"""The device simulator against a real MQTT broker, with the test acting as Baton.

Where a test shows that something does *not* arrive, it waits for a later answer that the
missing one would have come before (same device, same connection, so in order), rather than
sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiomqtt
import pytest

from baton_cli.localstack import Server, free_port
from baton_contracts.mqtt import (
    RESPONSE_FILTER,
    CancelRequest,
    CommandRequest,
    DeviceAnswer,
    cancel_topic,
    parse_execution_topic,
    request_topic,
)
from baton_simulator import THERMOSTAT, Behaviour, Journal, SimulatedDevice, run_simulator
from baton_simulator.behaviours import go_offline, started, succeed
from baton_simulator.device import Broker
from tests.conftest import eventually

pytestmark = pytest.mark.integration

DEVICES = ["sim-thermo-1", "sim-thermo-2"]
SILENT = ["sim-silent-1"]
FINAL = {"SUCCEEDED", "FAILED", "REJECTED"}


class FakeBaton:
    """Publishes requests like the device-bridge and records every answer by execution."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.answers: dict[str, list[DeviceAnswer]] = defaultdict(list)
        self.answering_devices: set[str] = set()

    async def listen(self) -> None:
        async for message in self.client.messages:
            parsed = parse_execution_topic(message.topic.value)
            assert parsed is not None, message.topic.value
            device_id, execution_id, _ = parsed
            assert isinstance(message.payload, bytes)
            self.answering_devices.add(device_id)
            self.answers[execution_id].append(DeviceAnswer.model_validate_json(message.payload))

    async def send(
        self, device_id: str, name: str, params: dict[str, Any] | None = None, **kw: Any
    ) -> str:
        request = CommandRequest(
            execution_id=kw.get("execution_id", uuid4()),
            name=name,
            params=params or {},
            deadline=kw.get("deadline", datetime.now(UTC) + timedelta(seconds=30)),
        )
        topic = request_topic(device_id, request.execution_id)
        await self.client.publish(topic, request.model_dump_json(), qos=1)
        return str(request.execution_id)

    async def cancel(self, device_id: str, execution_id: str) -> None:
        body = CancelRequest(execution_id=UUID(execution_id), reason="canceled by the test")
        await self.client.publish(
            cancel_topic(device_id, execution_id), body.model_dump_json(), qos=1
        )

    def statuses(self, execution_id: str) -> list[str]:
        return [a.status for a in self.answers[execution_id]]

    async def wait_for(self, execution_id: str, status: str, timeout: float = 10.0) -> list[str]:
        async def reached() -> list[str] | None:
            statuses = self.statuses(execution_id)
            return statuses if status in statuses else None

        return await eventually(reached, timeout=timeout, what=f"{status} for {execution_id}")

    async def final(self, execution_id: str, timeout: float = 10.0) -> list[DeviceAnswer]:
        async def ended() -> list[DeviceAnswer] | None:
            answers = self.answers[execution_id]
            return answers if answers and answers[-1].status in FINAL else None

        return await eventually(ended, timeout=timeout, what=f"final answer for {execution_id}")


def protocol_of(broker: Server) -> str:
    return str(broker.extra.get("protocol", "5"))


@contextlib.asynccontextmanager
async def simulator(
    broker: Server, caplog: pytest.LogCaptureFixture, journal: Journal | None = None
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    """run_simulator in a task; ready once every device has subscribed (it logs "online")."""
    caplog.set_level(logging.INFO, logger="baton_simulator")
    caplog.clear()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_simulator(
            "127.0.0.1",
            broker.port,
            protocol_of(broker),
            DEVICES,
            SILENT,
            stop,
            journal=journal,
        )
    )

    async def online() -> bool:
        assert not task.done(), task
        return all(f"{d} online" in caplog.text for d in DEVICES + SILENT)

    try:
        await eventually(online, what="simulated devices online")
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


@pytest.fixture
async def baton(mqtt_broker: Server) -> AsyncIterator[FakeBaton]:
    protocol = (
        aiomqtt.ProtocolVersion.V5
        if protocol_of(mqtt_broker) == "5"
        else aiomqtt.ProtocolVersion.V311
    )
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol, identifier=f"fake-baton-{uuid4()}"
    ) as client:
        await client.subscribe(RESPONSE_FILTER, qos=1)
        fake = FakeBaton(client)
        listening = asyncio.create_task(fake.listen())
        try:
            yield fake
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening


@pytest.fixture
async def devices(mqtt_broker: Server, caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    async with simulator(mqtt_broker, caplog):
        yield


@pytest.mark.usefixtures("devices")
async def test_set_temperature_starts_then_succeeds(baton: FakeBaton) -> None:
    execution_id = await baton.send(DEVICES[0], "set_temperature", {"value": 24})
    answers = await baton.final(execution_id)
    assert [a.status for a in answers] == ["STARTED", "SUCCEEDED"]
    assert answers[-1].payload == {"current_temperature": 24}
    ids = [a.answer_id for a in answers]
    assert None not in ids
    assert len(set(ids)) == len(ids)


@pytest.mark.usefixtures("devices")
async def test_reboot_reports_progress_then_succeeds(baton: FakeBaton) -> None:
    execution_id = await baton.send(DEVICES[0], "reboot")
    answers = await baton.final(execution_id)
    assert [a.status for a in answers] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    assert answers[1].payload == {"progress": 50}


@pytest.mark.usefixtures("devices")
async def test_failures_and_rejections_carry_a_message(baton: FakeBaton) -> None:
    self_test = await baton.send(DEVICES[0], "self_test")
    factory_reset = await baton.send(DEVICES[1], "factory_reset")
    unknown = await baton.send(DEVICES[1], "make_coffee")

    answers = await baton.final(self_test)
    assert [a.status for a in answers] == ["STARTED", "FAILED"]
    assert answers[-1].payload["message"]

    [answer] = await baton.final(factory_reset)
    assert answer.status == "REJECTED"
    assert answer.payload["message"]

    [answer] = await baton.final(unknown)
    assert answer.status == "REJECTED"
    assert "unknown command" in answer.payload["message"]


@pytest.mark.usefixtures("devices")
async def test_a_slow_reboot_does_not_hold_up_other_commands(baton: FakeBaton) -> None:
    reboot = await baton.send(DEVICES[0], "reboot")
    await baton.wait_for(reboot, "STARTED")
    quick = await baton.send(DEVICES[0], "set_temperature", {"value": 21})
    await baton.final(quick)
    assert baton.statuses(reboot) == ["STARTED"]  # the reboot is still running
    await baton.final(reboot)


@pytest.mark.usefixtures("devices")
async def test_a_silent_device_receives_but_never_answers(baton: FakeBaton) -> None:
    silent = await baton.send(SILENT[0], "set_temperature", {"value": 24})
    normal = await baton.send(DEVICES[0], "set_temperature", {"value": 24})
    await baton.final(normal)
    assert baton.answers[silent] == []
    assert SILENT[0] not in baton.answering_devices


@pytest.mark.usefixtures("devices")
async def test_a_repeated_request_is_answered_once(baton: FakeBaton) -> None:
    first = await baton.send(DEVICES[0], "set_temperature", {"value": 22})
    await baton.send(DEVICES[0], "set_temperature", {"value": 22}, execution_id=first)
    await baton.final(first)
    # The repeat reached the device before this one did; had it run, its answers came first.
    later = await baton.send(DEVICES[0], "set_temperature", {"value": 23})
    await baton.final(later)
    assert baton.statuses(first) == ["STARTED", "SUCCEEDED"]


@pytest.mark.usefixtures("devices")
async def test_cancel_stops_a_reboot(baton: FakeBaton) -> None:
    canceled = await baton.send(DEVICES[0], "reboot")
    await baton.wait_for(canceled, "STARTED")
    await baton.cancel(DEVICES[0], canceled)
    # A reboot started after the cancel ends after the canceled one would have ended.
    later = await baton.send(DEVICES[0], "reboot")
    await baton.final(later)
    assert baton.statuses(canceled) == ["STARTED"]


async def test_requests_sent_while_the_simulator_is_down_are_answered_after(
    mqtt_broker: Server, caplog: pytest.LogCaptureFixture, baton: FakeBaton
) -> None:
    async with simulator(mqtt_broker, caplog):
        pass  # the devices subscribed once: the broker keeps their sessions
    missed = await baton.send(DEVICES[0], "set_temperature", {"value": 30})
    async with simulator(mqtt_broker, caplog):
        answers = await baton.final(missed)
    assert [a.status for a in answers] == ["STARTED", "SUCCEEDED"]


async def test_stop_ends_the_simulator_promptly_even_mid_reboot(
    mqtt_broker: Server, caplog: pytest.LogCaptureFixture, baton: FakeBaton
) -> None:
    async with simulator(mqtt_broker, caplog) as (stop, task):
        reboot = await baton.send(DEVICES[0], "reboot")
        await baton.wait_for(reboot, "STARTED")
        stop.set()
        await asyncio.wait_for(task, timeout=1.0)
        assert task.exception() is None
    assert "simulator stopped" in caplog.text


async def test_a_simulator_that_cannot_reach_its_broker_warns_once_and_still_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="baton_simulator")
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulator("127.0.0.1", free_port(), "5", DEVICES[:1], [], stop))

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.WARNING]

    async def warned() -> bool:
        return bool(warnings())

    await eventually(warned, what="a warning about the broker")
    stop.set()
    await asyncio.wait_for(task, timeout=3)
    assert len(warnings()) == 1
    assert "lost the broker" in warnings()[0].getMessage()


async def test_a_scripted_outage_keeps_what_arrives_meanwhile(
    mqtt_broker: Server, caplog: pytest.LogCaptureFixture, baton: FakeBaton
) -> None:
    caplog.set_level(logging.INFO, logger="baton_simulator")
    napper = Behaviour(
        commands={"nap": (started(), go_offline(1.0), succeed())},
        otherwise=THERMOSTAT.otherwise,
    )
    broker = Broker("127.0.0.1", mqtt_broker.port, protocol_of(mqtt_broker))
    device = SimulatedDevice("sim-napper-1", napper, broker)
    running = asyncio.create_task(device.run())
    try:

        async def said(text: str) -> bool:
            return text in caplog.text

        await eventually(lambda: said("sim-napper-1 online"), what="online")
        nap = await baton.send("sim-napper-1", "nap")
        await eventually(lambda: said("sim-napper-1 offline"), what="offline")
        assert baton.statuses(nap) == ["STARTED"]  # the rest waits for the device's return
        meanwhile = await baton.send("sim-napper-1", "make_coffee")
        assert [a.status for a in await baton.final(nap)] == ["STARTED", "SUCCEEDED"]
        assert [a.status for a in await baton.final(meanwhile)] == ["REJECTED"]
        assert "sim-napper-1 online again" not in caplog.text  # a planned outage, not a loss
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_journal_says_what_each_device_received_and_answered(
    mqtt_broker: Server, caplog: pytest.LogCaptureFixture, baton: FakeBaton, tmp_path: Path
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    async with simulator(mqtt_broker, caplog, journal):
        done = await baton.send(DEVICES[0], "self_test")
        await baton.final(done)
        await baton.send(DEVICES[0], "self_test", execution_id=UUID(done))  # ignored: seen
        past = datetime.now(UTC) - timedelta(seconds=1)
        late = await baton.send(DEVICES[1], "reboot", deadline=past)
        silent = await baton.send(SILENT[0], "reboot")

        async def written() -> list[dict[str, Any]] | None:
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            return lines if len(lines) == 6 else None

        lines = await eventually(written, what="six journal lines")
    journal.close()
    by = {(e["execution_id"], e["event"], e.get("status") or e["outcome"]): e for e in lines}
    assert set(by) == {
        (done, "received", "run"),
        (done, "answered", "STARTED"),
        (done, "answered", "FAILED"),
        (done, "received", "repeat"),
        (late, "received", "late"),
        (silent, "received", "run"),
    }
    first = by[(done, "received", "run")]
    assert (first["device_id"], first["name"]) == (DEVICES[0], "self_test")
    failed = by[(done, "answered", "FAILED")]
    assert failed["answer_id"] == f"{done}-2"
    # Times are UTC, in the order things happened.
    moments = [datetime.fromisoformat(e["at"]) for e in lines]
    assert all(m.tzinfo is not None for m in moments)
    assert (
        first["at"] < by[(done, "answered", "STARTED")]["at"] <= failed["tried_at"] < failed["at"]
    )
    assert by[(late, "received", "late")]["deadline"] == past.isoformat(timespec="microseconds")
