"""Device-bridge replicas sharing the devices (docs/operations.md, "Bridge replicas").

Real nats-server and Mosquitto; the dispatcher and the timeout-scheduler in-process; the
simulated fleet in-process; each replica its own process (`python -m baton_device_bridge`)
with its own BATON_INSTANCE and data directory, so one can be killed by its pid. The
record is read back from BATON_EVENTS: every execution's events, in order, must be exactly
those of its device's answers in the order the device sent them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiomqtt
import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext

from baton_cli.localstack import Server
from baton_contracts.nats import (
    BRIDGE_IN_FLIGHT_BUCKET,
    CATALOG_CHANGE_SUBJECT,
    LEASES_BUCKET,
    CatalogChange,
    CatalogReply,
)
from baton_device_bridge.in_flight import device_key
from baton_device_bridge.replicas import Share
from baton_device_bridge.slots import slot_key
from baton_platform.leases import TTL_S
from baton_platform.settings import Settings
from baton_simulator import READY_LINE, run_simulator
from baton_simulator.behaviours import Timing
from baton_timeout_scheduler.app import TimeoutScheduler
from tests.conftest import DEMO, eventually
from tests.integration.conftest import PROFILES_CATALOG
from tests.integration.test_deadline_watermark import (
    BridgeProcess,
    dispatcher_and_scheduler,
    stack_settings,
)
from tests.integration.test_device_bridge import Device
from tests.integration.test_dispatcher import stream_events, submit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("mqtt_broker", ["mosquitto"], indirect=True),
]

DEVICES = [f"fleet-{n}" for n in range(1, 13)]
# Driven by hand, and one of replica 0's devices (checked where it matters).
HAND = "demo-thermostat-2"
HELD_TTL = 6  # seconds: the hand-driven command's, time for the kill before its deadline
REPLICAS = 2
# What the record of each command must be, answer by answer (the simulator's thermostat).
RECORDS = {
    "set_temperature": ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"],
    "reboot": ["Requested", "Dispatched", "Published", "Acknowledged", "Progressed", "Succeeded"],
}
STORED = re.compile(r"report answer:([0-9a-f-]{36}):\S+ stored")


@pytest.fixture
def catalog(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The demo thermostat, on a fleet of devices (plus the hand-driven HAND); or the
    catalog a test names as its parameter."""
    if (named := getattr(request, "param", None)) is not None:
        assert isinstance(named, Path)
        return named
    demo = yaml.safe_load(DEMO.read_text())
    devices = [{"id": d, "type": "thermostat"} for d in [*DEVICES, HAND]]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"device_types": demo["device_types"], "devices": devices}))
    return path


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path, catalog: Path) -> Settings:
    return stack_settings(
        nats_server, mqtt_broker, tmp_path, catalog_path=catalog, deadline_max_hold=120
    )


@pytest.fixture
async def scheduler(settings: Settings) -> AsyncIterator[TimeoutScheduler]:
    async with dispatcher_and_scheduler(settings) as running:
        yield running


class Replica(BridgeProcess):
    """One replica: its own instance and data directory; each run its own log."""

    def __init__(self, settings: Settings, index: int, tmp_path: Path) -> None:
        own = settings.model_copy(
            update={
                "instance": f"{settings.instance}-{index}",
                "data_dir": tmp_path / f"replica-{index}",
            }
        )
        self.logs = tmp_path / f"log-{index}"
        super().__init__(own, self.logs)
        self.instance = own.instance
        self.share = Share(REPLICAS, index)
        self.env |= {
            "BATON_BRIDGE_REPLICAS": str(REPLICAS),
            "BATON_BRIDGE_REPLICA": str(index),
            "BATON_LOG_LEVEL": "DEBUG",  # each stored report is a line: who stored what
        }
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.log_dir = self.logs / f"run-{self.runs}"
        super().start()

    def log(self, run: int | None = None) -> str:
        """The log of `run`, or every run's one after the other."""
        pattern = f"run-{run if run is not None else '*'}/device-bridge.log"
        return "".join(log.read_text(errors="replace") for log in sorted(self.logs.glob(pattern)))

    def logged_at(self, line: str) -> datetime | None:
        """When `line` was last logged (the log's own clock)."""
        found = [m for m in self.log().splitlines() if line in m]
        if not found:
            return None
        last = found[-1]
        if last.startswith("{"):  # BATON_LOG_FORMAT=json, the default
            return datetime.fromisoformat(json.loads(last)["time"])
        return datetime.strptime(last[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)

    def stored(self, run: int | None = None) -> set[UUID]:
        """The executions whose answers this replica stored: in `run`, or in any run."""
        pattern = f"run-{run if run is not None else '*'}/device-bridge.log"
        found: set[UUID] = set()
        for log in self.logs.glob(pattern):
            found |= {UUID(m) for m in STORED.findall(log.read_text(errors="replace"))}
        return found


@pytest.fixture
def replicas(settings: Settings, tmp_path: Path) -> Iterator[list[Replica]]:
    made = [Replica(settings, index, tmp_path) for index in range(REPLICAS)]
    yield made
    for replica in made:
        replica.kill()


@pytest.fixture
async def fleet(
    mqtt_broker: Server, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[None]:
    """The simulated thermostats, as fast as the test's `Timing` (its parameter)."""
    timing: Timing = request.param
    caplog.set_level(logging.INFO, logger="baton_simulator")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_simulator("127.0.0.1", mqtt_broker.port, "5", DEVICES, [], stop, timing=timing)
    )

    async def online() -> bool:
        assert not task.done(), task
        return READY_LINE in caplog.text

    try:
        await eventually(online, what="simulated devices online")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def started(replicas: list[Replica]) -> None:
    """Each replica connected, subscribed and through its first round of probes."""
    for replica in replicas:
        replica.start()
    for replica in replicas:

        async def drained(replica: Replica = replica) -> bool:
            log = replica.log_dir / "device-bridge.log"
            return log.exists() and "MQTT session drained" in log.read_text(errors="replace")

        await eventually(drained, timeout=15, what=f"{replica.instance} drained")


async def send(
    nc: Client, commands: list[tuple[str, str]], ttl: int | None = None
) -> dict[UUID, tuple[str, str]]:
    sent: dict[UUID, tuple[str, str]] = {}
    for device_id, name in commands:
        params: dict[str, Any] = {"value": 21} if name == "set_temperature" else {}
        reply = await submit(nc, device_id=device_id, name=name, params=params, ttl=ttl)
        assert reply.execution is not None, reply
        sent[reply.execution.id] = (device_id, name)
    return sent


async def records(js: JetStreamContext, ids: set[UUID]) -> dict[UUID, list[str]]:
    found: dict[UUID, list[str]] = defaultdict(list)
    for event in await stream_events(js):
        if event.execution_id in ids:
            found[event.execution_id].append(event.type)
    return found


async def all_ended(js: JetStreamContext, sent: dict[UUID, tuple[str, str]]) -> None:
    ends = {"Succeeded", "Failed", "Rejected", "TimedOut", "Expired", "Canceled"}

    async def ended() -> bool:
        found = await records(js, set(sent))
        return all(ends & set(found.get(i, [])) for i in sent)

    await eventually(ended, timeout=60, interval=0.5, what=f"{len(sent)} executions ended")


async def exactly_as_answered(
    js: JetStreamContext,
    sent: dict[UUID, tuple[str, str]],
    expected: dict[str, list[str]] = RECORDS,
) -> None:
    """0 lost, 0 duplicated, 0 out of order, 0 wrong statuses: each execution's record is
    its command's answers, each once, in the device's order (`expected`, by command)."""
    found = await records(js, set(sent))
    wrong = {i: found.get(i) for i, (_, name) in sent.items() if found.get(i) != expected[name]}
    assert not wrong, f"{len(wrong)} of {len(sent)} records differ: {wrong}"


def mix(rounds: int) -> list[tuple[str, str]]:
    names = ["set_temperature", "reboot"]
    return [(d, names[(n + r) % 2]) for r in range(rounds) for n, d in enumerate(DEVICES)]


@pytest.mark.parametrize("fleet", [Timing(answer_delay=0, progress_delay=0)], indirect=True)
async def test_replicas_share_the_devices_and_keep_each_devices_answers_in_order(
    scheduler: TimeoutScheduler, nc: Client, fleet: None, replicas: list[Replica]
) -> None:
    """Every device answers in one burst (STARTED, IN_PROGRESS, SUCCEEDED back to back):
    split across two replicas, they would race to be stored. Each replica stores the answers
    of its own devices only, and both have some."""
    js = nc.jetstream()
    await started(replicas)
    sent = await send(nc, mix(rounds=4))
    await all_ended(js, sent)
    await exactly_as_answered(js, sent)

    for replica in replicas:
        stored = replica.stored()
        assert stored, f"replica {replica.instance} stored no answer"
        devices = {sent[i][0] for i in stored}
        assert all(replica.share.owns(d) for d in devices), (replica.instance, devices)
    assert set().union(*(r.stored() for r in replicas)) == set(sent)


@pytest.mark.parametrize("fleet", [Timing(answer_delay=0.3, progress_delay=0.7)], indirect=True)
async def test_a_killed_replicas_slot_moves_to_the_other_and_back_losing_nothing(
    settings: Settings,
    scheduler: TimeoutScheduler,
    nc: Client,
    mqtt_broker: Server,
    fleet: None,
    replicas: list[Replica],
) -> None:
    """Replica 0 is killed (SIGKILL, by its pid) while its devices are answering, and more
    commands come while it is dead. Its slot's lease lapses and replica 1 takes the slot:
    it resumes slot 0's persistent session, drains the answers queued there while nobody
    held it, and sends slot 0's waiting requests. An answer the broker took before its
    deadline, held in the session past it, wins over it. Replica 0 back, replica 1 gives
    the slot back (its work stopped before the lease is let go) with commands in flight:
    every command ends SUCCEEDED, each answer recorded once and in order, and the broker
    never saw two connections of one slot's session at once."""
    js = nc.jetstream()
    doomed, survivor = replicas
    assert doomed.share.owns(HAND)
    await started(replicas)
    async with Device(mqtt_broker, HAND) as device:
        sent = await send(nc, mix(rounds=2))
        reply = await submit(nc, device_id=HAND, name="reboot", ttl=HELD_TTL)
        assert reply.execution is not None
        held = reply.execution.id

        async def arrived() -> bool:
            return bool(device.on("request", held))

        await eventually(arrived, what="the request at the hand-driven device")

        # Mid-flight: some answers stored, most still to come (each reboot takes ~1.7 s).
        async def answering() -> bool:
            return len(doomed.stored()) >= 3

        await eventually(answering, timeout=20, what="replica 0 storing answers")
        doomed.kill()
        killed_at = time.monotonic()
        # Before the deadline, into the dead slot's session; each returns once the broker
        # has it (PUBACK).
        for status in ("STARTED", "SUCCEEDED"):
            await device.answer(held, {"status": status, "answer_id": status})
        after = await send(nc, mix(rounds=1))
        sent |= after

    async def taken() -> bool:
        return "took bridge slot 0 of replica 0" in survivor.log()

    await eventually(taken, timeout=TTL_S + 5, interval=0.2, what="slot 0 taken over")
    assert time.monotonic() - killed_at < TTL_S + 5
    await all_ended(js, sent)
    await exactly_as_answered(js, sent)
    kept = (await records(js, {held}))[held]
    answered = ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"]
    assert kept == answered, kept  # its STARTED and SUCCEEDED, not TimedOut
    # What the dead process's session held, and slot 0's commands sent after the kill,
    # the survivor stored.
    slot0 = {i for i, (d, _) in sent.items() if doomed.share.owns(d)}
    assert held in survivor.stored()
    assert {i for i in after if i in slot0} <= survivor.stored()

    # Replica 0 back, with commands in flight: its slot comes back to it.
    doomed.start()
    more = await send(nc, mix(rounds=2))

    async def given_back() -> bool:
        return "took bridge slot 0 (its own)" in doomed.log(run=2)

    await eventually(given_back, timeout=15, interval=0.2, what="slot 0 given back")
    later = await send(nc, mix(rounds=1))
    await all_ended(js, more | later)
    await exactly_as_answered(js, sent | more | later)
    assert {i for i, (d, _) in later.items() if doomed.share.owns(d)} <= doomed.stored(run=2)
    # One runner at a time: the survivor let slot 0 go before replica 0 took it, and nobody
    # pushed it off a slot's session (the broker closes an older connection of a client id
    # for a newer one; its own log is written too late to read here).
    released = survivor.logged_at("released bridge slot 0")
    took = doomed.logged_at("took bridge slot 0 (its own)")
    assert released is not None and took is not None and released <= took
    assert "MQTT connection lost" not in survivor.log()
    lease = await (await nc.jetstream().key_value(LEASES_BUCKET)).get(slot_key(0))
    assert lease.value == f"device-bridge.{doomed.instance}".encode()


@pytest.mark.parametrize("fleet", [Timing(answer_delay=0.3, progress_delay=0.7)], indirect=True)
async def test_a_frozen_replica_is_pushed_off_its_slot_and_takes_it_back_without_a_fight(
    scheduler: TimeoutScheduler,
    nc: Client,
    fleet: None,
    replicas: list[Replica],
) -> None:
    """Replica 0 is frozen (SIGSTOP) holding slot 0, its MQTT connection open: its lease
    lapses, replica 1 takes the slot and its session (the broker closes the frozen one's
    connection for it, once). Replica 0 resumes: its lease is no longer held on its own
    clock, so it stops the slot's work and does not connect again with the slot's client id
    (which would push replica 1 off); it keeps its member key again, replica 1 gives the
    slot back, and every command ends as its device answered."""
    js = nc.jetstream()
    doomed, survivor = replicas
    await started(replicas)
    sent = await send(nc, mix(rounds=1))
    await all_ended(js, sent)
    assert doomed.proc is not None
    doomed.freeze()
    during = await send(nc, mix(rounds=1))

    async def taken() -> bool:
        return "took bridge slot 0 of replica 0" in survivor.log()

    await eventually(taken, timeout=TTL_S + 10, interval=0.2, what="slot 0 taken over")
    await all_ended(js, during)
    doomed.proc.send_signal(signal.SIGCONT)

    async def back() -> bool:
        return doomed.log().count("took bridge slot 0 (its own)") == 2

    await eventually(back, timeout=20, interval=0.2, what="slot 0 back at replica 0")
    later = await send(nc, mix(rounds=1))
    await all_ended(js, later)
    await exactly_as_answered(js, sent | during | later)
    assert {i for i, (d, _) in later.items() if doomed.share.owns(d)} <= doomed.stored()
    # The frozen one was pushed off by the broker (its connection lost) and, resumed, did
    # not connect again until it held the slot again; the survivor was never pushed off.
    assert "MQTT connection lost" not in survivor.log()
    connected = [line for line in doomed.log().splitlines() if "connected to MQTT" in line]
    assert len(connected) == 2 and all("slot-0" in line for line in connected), connected
    resumed = doomed.logged_at("bridge slot 0 not renewed in time")
    took = doomed.logged_at("took bridge slot 0 (its own)")
    assert resumed is not None and took is not None and resumed <= took


async def test_a_device_added_to_the_catalog_is_subscribed_by_its_replica_before_it_is_sent(
    scheduler: TimeoutScheduler,
    nc: Client,
    mqtt_broker: Server,
    replicas: list[Replica],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A catalog change reaches one replica (they share the events consumer). A device's
    first command goes to its own replica all the same, which loads the catalog first: it
    subscribes to the device's topics before it sends, so the device's instant answers
    have a subscriber."""
    js = nc.jetstream()
    await started(replicas)
    added = [f"added-{n}" for n in range(1, 7)]
    assert all(any(r.share.owns(d) for d in added) for r in replicas)
    for device_id in added:
        change = CatalogChange(op="put-device", device={"id": device_id, "type": "thermostat"})
        msg = await nc.request(CATALOG_CHANGE_SUBJECT, change.model_dump_json().encode(), 5)
        assert CatalogReply.model_validate_json(msg.data).problem is None
    caplog.set_level(logging.INFO, logger="baton_simulator")
    stop = asyncio.Event()
    timing = Timing(answer_delay=0, progress_delay=0)
    simulator = asyncio.create_task(
        run_simulator("127.0.0.1", mqtt_broker.port, "5", added, [], stop, timing=timing)
    )

    async def online() -> bool:
        assert not simulator.done(), simulator
        return READY_LINE in caplog.text

    try:
        await eventually(online, what="the added devices online")
        sent = await send(nc, [(d, "set_temperature") for d in added])
        await all_ended(js, sent)
        await exactly_as_answered(js, sent)
    finally:
        stop.set()
        await asyncio.wait_for(simulator, timeout=10)


@pytest.mark.parametrize("catalog", [PROFILES_CATALOG], indirect=True)
async def test_every_profile_works_across_replicas_and_raw_mapped_goes_out_via_its_reader(
    scheduler: TimeoutScheduler, nc: Client, simulated: None, replicas: list[Replica]
) -> None:
    """Each replica subscribes to its own devices' topics in every wire profile. A raw-mapped
    answer names no execution: the replica that reads it attributes it to the device's
    execution in flight, which it keeps in its own bridge.sqlite; so that replica must be
    the one that sends the request, whichever replica the lifecycle event reached first. It
    keeps it in JetStream (BATON_BRIDGE_IN_FLIGHT), where whoever runs the slot next reads
    it."""
    js = nc.jetstream()
    await started(replicas)
    reader = next(r for r in replicas if r.share.owns("iotee-1"))
    other = next(r for r in replicas if r is not reader)
    commands = [
        ("baton-thermo-1", "set_temperature"),
        ("fleets-thermo-1", "set_temperature"),
        ("aws-thermo-1", "set_temperature"),
        *[("iotee-1", name) for name in ("lock", "unlock") * 3],
    ]
    sent: dict[UUID, tuple[str, str]] = {}
    for device_id, name in commands:
        sent |= await send(nc, [(device_id, name)])
    await all_ended(js, sent)
    by_device = {i: (device_id, device_id) for i, (device_id, _) in sent.items()}
    acknowledged = ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"]
    await exactly_as_answered(
        js,
        by_device,
        {
            "baton-thermo-1": acknowledged,
            "fleets-thermo-1": acknowledged,
            # AWS has no STARTED: its devices say IN_PROGRESS first (docs/wire-profiles.md).
            "aws-thermo-1": ["Requested", "Dispatched", "Published", "Progressed", "Succeeded"],
            "iotee-1": acknowledged,
        },
    )
    assert reader.stored() >= {i for i, (d, _) in sent.items() if d == "iotee-1"}
    assert other.stored() and reader.stored()
    bucket = await js.key_value(BRIDGE_IN_FLIGHT_BUCKET)
    entry = await bucket.get(device_key("iotee-1"))
    assert entry.value is not None
    assert UUID(entry.value.decode()) == max(
        (i for i, (d, _) in sent.items() if d == "iotee-1"), key=list(sent).index
    )


@pytest.mark.parametrize("catalog", [PROFILES_CATALOG], indirect=True)
async def test_a_raw_mapped_answer_left_in_a_dead_slot_is_attributed_by_the_slots_next_runner(
    scheduler: TimeoutScheduler, nc: Client, mqtt_broker: Server, replicas: list[Replica]
) -> None:
    """A raw-mapped answer names no execution. Its request out, the replica that sent it is
    killed; the device answers into the slot's session; the other replica takes the slot,
    reads the device's execution in flight from BATON_BRIDGE_IN_FLIGHT and records the
    answers against it."""
    js = nc.jetstream()
    await started(replicas)
    reader = next(r for r in replicas if r.share.owns("iotee-1"))
    other = next(r for r in replicas if r is not reader)
    v5 = aiomqtt.ProtocolVersion.V5
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, identifier="hand-iotee-1", protocol=v5
    ) as device:
        await device.subscribe("iotee/dev/ABC123/rls", qos=1)
        # Its deadline well past the takeover: the slot's lease lapses TTL_S after the kill,
        # and the command's type gives it 10 s, which a loaded machine can overrun.
        sent = await send(nc, [("iotee-1", "unlock")], ttl=int(TTL_S) * 5)
        request = await asyncio.wait_for(anext(aiter(device.messages)), 10)
        assert request.payload == b"0"
        reader.kill()
        for said in (b"ack", b"done"):
            await device.publish("iotee/dev/ABC123/rls/ack", said, qos=1)
    await all_ended(js, sent)
    acknowledged = ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"]
    await exactly_as_answered(js, sent, {"unlock": acknowledged})
    assert set(sent) <= other.stored()


async def test_mosquitto_hands_a_shared_subscriptions_messages_round_robin(
    mqtt_broker: Server,
) -> None:
    """Why replicas do not share the traffic through `$share/<group>/<filter>` on Mosquitto:
    it hands one publisher's messages on one topic to the members in turn, so one device's
    answers would be read, and stored, by two replicas at their own pace."""
    v5 = aiomqtt.ProtocolVersion.V5
    members = [
        aiomqtt.Client("127.0.0.1", mqtt_broker.port, identifier=f"m{n}", protocol=v5)
        for n in range(2)
    ]
    got: list[list[bytes]] = [[], []]

    async def read(n: int) -> None:
        async for message in members[n].messages:
            assert isinstance(message.payload, bytes)
            got[n].append(message.payload)

    readers = []
    for n, member in enumerate(members):
        await member.__aenter__()
        await member.subscribe("$share/bridges/baton/v1/devices/+/executions/+/response", qos=1)
        readers.append(asyncio.create_task(read(n)))
    try:
        async with aiomqtt.Client("127.0.0.1", mqtt_broker.port, protocol=v5) as device:
            topic = "baton/v1/devices/d1/executions/e1/response"
            for n in range(10):
                await device.publish(topic, str(n).encode(), qos=1)

        async def all_read() -> bool:
            return len(got[0]) + len(got[1]) == 10

        await eventually(all_read, what="the ten answers read")
        assert got[0] and got[1], got  # one device's answers, on both members
    finally:
        for task in readers:
            task.cancel()
        for member in members:
            await member.__aexit__(None, None, None)
