"""The device-bridge in-process against a real nats-server and a real MQTT broker.

Mosquitto (MQTT 5) when installed, else nats-server's MQTT 3.1.1 listener; set
BATON_MQTT_BROKER=nats to run the same tests against the latter. Devices are plain aiomqtt
clients; the dispatcher is absent, so the reports stay in the BATON_REPORTS work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from baton_cli.localstack import (
    Server,
    find_binary,
    free_port,
    start_mosquitto,
    start_nats,
    wait_for_port,
)
from baton_cli.processes import start_process
from baton_contracts.mqtt import (
    CancelRequest,
    CommandRequest,
    device_filters,
    execution_topic,
    response_topic,
)
from baton_contracts.nats import (
    EVENTS_STREAM,
    REPORT_ADAPTER,
    REPORTS_STREAM,
    DeviceReport,
    LifecycleEvent,
    event_subject,
)
from baton_device_bridge.app import DeviceBridge
from baton_device_bridge.edges import DURABLE, SERVICE, SUBJECTS
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats import ensure_streams
from baton_platform.settings import Settings
from tests.conftest import eventually, nats_access

pytestmark = pytest.mark.integration

DEVICE = "demo-thermostat-1"
_ids = itertools.count(1)


# --- harness ---------------------------------------------------------------------------------


class Device:
    """A device on its own MQTT connection, recording what arrives on its two filters."""

    def __init__(self, broker: Server, device_id: str = DEVICE) -> None:
        self.device_id = device_id
        self.protocol = (
            aiomqtt.ProtocolVersion.V5
            if broker.extra["protocol"] == "5"
            else aiomqtt.ProtocolVersion.V311
        )
        self.client = aiomqtt.Client("127.0.0.1", broker.port, protocol=self.protocol)
        self.received: list[aiomqtt.Message] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Device:
        await self.client.__aenter__()
        for topic in device_filters(self.device_id):
            await self.client.subscribe(topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            self.received.append(message)

    def on(self, leaf: str, execution_id: UUID) -> list[aiomqtt.Message]:
        topic = execution_topic(self.device_id, execution_id, leaf)
        return [m for m in self.received if str(m.topic) == topic]

    async def answer(
        self, execution_id: UUID, body: dict[str, Any] | bytes, topic: str | None = None
    ) -> None:
        payload = body if isinstance(body, bytes) else _json(body)
        await self.client.publish(
            topic or response_topic(self.device_id, execution_id), payload, qos=1
        )


def _json(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body).encode()


class Bridge:
    """The service from its composition root; stop() and start() again as the same instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: DeviceBridge | None = None

    async def start(self) -> DeviceBridge:
        self.service = DeviceBridge(self.settings, reconnect_cap=0.5, retry_cap=0.5)
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None


def make_settings(nats: Server, port: int, protocol: str, tmp_path: Path) -> Settings:
    return Settings(
        **nats_access(nats),
        mqtt_host="127.0.0.1",
        mqtt_port=port,
        mqtt_protocol=protocol,
        data_dir=tmp_path / "data",
        instance=f"test-{uuid4().hex[:8]}",
    )


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return make_settings(nats_server, mqtt_broker.port, mqtt_broker.extra["protocol"], tmp_path)


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[Bridge]:
    service = Bridge(settings)
    await service.start()
    yield service
    await service.stop()


async def publish_event(
    js: JetStreamContext, execution_id: UUID, type_: str, data: dict[str, Any]
) -> None:
    n = next(_ids)
    event = LifecycleEvent(
        notification_id=n,
        execution_id=execution_id,
        version=2,
        type=type_,
        occurred_at=datetime.now(UTC),
        data=data,
    )
    await js.publish(
        event_subject(execution_id, type_),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": f"test-{n}"},
    )


async def dispatch(
    js: JetStreamContext, execution_id: UUID, ttl: float = 30, device_id: str = DEVICE
) -> datetime:
    deadline = datetime.now(UTC) + timedelta(seconds=ttl)
    await publish_event(
        js,
        execution_id,
        "Dispatched",
        {
            "device_id": device_id,
            "device_type": "thermostat",
            "name": "set_temperature",
            "params": {"value": 22},
            "deadline": deadline.isoformat(),
        },
    )
    return deadline


async def stream_reports(js: JetStreamContext) -> list[DeviceReport]:
    info = await js.stream_info(REPORTS_STREAM)
    reports: list[DeviceReport] = []
    if info.state.messages == 0:
        return reports
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(REPORTS_STREAM, seq=seq)
        assert msg.data is not None
        # Presence and state reports (simulated devices say they are online) are not ours.
        report = REPORT_ADAPTER.validate_json(msg.data)
        if isinstance(report, DeviceReport):
            reports.append(report)
    return reports


async def reports_for(js: JetStreamContext, execution_id: UUID) -> list[DeviceReport]:
    return [r for r in await stream_reports(js) if r.execution_id == execution_id]


def rejected(reason: str) -> float:
    value: float = REJECTED_MESSAGES.labels(service=SERVICE, reason=reason)._value.get()
    return value


# --- commands out ----------------------------------------------------------------------------


async def test_a_dispatched_command_reaches_the_device_and_is_reported_published(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    deadline = await dispatch(js, execution_id, ttl=30)

    async def arrived() -> list[aiomqtt.Message]:
        return device.on("request", execution_id)

    [message] = await eventually(arrived, what="request on the device's topic")
    assert message.qos == 1
    request = CommandRequest.model_validate_json(message.payload)
    assert request == CommandRequest(
        execution_id=execution_id, name="set_temperature", params={"value": 22}, deadline=deadline
    )
    if device.protocol == aiomqtt.ProtocolVersion.V5:
        assert message.properties is not None
        # paho's Properties keeps each property as an undeclared instance attribute
        assert 1 <= vars(message.properties)["MessageExpiryInterval"] <= 30

    [report] = await eventually(lambda: reports_for(js, execution_id), what="published report")
    assert report.kind == "published"
    assert report.report_id == f"published:{execution_id}"
    assert report.device_id == DEVICE
    assert report.status is None


async def test_only_the_events_the_bridge_acts_on_reach_it(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    for skipped in ("Requested", "Admitted", "Published", "Succeeded", "Released"):
        await publish_event(js, execution_id, skipped, {})
    await dispatch(js, execution_id)
    await eventually(lambda: reports_for(js, execution_id), what="published report")
    info = await js.consumer_info(EVENTS_STREAM, DURABLE)
    assert info.config.filter_subjects == list(SUBJECTS)
    assert info.delivered.consumer_seq == 1  # the Dispatched, and nothing else


async def test_a_dispatched_past_its_deadline_is_not_published(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    late, on_time = uuid4(), uuid4()
    await dispatch(js, late, ttl=-1)
    await dispatch(js, on_time)

    # Events are handled in order: once the second is out, the first was decided.
    await eventually(lambda: reports_for(js, on_time), what="the on-time command reported")
    assert device.on("request", on_time)
    assert device.on("request", late) == []
    assert await reports_for(js, late) == []


async def test_a_cancel_with_notify_device_reaches_the_cancel_topic(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    quiet, told = uuid4(), uuid4()
    await publish_event(
        js, quiet, "Canceled", {"reason": "never sent", "device_id": DEVICE, "notify_device": False}
    )
    await publish_event(
        js, told, "Canceled", {"reason": "operator", "device_id": DEVICE, "notify_device": True}
    )

    async def arrived() -> list[aiomqtt.Message]:
        return device.on("cancel", told)

    [message] = await eventually(arrived, what="cancel on the device's topic")
    assert CancelRequest.model_validate_json(message.payload) == CancelRequest(
        execution_id=told, reason="operator"
    )
    assert device.on("cancel", quiet) == []
    assert await stream_reports(js) == []  # a cancellation is not reported back


async def test_malformed_events_are_counted_and_acknowledged(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    before = rejected("malformed-event")
    await js.publish(event_subject(uuid4(), "Dispatched"), b"{not json")
    await publish_event(js, uuid4(), "Dispatched", {"device_id": DEVICE, "name": "x"})
    await publish_event(js, uuid4(), "Dispatched", {"device_id": "a/+/b", "name": "x"})
    execution_id = uuid4()
    await dispatch(js, execution_id)
    await eventually(lambda: reports_for(js, execution_id), what="the good one reported")
    assert rejected("malformed-event") - before == 3

    async def all_acked() -> bool:
        info = await js.consumer_info(EVENTS_STREAM, DURABLE)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(all_acked, what="every event acknowledged")


@pytest.mark.parametrize("flavour", ["mosquitto", "nats"])
async def test_events_wait_in_jetstream_while_the_mqtt_broker_is_down(
    nats_server: Server, nc: Client, tmp_path: Path, flavour: str
) -> None:
    if flavour == "mosquitto" and find_binary("mosquitto") is None:
        pytest.skip("Mosquitto is not installed")
    js = nc.jetstream()
    port = free_port()
    protocol = "5" if flavour == "mosquitto" else "3.1.1"
    settings = make_settings(nats_server, port, protocol, tmp_path)
    bridge_service = DeviceBridge(settings, reconnect_cap=0.5, startup_wait=0.1)
    await bridge_service.start()
    broker: Server | None = None
    try:
        execution_id = uuid4()
        await dispatch(js, execution_id)

        async def nacked() -> bool:
            info = await js.consumer_info(EVENTS_STREAM, DURABLE)
            return bool(info.num_redelivered >= 1)

        await eventually(nacked, what="the event redelivered while MQTT is down")
        assert await stream_reports(js) == []

        if flavour == "mosquitto":
            broker = start_mosquitto(tmp_path / "late-mosquitto", port)
        else:
            broker = start_nats(tmp_path / "late-nats-mqtt", mqtt_port=port)
            broker.extra["protocol"] = "3.1.1"
            broker.port = port
        async with Device(broker) as device:

            async def arrived() -> list[aiomqtt.Message]:
                return device.on("request", execution_id)

            await eventually(arrived, timeout=15, what="request once the broker is up")
            await eventually(lambda: reports_for(js, execution_id), what="published report")
    finally:
        await bridge_service.stop()
        if broker is not None:
            broker.stop()


# --- answers in ------------------------------------------------------------------------------


async def test_an_answer_becomes_a_report_with_the_device_id_of_its_topic(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    answer = {
        "status": "SUCCEEDED",
        "payload": {"current_temperature": 22},
        "answer_id": "a-1",
        "device_id": "someone-else",  # ignored: the topic says who speaks
    }
    await device.answer(execution_id, answer)
    await device.answer(execution_id, answer)  # QoS 1 may deliver it twice
    await device.answer(execution_id, {"status": "IN_PROGRESS", "payload": {"percent": 50}})

    async def two() -> list[DeviceReport] | None:
        reports = await reports_for(js, execution_id)
        return reports if len(reports) >= 2 else None

    reports = await eventually(two, what="two reports")
    # Answers are forwarded in order: once the third is stored, the repeat was handled.
    assert len(reports) == 2
    first, second = reports
    assert first.kind == "answer"
    assert first.report_id == f"answer:{execution_id}:a-1"
    assert first.device_id == DEVICE
    assert first.status == "SUCCEEDED"
    assert first.payload == {"current_temperature": 22}
    assert second.status == "IN_PROGRESS"
    assert second.report_id.startswith(f"answer:{execution_id}:")
    assert len(second.report_id.rsplit(":", 1)[1]) == 32  # digest of the bytes


async def test_malformed_answers_are_dropped_and_counted(
    bridge: Bridge, nc: Client, device: Device
) -> None:
    js = nc.jetstream()
    bad_answer, bad_topic = rejected("malformed-answer"), rejected("malformed-topic")
    execution_id = uuid4()
    await device.answer(execution_id, b"{not json")
    await device.answer(execution_id, {"status": "EXPLODED"})
    await device.answer(execution_id, {"status": "SUCCEEDED", "payload": "not an object"})
    await device.answer(
        execution_id, {"status": "SUCCEEDED"}, topic=response_topic(DEVICE, "not-a-uuid")
    )
    await device.answer(
        execution_id, {"status": "SUCCEEDED"}, topic=response_topic("-not-a-device", execution_id)
    )
    await device.answer(execution_id, {"status": "STARTED"})

    # The bridge keeps going: the good answer after the bad ones is stored.
    [report] = await eventually(lambda: reports_for(js, execution_id), what="the good answer")
    assert report.status == "STARTED"
    assert rejected("malformed-answer") - bad_answer == 3
    assert rejected("malformed-topic") - bad_topic == 2
    assert len(await stream_reports(js)) == 1


async def test_a_device_past_its_message_rate_is_dropped_before_jetstream(
    settings: Settings, nc: Client, mqtt_broker: Server
) -> None:
    rate, burst, sent = 20.0, 50, 1000
    limited = Bridge(
        settings.model_copy(update={"device_message_rate": rate, "device_message_burst": burst})
    )
    await limited.start()
    try:
        js = nc.jetstream()
        before = rejected("rate-limited")
        flood, quiet = uuid4(), uuid4()
        async with (
            Device(mqtt_broker) as flooder,
            Device(mqtt_broker, "demo-thermostat-2") as other,
        ):
            started = time.monotonic()
            for n in range(sent):
                answer = {"status": "IN_PROGRESS", "payload": {"n": n}, "answer_id": str(n)}
                await flooder.answer(flood, answer)
            await other.answer(quiet, {"status": "SUCCEEDED", "answer_id": "1"})
            # Another device's answer is stored whatever the flood.
            await eventually(lambda: reports_for(js, quiet), what="the other device's answer")

            async def all_handled() -> int | None:
                stored = len(await reports_for(js, flood))
                return stored if stored + rejected("rate-limited") - before == sent else None

            stored = await eventually(all_handled, what="every flooded answer stored or dropped")
            elapsed = time.monotonic() - started
        assert burst <= stored <= burst + rate * elapsed + 1
    finally:
        await limited.stop()


# --- the persistent session -----------------------------------------------------------------


def start_nats_mqtt(workdir: Path, ack_wait: str) -> Server:
    """nats-server's MQTT listener with a short `ack_wait`.

    nats-server hands an unacknowledged QoS 1 message out again only after `ack_wait` (30 s
    by default), even to a resumed session; so does a message it delivered to a connection
    that was closing. Mosquitto resends at once on resume.
    """
    binary = find_binary("nats-server")
    assert binary is not None
    port, mqtt_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{workdir / "jetstream"}" }}\n'
        f'mqtt {{ listen: "127.0.0.1:{mqtt_port}", ack_wait: "{ack_wait}" }}\n'
    )
    log = (workdir / "nats.log").open("ab")
    proc = start_process([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", mqtt_port, proc)
    return Server(
        "nats-mqtt", proc, f"mqtt://127.0.0.1:{mqtt_port}", mqtt_port, {"protocol": "3.1.1"}
    )


@pytest.fixture(params=["mosquitto", "nats"])
def session_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """Both brokers, nats-server with a 1 s `ack_wait` so its redeliveries fit in a test."""
    if request.param == "mosquitto":
        if find_binary("mosquitto") is None:
            pytest.skip("Mosquitto is not installed")
        server = start_mosquitto(tmp_path / "session-mosquitto")
    else:
        server = start_nats_mqtt(tmp_path / "session-nats-mqtt", ack_wait="1s")
    yield server
    server.stop()


@pytest.fixture
async def session_bridge(
    nats_server: Server, session_broker: Server, tmp_path: Path
) -> AsyncIterator[Bridge]:
    settings = make_settings(
        nats_server, session_broker.port, session_broker.extra["protocol"], tmp_path
    )
    service = Bridge(settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def session_device(session_broker: Server) -> AsyncIterator[Device]:
    async with Device(session_broker) as d:
        yield d


async def test_answers_sent_while_the_bridge_is_down_arrive_when_it_is_back(
    session_bridge: Bridge, nc: Client, session_device: Device
) -> None:
    js = nc.jetstream()
    await session_bridge.stop()
    execution_id = uuid4()
    await session_device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "while-away"})
    assert await stream_reports(js) == []
    await session_bridge.start()  # the same instance, so the same MQTT session
    [report] = await eventually(lambda: reports_for(js, execution_id), what="queued answer")
    assert report.report_id == f"answer:{execution_id}:while-away"


async def test_an_answer_is_acknowledged_only_once_its_report_is_stored(
    session_bridge: Bridge, nc: Client, session_device: Device
) -> None:
    js = nc.jetstream()
    service = session_bridge.service
    assert service is not None and service.answers is not None
    await js.delete_stream(REPORTS_STREAM)  # JetStream cannot store reports for now
    execution_id = uuid4()
    await session_device.answer(execution_id, {"status": "SUCCEEDED", "answer_id": "kept"})

    async def retrying() -> bool:
        assert service.answers is not None
        return service.answers.failed_attempts >= 1

    await eventually(retrying, what="the bridge retrying the report")
    # The bridge goes away with the answer read but not stored: the broker must still have it
    # (never acknowledged) and gives it to the next bridge of this instance.
    await session_bridge.stop()
    await ensure_streams(js)  # the stream back, as the dispatcher makes it at its start
    await session_bridge.start()
    [report] = await eventually(lambda: reports_for(js, execution_id), what="redelivered answer")
    assert report.report_id == f"answer:{execution_id}:kept"
