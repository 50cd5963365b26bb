"""A device answer from before a deadline wins over it, wherever it was when the deadline
passed: in the MQTT broker (the bridge stopped or killed), in a frozen bridge, or in a bridge
slow to store it (issue 7). The dispatcher waits for every bridge's watermark to pass the
deadline (docs/architecture.md, "Deadlines and answers"); a bridge silent for
BATON_DEADLINE_MAX_HOLD no longer holds deadlines back.

Real nats-server and MQTT broker (Mosquitto, and nats-server's MQTT listener, which hands a
message a killed bridge held out again only after its ack_wait); the dispatcher and the
timeout-scheduler in-process; the device is driven by hand, so it answers exactly when the
test says: after its bridge is gone, before the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from baton_cli.localstack import NATS_MQTT_ACK_WAIT_S, Server, start_service
from baton_contracts.nats import (
    EVENTS_STREAM,
    WATERMARKS_STREAM,
    BridgeWatermark,
    DeviceReport,
    PresenceReport,
    StateReport,
    watermark_subject,
)
from baton_device_bridge.edges import DURABLE
from baton_device_bridge.reports import ReportNotStoredError, ReportSink
from baton_dispatcher.app import Dispatcher
from baton_dispatcher.writer import ReportResult, Writer
from baton_platform.metrics import DEADLINES_UNCONFIRMED
from baton_platform.settings import Settings
from baton_timeout_scheduler.app import TimeoutScheduler
from tests.conftest import eventually, service_settings
from tests.integration.test_device_bridge import Bridge, Device
from tests.integration.test_dispatcher import stream_events, submit, types_of

pytestmark = pytest.mark.integration

TTL = 3  # seconds: room for the request to reach the device and the bridge to go away


def stack_settings(
    nats_server: Server, mqtt_broker: Server, tmp_path: Path, **overrides: Any
) -> Settings:
    redelivery = 0 if mqtt_broker.name == "mosquitto" else NATS_MQTT_ACK_WAIT_S + 1
    values: dict[str, Any] = {
        "mqtt_port": mqtt_broker.port,
        "mqtt_protocol": mqtt_broker.extra["protocol"],
        "instance": f"wm-{uuid4().hex[:8]}",
        "mqtt_redelivery_wait": redelivery,
        **overrides,
    }
    return service_settings(nats_server, tmp_path, **values)


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return stack_settings(nats_server, mqtt_broker, tmp_path)


@contextlib.asynccontextmanager
async def dispatcher_and_scheduler(settings: Settings) -> AsyncIterator[TimeoutScheduler]:
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    scheduler = TimeoutScheduler(settings, retry_cap=0.5)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await dispatcher.stop()


@pytest.fixture
async def scheduler(settings: Settings) -> AsyncIterator[TimeoutScheduler]:
    async with dispatcher_and_scheduler(settings) as running:
        yield running


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[Bridge]:
    """The bridge in-process, not started yet (a test may change how it stores first)."""
    service = Bridge(settings)
    yield service
    await service.stop()


async def watermark(js: JetStreamContext, bridge: str) -> BridgeWatermark | None:
    try:
        msg = await js.get_last_msg(WATERMARKS_STREAM, watermark_subject(bridge))
    except NotFoundError:
        return None
    return BridgeWatermark.model_validate_json(msg.data or b"")


async def drained_past(js: JetStreamContext, bridge: str, when: datetime) -> BridgeWatermark:
    async def past() -> BridgeWatermark | None:
        mark = await watermark(js, bridge)
        return mark if mark is not None and mark.drained_to > when else None

    return await eventually(past, timeout=15, what=f"{bridge}'s watermark past {when}")


async def sent_to_device(nc: Client, device: Device) -> UUID:
    """A reboot with TTL seconds to live, once the device has it."""
    reply = await submit(nc, ttl=TTL)
    assert reply.execution is not None, reply
    execution_id = reply.execution.id

    async def arrived() -> bool:
        return bool(device.on("request", execution_id))

    await eventually(arrived, what="the request at the device")
    return execution_id


async def held_past_its_deadline(
    scheduler: TimeoutScheduler, js: JetStreamContext, execution_id: UUID, times: int = 3
) -> None:
    """The scheduler asked the dispatcher `times` times after the deadline, and each time
    the dispatcher kept it back (`reports-pending`): the execution is still open."""
    assert scheduler.deadlines is not None

    async def asked() -> bool:
        assert scheduler.deadlines is not None
        row = await scheduler.deadlines.get(execution_id)
        return row is not None and row.attempts >= times

    await eventually(asked, timeout=TTL + 10, what="the deadline asked for and held")
    row = await scheduler.deadlines.get(execution_id)
    assert row is not None and datetime.now(UTC) > row.due_at
    assert "TimedOut" not in await types_of(js, execution_id)


async def ended(js: JetStreamContext, execution_id: UUID) -> list[str]:
    async def terminal() -> list[str] | None:
        found = await types_of(js, execution_id)
        return found if {"Succeeded", "TimedOut", "Expired"} & set(found) else None

    return await eventually(terminal, timeout=20, what="the execution ended")


async def ended_by_the_answer(js: JetStreamContext, execution_id: UUID) -> None:
    types = await ended(js, execution_id)
    assert "Succeeded" in types and "TimedOut" not in types, types


async def test_an_answer_queued_in_the_broker_while_the_bridge_is_stopped_wins(
    scheduler: TimeoutScheduler, nc: Client, device: Device, bridge: Bridge
) -> None:
    await answered_while_the_bridge_is_stopped(scheduler, nc, device, bridge)


async def answered_while_the_bridge_is_stopped(
    scheduler: TimeoutScheduler, nc: Client, device: Device, bridge: Bridge
) -> None:
    js = nc.jetstream()
    await bridge.start()
    execution_id = await sent_to_device(nc, device)
    await bridge.stop()
    # The device answers in time; the broker keeps the answer in the bridge's session.
    await device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "in-time"})
    await held_past_its_deadline(scheduler, js, execution_id)

    await bridge.start()  # the same instance: the same MQTT session
    await ended_by_the_answer(js, execution_id)


# How long after it is stored the dispatcher applies a device answer, in the test below:
# several of the scheduler's asks (every 0.5 s at most) come meanwhile.
APPLY_LATE_S = 2.0


@pytest.fixture
async def scheduler_applying_answers_late(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TimeoutScheduler]:
    """A dispatcher that applies each device answer `APPLY_LATE_S` after it is stored, as a
    loaded one may; the scheduler meanwhile asks for the deadline again and again."""
    original = Writer.apply_report

    async def late(self: Writer, report: DeviceReport) -> ReportResult:
        if report.kind == "answer":
            await asyncio.sleep(APPLY_LATE_S)
        return await original(self, report)

    monkeypatch.setattr(Writer, "apply_report", late)
    async with dispatcher_and_scheduler(settings) as running:
        yield running


async def test_an_answer_the_broker_held_wins_also_when_applied_after_the_watermark_passed(
    scheduler_applying_answers_late: TimeoutScheduler, nc: Client, device: Device, bridge: Bridge
) -> None:
    """The answer waits in the broker past the deadline; the bridge comes back and stores it,
    and its watermark passes the deadline before the dispatcher applies the answer. Dated
    by its arrival, the answer no longer held the deadline back: TIMED_OUT (a chaos run,
    a bridge replica killed and its slot taken over). Dated back to the bridge's last
    watermark, the earliest the broker may have taken it, it holds it until applied."""
    await answered_while_the_bridge_is_stopped(scheduler_applying_answers_late, nc, device, bridge)


class _GatedSink(ReportSink):
    """A bridge that cannot store reports of one `kind` until `gate` opens: each one sets
    `reached`, then waits for the gate (slow) or raises (JetStream refusing it)."""

    kind: str
    refuse: bool
    reached: asyncio.Event
    gate: asyncio.Event

    async def store(self, report: DeviceReport | PresenceReport | StateReport) -> None:
        if isinstance(report, DeviceReport) and report.kind == self.kind:
            self.reached.set()
            if self.refuse and not self.gate.is_set():
                raise ReportNotStoredError("JetStream unavailable (test)")
            await self.gate.wait()
        await super().store(report)


def gated(
    monkeypatch: pytest.MonkeyPatch, kind: str, refuse: bool
) -> tuple[asyncio.Event, asyncio.Event]:
    """From now on, bridges started hold back every report of `kind` until the gate opens."""
    reached, gate = asyncio.Event(), asyncio.Event()
    for name, value in {"kind": kind, "refuse": refuse, "reached": reached, "gate": gate}.items():
        monkeypatch.setattr(_GatedSink, name, value, raising=False)
    monkeypatch.setattr("baton_device_bridge.app.ReportSink", _GatedSink)
    return reached, gate


def slow_to_store(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """From now on, bridges started hold every answer until the gate opens."""
    return gated(monkeypatch, "answer", refuse=False)


def published_not_stored(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """From now on, bridges started fail to store `published` until the gate opens."""
    return gated(monkeypatch, "published", refuse=True)


async def test_an_answer_a_slow_bridge_is_still_storing_wins(
    scheduler: TimeoutScheduler,
    nc: Client,
    device: Device,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = nc.jetstream()
    _, gate = slow_to_store(monkeypatch)
    await bridge.start()
    execution_id = await sent_to_device(nc, device)
    await device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "slow"})
    await held_past_its_deadline(scheduler, js, execution_id)

    gate.set()  # the bridge stores it at last
    await ended_by_the_answer(js, execution_id)


async def test_an_answer_the_bridge_held_unacknowledged_when_it_stopped_wins(
    scheduler: TimeoutScheduler,
    nc: Client,
    device: Device,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge has read the answer and stops before storing it, so never acknowledges it;
    the next bridge of the instance starts at once. Mosquitto resends the answer on the
    resumed session before anything else; nats-server only after its ack_wait (5 s here),
    past the deadline: until then the new bridge's watermark must not move (its
    BATON_MQTT_REDELIVERY_WAIT), or the deadline would beat the answer."""
    js = nc.jetstream()
    reached, _ = slow_to_store(monkeypatch)
    await bridge.start()
    execution_id = await sent_to_device(nc, device)
    await device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "held"})
    await asyncio.wait_for(reached.wait(), 10)  # in the bridge, not stored
    await bridge.stop()
    monkeypatch.undo()  # the next one stores as usual
    await bridge.start()
    await ended_by_the_answer(js, execution_id)


class BridgeProcess:
    """The device-bridge as its own process (`python -m baton_device_bridge`), to be frozen
    and killed by its pid, and started again as the same instance."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.env = {
            "BATON_NATS_URL": settings.nats_url,
            "BATON_NATS_CREDENTIALS": str(settings.nats_credentials),
            "BATON_MQTT_HOST": settings.mqtt_host,
            "BATON_MQTT_PORT": str(settings.mqtt_port),
            "BATON_MQTT_PROTOCOL": settings.mqtt_protocol,
            "BATON_MQTT_REDELIVERY_WAIT": str(settings.mqtt_redelivery_wait),
            "BATON_DATA_DIR": str(settings.data_dir),
            "BATON_CATALOG_PATH": str(settings.catalog_path),
            "BATON_INSTANCE": settings.instance,
            "BATON_METRICS_PORT": "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_service("device-bridge", self.env, self.log_dir)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL reaches a stopped process too
            self.proc.wait()
            self.proc = None


@pytest.fixture
def bridge_process(settings: Settings, tmp_path: Path) -> Iterator[BridgeProcess]:
    process = BridgeProcess(settings, tmp_path / "log")
    yield process
    process.kill()


async def test_an_answer_a_frozen_then_killed_bridge_held_wins(
    settings: Settings,
    scheduler: TimeoutScheduler,
    nc: Client,
    device: Device,
    bridge_process: BridgeProcess,
) -> None:
    """The bridge is frozen (SIGSTOP) when the device answers: the answer reaches it but is
    never stored; the deadline passes; the bridge is killed (SIGKILL) and a new process of
    the same instance starts: the broker hands the answer out again (nats-server only after
    its ack_wait, which the new bridge's watermark waits for)."""
    js = nc.jetstream()
    bridge_process.start()
    await drained_past(js, settings.instance, datetime.now(UTC))  # up and draining
    execution_id = await sent_to_device(nc, device)
    bridge_process.freeze()
    await device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "frozen"})
    await held_past_its_deadline(scheduler, js, execution_id)

    bridge_process.kill()
    bridge_process.start()
    await ended_by_the_answer(js, execution_id)


@pytest.mark.parametrize("mqtt_broker", ["mosquitto"], indirect=True)
async def test_a_request_a_killed_bridge_was_sending_goes_out_when_the_next_one_starts(
    mqtt_broker: Server,
    scheduler: TimeoutScheduler,
    nc: Client,
    bridge_process: BridgeProcess,
) -> None:
    """The bridge is killed in the middle of sending a request (the broker, frozen, never
    answers its PUBLISH): the next bridge gets the event back at once (its consumer is reset
    at start), not after the 30 s ack wait, by when many a request would be past its
    deadline, never sent: EXPIRED. (The events consumer is JetStream's whichever the MQTT
    broker: Mosquitto alone is enough.)"""
    js = nc.jetstream()

    async def consuming(pending: int) -> bool:
        try:
            info = await js.consumer_info(EVENTS_STREAM, DURABLE)
        except NotFoundError:
            return False
        return bool(info.push_bound) and info.num_ack_pending >= pending

    bridge_process.start()
    await eventually(lambda: consuming(0), timeout=15, what="the bridge consuming events")
    mqtt_broker.proc.send_signal(signal.SIGSTOP)
    try:
        reply = await submit(nc, ttl=20)
        assert reply.execution is not None, reply
        execution_id = reply.execution.id
        await eventually(lambda: consuming(1), what="the event sent to the bridge")
        # Time for the running bridge to read it and start its PUBLISH; if it has not, the
        # test proves less, but cannot pass wrongly.
        await asyncio.sleep(0.5)
        bridge_process.kill()
    finally:
        mqtt_broker.proc.send_signal(signal.SIGCONT)
    bridge_process.start()

    async def published() -> bool:
        return "Published" in await types_of(js, execution_id)

    await eventually(published, timeout=12, what="the request published by the next bridge")


async def test_a_bridge_silent_for_the_max_hold_no_longer_holds_deadlines_back(
    nats_server: Server,
    mqtt_broker: Server,
    tmp_path: Path,
    nc: Client,
    device: Device,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="baton_dispatcher.watermarks")
    # Longer than the TTL: the bridge's last watermark (right after the request went out)
    # plus max_hold falls well after the deadline.
    max_hold = TTL + 2.0
    settings = stack_settings(nats_server, mqtt_broker, tmp_path, deadline_max_hold=max_hold)
    js = nc.jetstream()
    async with dispatcher_and_scheduler(settings):
        bridge = Bridge(settings)
        await bridge.start()
        execution_id = await sent_to_device(nc, device)
        await drained_past(js, settings.instance, datetime.now(UTC))
        await bridge.stop()  # for good: the device never answers either
        last = await watermark(js, settings.instance)
        assert last is not None
        counted = DEADLINES_UNCONFIRMED.labels(bridge=settings.instance)._value.get()

        types = await ended(js, execution_id)
        assert "TimedOut" in types, types
        timed_out = [e for e in await stream_events(js) if e.type == "TimedOut"]
        # It waited for the bridge until its watermark was max_hold old, not a moment less.
        assert timed_out[0].occurred_at >= last.drained_to + timedelta(seconds=max_hold)
        assert timed_out[0].execution_id == execution_id
    assert DEADLINES_UNCONFIRMED.labels(bridge=settings.instance)._value.get() > counted
    assert f"device-bridge {settings.instance} has confirmed nothing since" in caplog.text


async def ended_without_an_answer_but_sent(js: JetStreamContext, execution_id: UUID) -> None:
    """The device got the request and never answered: TIMED_OUT, never EXPIRED."""
    types = await ended(js, execution_id)
    assert "Published" in types and "TimedOut" in types, types
    assert "Expired" not in types, types


async def test_a_request_taken_by_the_broker_but_not_yet_reported_is_not_expired(
    scheduler: TimeoutScheduler,
    nc: Client,
    device: Device,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker took the request (the device has it), but JetStream does not take the
    `published` report until after the deadline: the event goes back and forth meanwhile.
    When it comes back past its deadline it is not sent again, but reported published, and
    the bridge's watermark stayed where the request went out: the deadline waited for it,
    so the record says TIMED_OUT (sent, no answer), not EXPIRED (never delivered)."""
    js = nc.jetstream()
    tried, gate = published_not_stored(monkeypatch)
    await bridge.start()
    execution_id = await sent_to_device(nc, device)
    await asyncio.wait_for(tried.wait(), 10)
    await held_past_its_deadline(scheduler, js, execution_id)

    gate.set()
    await ended_without_an_answer_but_sent(js, execution_id)


async def test_a_request_an_earlier_bridge_process_may_have_sent_is_not_expired(
    scheduler: TimeoutScheduler,
    nc: Client,
    device: Device,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker took the request and the bridge goes away before it stored the `published`
    report; the next process of the instance starts after the deadline. It cannot know
    whether its predecessor sent the request, so it reports it published (it does not send
    it again), and writes no watermark before that: the deadline waited on the last one
    the predecessor wrote, and still waits while the report is not stored."""
    js = nc.jetstream()
    tried, gate = published_not_stored(monkeypatch)
    await bridge.start()
    execution_id = await sent_to_device(nc, device)
    await asyncio.wait_for(tried.wait(), 10)
    await bridge.stop()
    await held_past_its_deadline(scheduler, js, execution_id)
    requests = len(device.on("request", execution_id))

    tried.clear()
    await bridge.start()  # still unable to store it
    await asyncio.wait_for(tried.wait(), 10)
    before = await watermark(js, bridge.settings.instance)
    await held_past_its_deadline(scheduler, js, execution_id, times=6)
    assert await watermark(js, bridge.settings.instance) == before  # nothing new written

    gate.set()
    await ended_without_an_answer_but_sent(js, execution_id)
    assert len(device.on("request", execution_id)) == requests  # not sent past its deadline
