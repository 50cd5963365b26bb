"""The outbox relay against a real nats-server and a real SQLite event store.

Many events in flight at once must still land in notification order, each once, whatever
stops the relay in between; the stream itself says where a new relay resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from baton_cli.localstack import Server
from baton_contracts.nats import EVENTS_STREAM, NOTIFICATION_ID_HEADER, event_subject
from baton_dispatcher.relay import ACK_EVERY, BATCH, WINDOW, AckWindow, OutboxRelay
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform import metrics
from baton_platform.eventstore import open_executions
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.mapping import read_events
from baton_platform.nats import ensure_streams
from baton_platform.nats_access import OPS
from tests.conftest import DEMO, eventually, service_settings

pytestmark = pytest.mark.integration

DEVICE = "demo-thermostat-1"
TOGGLES = 1500
EVENTS = TOGGLES + 1  # and the queue's first: three reads from the store, several windows each


@pytest.fixture
def executions(nats_server: Server, tmp_path: Path) -> Executions:
    """A store holding `EVENTS` events: a device's presence going on and off."""
    store = open_executions(service_settings(nats_server, tmp_path), Catalog.from_yaml(DEMO))
    queue = store.queue_of(DEVICE)
    for n in range(TOGGLES):
        assert queue.set_presence(n % 2 == 0, datetime.now(UTC))
    store.save(queue)
    assert store.recorder.max_notification_id() == EVENTS
    return store


Connect = Callable[[], Awaitable[Client]]


@pytest.fixture
async def connections(nats_server: Server) -> AsyncIterator[Connect]:
    """Connections for relays, each closed at the end if the test did not."""
    opened: list[Client] = []

    async def connect() -> Client:
        client = await nats.connect(nats_server.url_as(OPS))
        opened.append(client)
        return client

    yield connect
    for client in opened:
        if not client.is_closed:
            await client.close()


class Watched(AckWindow):
    """The relay's window, counting the acknowledgements awaited at once; `on_send` runs
    before the n-th publish."""

    def __init__(self, nc: Client, on_send: Callable[[int], object] | None = None) -> None:
        super().__init__(nc)
        self.sent = 0
        self.asked: list[bool] = []  # each publish: whether it asked for an acknowledgement
        self.peak = 0
        self.on_send = on_send

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str], ack: bool = True
    ) -> asyncio.Future[api.PubAck] | None:
        self.sent += 1
        self.asked.append(ack)
        if self.on_send is not None:
            result = self.on_send(self.sent)
            if asyncio.iscoroutine(result):
                await result
        future = await super().send(subject, payload, headers, ack)
        self.peak = max(self.peak, len(self._futures))
        return future


def relay_on(executions: Executions, nc: Client, window: AckWindow | None = None) -> OutboxRelay:
    relay = OutboxRelay(executions, nc, poll_interval=0.1)
    if window is not None:
        relay._acks = window
    return relay


async def stream_ids(nc: Client) -> list[int | None]:
    """The notification id of every message in the stream, in stream order (None: not the
    relay's)."""
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    ids: list[int | None] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq=seq)
        header = (msg.headers or {}).get(NOTIFICATION_ID_HEADER)
        ids.append(int(header) if header is not None else None)
    return ids


async def caught_up(relay: OutboxRelay) -> bool:
    return relay.position == EVENTS


async def relayed(nc: Client, count: int) -> bool:
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    return info.state.messages >= count


async def test_events_land_in_notification_order_with_many_acks_in_flight(
    nc: Client, executions: Executions, connections: Connect
) -> None:
    relay_nc = await connections()
    window = Watched(relay_nc)
    relay = relay_on(executions, relay_nc, window)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relayed(nc, EVENTS), timeout=30, what="every event relayed")
    finally:
        await cancel_and_wait(task)
    assert await stream_ids(nc) == list(range(1, EVENTS + 1))
    assert relay.position == EVENTS
    assert window.peak == WINDOW // ACK_EVERY  # not one at a time
    # One acknowledgement asked for each ACK_EVERY events of a round, and its last.
    rounds = [BATCH] * (EVENTS // BATCH) + [EVENTS % BATCH]
    assert window.asked.count(True) == sum(math.ceil(n / ACK_EVERY) for n in rounds)
    assert window.asked.count(False) == EVENTS - window.asked.count(True)


async def test_a_relay_stopped_mid_window_is_resumed_without_gap_or_duplicate(
    nc: Client, executions: Executions, connections: Connect
) -> None:
    crash = asyncio.Event()

    def crash_at(n: int) -> None:
        if n == 700:
            crash.set()

    first_nc = await connections()
    first = relay_on(executions, first_nc, Watched(first_nc, crash_at))
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(crash.wait(), 10)
    # Gone with a full window unacknowledged; what it handed to its connection still lands,
    # possibly after the next relay read the stream's end.
    await cancel_and_wait(task)
    assert first.position < 700

    second_nc = await connections()
    second = relay_on(executions, second_nc)
    task = asyncio.create_task(second.run())
    await first_nc.close()
    try:
        await eventually(lambda: relayed(nc, EVENTS), timeout=30, what="every event relayed")
        await eventually(lambda: caught_up(second), what="caught up")
    finally:
        await cancel_and_wait(task)
    assert await stream_ids(nc) == list(range(1, EVENTS + 1))

    # And one started on a complete stream finds nothing left to publish.
    third = relay_on(executions, await connections())
    await third.read_stream_end()
    assert third.position == EVENTS


async def test_a_message_someone_else_publishes_midway_does_not_break_the_order(
    nc: Client, executions: Executions, connections: Connect
) -> None:
    js = nc.jetstream()

    async def intrude(n: int) -> None:
        if n == 400:  # lands in the stream ahead of the window in flight
            await js.publish(event_subject("someone", "Else"), b"{}", stream=EVENTS_STREAM)

    relay_nc = await connections()
    window = Watched(relay_nc, intrude)
    relay = relay_on(executions, relay_nc, window)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relayed(nc, EVENTS + 1), timeout=30, what="every event relayed")
        await eventually(lambda: caught_up(relay), what="caught up")
    finally:
        await cancel_and_wait(task)
    ids = await stream_ids(nc)
    assert ids.count(None) == 1
    assert [i for i in ids if i is not None] == list(range(1, EVENTS + 1))
    # The first round (BATCH events) failed at an acknowledgement past 400; then every
    # event asked for its own until a round went through (at least the round's tail,
    # 400 to 500), and they were sparse again after.
    assert window.asked[:BATCH].count(True) == math.ceil(BATCH / ACK_EVERY)
    careful = list(itertools.takewhile(bool, window.asked[BATCH:]))
    assert len(careful) >= BATCH - 400 + 1
    assert False in window.asked[BATCH + len(careful) :]


@pytest.mark.parametrize("second_after", [0, 300])
async def test_two_relays_overlapping_put_each_event_in_once_and_in_order(
    nc: Client, executions: Executions, connections: Connect, second_after: int
) -> None:
    """Two dispatchers may both relay for a moment around a lease's handover (a holder
    paused past its lease): each event still lands once, in notification order. The
    expected last sequence and message id of every publish make the one of the two that is
    behind fail, and it reads the stream's end again."""
    first_nc, second_nc = await connections(), await connections()
    first = relay_on(executions, first_nc, Watched(first_nc))
    second_window = Watched(second_nc)
    second = relay_on(executions, second_nc, second_window)
    tasks = [asyncio.create_task(first.run())]
    # The second starts with the first, or once it is well under way (windows in flight).
    await eventually(lambda: relayed(nc, second_after), timeout=30, what="the first under way")
    tasks.append(asyncio.create_task(second.run()))
    try:
        await eventually(lambda: relayed(nc, EVENTS), timeout=30, what="every event relayed")
        await eventually(lambda: caught_up(first), what="the first caught up")
        await eventually(lambda: caught_up(second), what="the second caught up")
    finally:
        for task in tasks:
            await cancel_and_wait(task)
    assert second_window.sent > 0  # they did overlap
    assert await stream_ids(nc) == list(range(1, EVENTS + 1))


async def test_a_relay_that_cannot_read_the_stream_at_first_tries_again_rather_than_ending(
    executions: Executions, connections: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    # As after a NATS node failed: the stream's end cannot be read for a while. A relay
    # that ended there left its dispatcher holding the lease with nothing published (seen
    # in the cluster chaos run). Here the stream is not there yet.
    admin = await connections()
    with contextlib.suppress(NotFoundError):
        await admin.jetstream().delete_stream(EVENTS_STREAM)
    relay_nc = await connections()
    relay = relay_on(executions, relay_nc)
    task = asyncio.create_task(relay.run())
    try:

        async def failed_once() -> bool:
            return any("cannot read the stream's end" in r.getMessage() for r in caplog.records)

        await eventually(failed_once, what="a first read of the stream's end failed")
        assert not task.done()
        await ensure_streams(admin.jetstream())
        await eventually(lambda: relayed(admin, EVENTS), timeout=30, what="every event relayed")
    finally:
        await cancel_and_wait(task)
    assert await stream_ids(admin) == list(range(1, EVENTS + 1))


async def test_an_event_the_server_refuses_is_logged_with_its_own_error(
    nats_server: Server,
    nc: Client,
    tmp_path: Path,
    connections: Connect,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event in the middle of a round that nats-server refuses for itself (here: larger
    than the stream takes) gets no answer, as it asked for none, and the round's last one
    is refused as out of place. The relay then asks for an acknowledgement of every event,
    so the refusal it logs is that event's own, and it publishes nothing past it. Its
    metric says how far behind it is, for the operator's alert (`BatonRelayBehind`)."""
    monkeypatch.setattr(metrics, "serving", lambda: True)
    monkeypatch.setattr(metrics, "SAMPLE_INTERVAL_S", 0.1)
    store = open_executions(service_settings(nats_server, tmp_path), Catalog.from_yaml(DEMO))

    def toggles(count: int) -> None:
        queue = store.queue_of(DEVICE)
        for n in range(count):
            assert queue.set_presence(n % 2 == 0, datetime.now(UTC))
        store.save(queue)

    toggles(10)  # notifications 1-11 (the queue's first, then the toggles)
    assert store.seed_catalog() == 12  # the whole catalog in one event
    toggles(10)  # 13-22
    sizes = [len(e.model_dump_json()) for e in read_events(store, 0, 100)]
    assert len(sizes) == 22 and max(sizes[:11] + sizes[12:]) + 1000 < sizes[11]
    js = nc.jetstream()
    config = (await js.stream_info(EVENTS_STREAM)).config
    config.max_msg_size = sizes[11] - 200  # room for any toggle and its headers
    await js.update_stream(config)

    relay_nc = await connections()
    window = Watched(relay_nc)
    relay = relay_on(store, relay_nc, window)
    task = asyncio.create_task(relay.run())
    try:

        async def refused_for_its_size() -> bool:
            return any(
                isinstance(r.exc_info[1], APIError) and r.exc_info[1].err_code == 10054
                for r in caplog.records
                if r.exc_info is not None
            )

        await eventually(refused_for_its_size, timeout=15, what="the refusal logged")

        async def behind() -> bool:
            return bool(metrics.RELAY_BEHIND._value.get() == 22 - 11)

        await eventually(behind, what="the relay's lag sampled")
    finally:
        await cancel_and_wait(task)
    assert metrics.RELAY_BEHIND._value.get() == 0  # not relaying: says nothing
    assert window.asked[:22] == [False] * 21 + [True]  # the first round: one asked, refused
    assert all(window.asked[22:])  # then every event asked for its own
    assert relay.position == 11
    assert await stream_ids(nc) == list(range(1, 12))


async def lose_newest(nc: Client, keep: int) -> None:
    """The stream as a nats-server brings it back after losing its newest messages (killed
    before they reached its disk): its first `keep` only. Made anew and refilled, as a
    stream's end cannot be cut otherwise."""
    js = nc.jetstream()
    kept = [await js.get_msg(EVENTS_STREAM, seq=seq) for seq in range(1, keep + 1)]
    await js.delete_stream(EVENTS_STREAM)
    await ensure_streams(js)
    for msg in kept:
        assert msg.subject is not None and msg.headers is not None
        headers = {key: msg.headers[key] for key in ("Nats-Msg-Id", NOTIFICATION_ID_HEADER)}
        await js.publish(msg.subject, msg.data or b"", headers=headers, stream=EVENTS_STREAM)


@pytest.mark.parametrize("busy", [False, True])
async def test_a_stream_that_lost_its_newest_events_gets_them_again(
    nc: Client, executions: Executions, connections: Connect, busy: bool
) -> None:
    """The stream is a copy of the store: when it comes back shorter, the relay publishes
    again what it lost, in order, under the same sequences. Quiet, the relay finds out at
    its next look at the stream's end; busy, when its next publish is refused."""
    relay = relay_on(executions, await connections())
    # The relay's look while quiet waits at a gate while the stream is cut short, so that
    # it sees the stream before or after, never half made; busy, the look sees nothing.
    look, arrived, gate = relay.check_stream_end, asyncio.Event(), asyncio.Event()
    gate.set()

    async def gated() -> None:
        arrived.set()
        await gate.wait()
        if not (busy and cut):
            await look()

    relay.check_stream_end = gated  # type: ignore[method-assign]
    cut = False
    task = asyncio.create_task(relay.run())
    total = EVENTS
    try:
        await eventually(lambda: caught_up(relay), timeout=30, what="every event relayed")
        gate.clear()
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
        await lose_newest(nc, 1000)
        cut = True
        if busy:
            queue = executions.queue_of(DEVICE)
            assert queue.set_presence(True, datetime.now(UTC))
            executions.save(queue)
            total += 1
            relay.wake()
        gate.set()

        async def mended() -> bool:
            return relay.position == total and await relayed(nc, total)

        await eventually(mended, timeout=30, what="the lost events published again")
    finally:
        await cancel_and_wait(task)
    assert await stream_ids(nc) == list(range(1, total + 1))
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    assert info.state.last_seq == total  # each under the sequence it had


async def test_a_nats_server_killed_with_events_not_yet_on_its_disk_ends_with_each_once(
    nats_server: Server, nc: Client, executions: Executions, connections: Connect
) -> None:
    """BATON_NATS_EVENTS_PERSIST=async: nats-server acknowledges an event before it is on
    disk, so a SIGKILL may lose the newest ones the relay counted as published. After the
    restart the stream holds every event once, in notification order: the relay publishes
    again whatever the stream came back without. A durable consumer (as the device-bridge's
    and the timeout-scheduler's) still receives every event, some perhaps twice."""
    js = nc.jetstream()
    await js.delete_stream(EVENTS_STREAM)
    await ensure_streams(js, events_persist="async")
    assert (await js.stream_info(EVENTS_STREAM)).config.persist_mode == api.PersistMode.ASYNC
    seen: list[int] = []

    async def handle(msg: Msg) -> None:
        seen.append(int((msg.headers or {})[NOTIFICATION_ID_HEADER]))
        await msg.ack()

    reader = (await connections()).jetstream()
    await reader.subscribe(
        "baton.v1.events.>",
        durable="reader",
        stream=EVENTS_STREAM,
        cb=handle,
        manual_ack=True,
        config=api.ConsumerConfig(ack_wait=2),
    )
    killed = asyncio.Event()

    def kill_midway(n: int) -> None:
        if n == 900:  # windows acknowledged before it, one in flight
            nats_server.kill()
            killed.set()

    relay_nc = await connections()
    relay = relay_on(executions, relay_nc, Watched(relay_nc, kill_midway))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(killed.wait(), 30)
        acknowledged = relay.position
        nats_server.restart()
        await eventually(lambda: caught_up(relay), timeout=60, what="the relay caught up")

        async def all_seen() -> bool:
            return set(seen) == set(range(1, EVENTS + 1))

        await eventually(all_seen, timeout=30, what="every event consumed")
    finally:
        await cancel_and_wait(task)
    assert acknowledged > 0
    assert await stream_ids(await connections()) == list(range(1, EVENTS + 1))


async def test_a_stream_made_before_keeps_its_persist_mode(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-server never changes a stream's persist mode: a dispatcher started with another
    BATON_NATS_EVENTS_PERSIST keeps the stream as it is, says so, and starts."""
    js = nc.jetstream()
    await ensure_streams(js, events_persist="async")  # made `default` by the fixture
    assert (await js.stream_info(EVENTS_STREAM)).config.persist_mode is None
    assert any("keeps persist mode default" in r.getMessage() for r in caplog.records)
