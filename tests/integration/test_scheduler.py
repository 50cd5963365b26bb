"""The timeout-scheduler against a real nats-server: durable deadlines, end to end.

The scheduler runs in-process from its composition root; the dispatcher is faked by a plain
nats-py subscriber on the deadline subject that records each request and answers it.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from baton_cli.localstack import Server
from baton_contracts.nats import (
    DEADLINE_SUBJECT,
    DISPATCHER_QUEUE,
    EVENTS_STREAM,
    EVENTS_WILDCARD,
    DeadlineDue,
    DeadlineReply,
    LifecycleEvent,
    event_subject,
)
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats import synced
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from baton_timeout_scheduler.app import serve
from baton_timeout_scheduler.edges import DURABLE, SERVICE, SUBJECTS
from baton_timeout_scheduler.store import DeadlineStore
from tests.conftest import BACKENDS, eventually, nats_access

pytestmark = pytest.mark.integration

Outcome = Literal["applied", "ignored", "not-yet", "unknown"]
_ids = itertools.count(1)


class FakeDispatcher:
    """Answers DeadlineDue requests like the dispatcher would, and remembers when they came."""

    def __init__(self, nc: Client, outcome: Outcome = "applied") -> None:
        self.nc = nc
        self.outcome = outcome
        self.requests: list[tuple[UUID, float]] = []  # (execution id, wall-clock time)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(DEADLINE_SUBJECT, queue=DISPATCHER_QUEUE, cb=self._on)
        await synced(self.nc)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            await synced(self.nc)
            self._sub = None

    async def _on(self, msg: Msg) -> None:
        due = DeadlineDue.model_validate_json(msg.data)
        self.requests.append((due.execution_id, time.time()))
        await msg.respond(DeadlineReply(outcome=self.outcome).model_dump_json().encode())

    def times_for(self, execution_id: UUID) -> list[float]:
        return [at for eid, at in self.requests if eid == execution_id]


class Scheduler:
    """The service as an asyncio task; stop() and start() again on the same files."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(self.settings, self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
            self._task = None


@pytest.fixture
def backend() -> str:
    """SQLite here; the tests marked with BOTH run on PostgreSQL too."""
    return "sqlite"


BOTH = pytest.mark.parametrize("backend", BACKENDS)


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        **nats_access(nats_server),
        data_dir=tmp_path / "var",
        database_url=database_url,
        scheduler_tick=0.1,
        request_timeout=0.5,
    )


@pytest.fixture
async def scheduler(settings: Settings) -> AsyncIterator[Scheduler]:
    service = Scheduler(settings)
    service.start()
    yield service
    await service.stop()


@pytest.fixture
async def dispatcher(nc: Client) -> AsyncIterator[FakeDispatcher]:
    fake = FakeDispatcher(nc)
    await fake.start()
    yield fake
    await fake.stop()


async def publish(
    js: JetStreamContext, execution_id: UUID, type_: str, data: dict[str, Any] | None = None
) -> None:
    n = next(_ids)
    event = LifecycleEvent(
        notification_id=n,
        execution_id=execution_id,
        version=1,
        type=type_,
        occurred_at=datetime.now(UTC),
        data=data or {},
    )
    await js.publish(
        event_subject(execution_id, type_),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": f"test-{n}"},
    )


async def request(js: JetStreamContext, execution_id: UUID, deadline: datetime) -> None:
    await publish(js, execution_id, "Requested", {"deadline": deadline.isoformat()})


async def caught_up(js: JetStreamContext) -> None:
    """Wait until the scheduler's consumer has acknowledged everything in the stream."""

    async def probe() -> bool:
        stream = await js.stream_info(EVENTS_STREAM)
        try:
            info = await js.consumer_info(EVENTS_STREAM, DURABLE)
        except nats.js.errors.NotFoundError:
            return False
        return (
            info.ack_floor is not None
            and info.ack_floor.stream_seq == stream.state.last_seq
            and info.num_ack_pending == 0
        )

    await eventually(probe, timeout=10, what="scheduler consumer caught up")


def rows(settings: Settings) -> int:
    store = DeadlineStore(settings.scheduler_database)
    try:
        return store.count()
    finally:
        store.close()


@BOTH
async def test_a_deadline_fires_shortly_after_it_passes(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    execution_id = uuid4()
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    await request(nc.jetstream(), execution_id, deadline)

    async def fired() -> list[float]:
        return dispatcher.times_for(execution_id)

    [at] = await eventually(fired, timeout=5, what="DeadlineDue received")
    assert deadline.timestamp() <= at < deadline.timestamp() + 2
    await eventually(lambda: asyncio.to_thread(lambda: rows(settings) == 0), what="row deleted")


async def test_a_terminal_event_before_the_deadline_cancels_it(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    await request(js, execution_id, deadline)
    await publish(js, execution_id, "Dispatched")
    await publish(js, execution_id, "Succeeded", {"answer": {}})
    await caught_up(js)
    assert rows(settings) == 0
    # The property is an absence: give the deadline a bounded chance to (wrongly) fire.
    await asyncio.sleep(max(0.0, deadline.timestamp() - time.time()) + 1.0)
    assert dispatcher.requests == []


@BOTH
async def test_a_deadline_missed_while_stopped_fires_on_restart(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    await request(js, execution_id, deadline)
    await caught_up(js)
    await scheduler.stop()
    assert rows(settings) == 1
    await asyncio.sleep(max(0.0, deadline.timestamp() - time.time()) + 0.5)  # time passes
    assert dispatcher.requests == []

    restarted = time.time()
    scheduler.start()

    async def fired() -> list[float]:
        return dispatcher.times_for(execution_id)

    [at] = await eventually(fired, timeout=5, what="DeadlineDue after restart")
    assert at - restarted < 2


async def test_a_silent_dispatcher_keeps_the_row_until_it_answers(
    nc: Client, scheduler: Scheduler, settings: Settings
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    deadline = datetime.now(UTC) + timedelta(seconds=0.5)
    await request(js, execution_id, deadline)
    await caught_up(js)

    def tried() -> bool:
        store = DeadlineStore(settings.scheduler_database)
        try:
            row = store.get(execution_id)
        finally:
            store.close()
        return row is not None and row.attempts >= 1

    # Nobody answers: the scheduler tried (no responders) and kept the row.
    await eventually(lambda: asyncio.to_thread(tried), timeout=5, what="a failed attempt")
    assert rows(settings) == 1

    dispatcher = FakeDispatcher(nc)
    await dispatcher.start()
    try:

        async def fired() -> list[float]:
            return dispatcher.times_for(execution_id)

        await eventually(fired, timeout=10, what="DeadlineDue once the dispatcher is back")
        await eventually(lambda: asyncio.to_thread(lambda: rows(settings) == 0), what="deleted")
    finally:
        await dispatcher.stop()


async def test_not_yet_keeps_the_row_and_retries(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    dispatcher.outcome = "not-yet"
    execution_id = uuid4()
    await request(nc.jetstream(), execution_id, datetime.now(UTC))

    async def asked_twice() -> bool:
        return len(dispatcher.times_for(execution_id)) >= 2

    await eventually(asked_twice, timeout=5, what="a retry after not-yet")
    dispatcher.outcome = "applied"
    await eventually(lambda: asyncio.to_thread(lambda: rows(settings) == 0), what="deleted")


@BOTH
async def test_a_repeated_requested_event_keeps_one_row(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    js = nc.jetstream()
    execution_id = uuid4()
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    await request(js, execution_id, deadline)
    await request(js, execution_id, deadline)  # a second delivery of the same event
    await caught_up(js)
    assert rows(settings) == 1

    async def fired() -> list[float]:
        return dispatcher.times_for(execution_id)

    await eventually(fired, timeout=5, what="DeadlineDue")
    await eventually(lambda: asyncio.to_thread(lambda: rows(settings) == 0), what="deleted")
    assert len(dispatcher.times_for(execution_id)) == 1


async def test_a_malformed_message_is_counted_and_does_not_block_the_rest(
    nc: Client, scheduler: Scheduler, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    js = nc.jetstream()
    counter = REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-event")
    before = counter._value.get()
    await js.publish(event_subject(uuid4(), "Requested"), b"{not json")
    await publish(js, uuid4(), "Requested", {"deadline": "not a time"})
    execution_id = uuid4()
    await request(js, execution_id, datetime.now(UTC) + timedelta(seconds=30))
    await caught_up(js)
    assert counter._value.get() - before == 2
    assert rows(settings) == 1


async def test_a_locked_database_gets_the_event_redelivered(
    nc: Client, scheduler: Scheduler, settings: Settings
) -> None:
    js = nc.jetstream()
    await caught_up(js)  # the consumer exists
    # Another writer holds the database: the scheduler's insert fails after its busy timeout
    # and the event must come back, not be acknowledged or dropped.
    blocker = sqlite3.connect(settings.scheduler_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        execution_id = uuid4()
        await request(js, execution_id, datetime.now(UTC) + timedelta(seconds=30))

        async def delivered_again() -> bool:
            info = await js.consumer_info(EVENTS_STREAM, DURABLE)
            return bool(info.num_redelivered >= 1)

        await eventually(delivered_again, timeout=20, what="a redelivery after the store failed")
        assert info_acked(await js.consumer_info(EVENTS_STREAM, DURABLE)) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await caught_up(js)
    assert rows(settings) == 1


def info_acked(info: Any) -> int:
    return int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0


async def test_only_the_events_it_acts_on_reach_an_older_consumer_updated_in_place(
    nats_server: Server, nc: Client, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    js = nc.jetstream()
    # An older version's consumer: every lifecycle event, one of them handled and acked.
    old = await nats.connect(nats_server.url_as(OPS))
    try:
        handled = asyncio.Queue[Msg]()
        await old.jetstream().subscribe(
            EVENTS_WILDCARD,
            queue=DURABLE,
            stream=EVENTS_STREAM,
            cb=handled.put,
            manual_ack=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        before = uuid4()  # handled by the old version: must not come back
        await request(js, before, datetime.now(UTC) + timedelta(seconds=1))
        await (await asyncio.wait_for(handled.get(), 5)).ack_sync()
    finally:
        await old.close()
    assert (await js.consumer_info(EVENTS_STREAM, DURABLE)).config.filter_subject == (
        EVENTS_WILDCARD
    )

    service = Scheduler(settings)
    service.start()
    try:
        execution_id = uuid4()
        await request(js, execution_id, datetime.now(UTC) + timedelta(seconds=30))
        for skipped in ("Dispatched", "Published", "AnswerRecorded", "Admitted", "Released"):
            await publish(js, execution_id, skipped)
        await publish(js, uuid4(), "Canceled", {"reason": "x"})  # acted on: last in the stream
        await caught_up(js)
        info = await js.consumer_info(EVENTS_STREAM, DURABLE)
        assert info.config.filter_subject is None
        assert info.config.filter_subjects == list(SUBJECTS)
        # Delivered: the old version's one, then Requested and Canceled; none of the rest.
        assert info.delivered.consumer_seq == 3
        assert info.num_redelivered == 0
        assert rows(settings) == 1  # `before` was not delivered again
        assert dispatcher.requests == []
    finally:
        await service.stop()


async def test_a_requested_a_killed_instance_held_comes_back_at_once(
    nats_server: Server, nc: Client, dispatcher: FakeDispatcher, settings: Settings
) -> None:
    """Killed after receiving `Requested` and before committing its row: the next instance
    gets it at its start, not after the ack wait (30 s), so the deadline fires in time."""
    js = nc.jetstream()
    service = Scheduler(settings)
    service.start()
    await eventually(lambda: consumer_exists(js), what="the consumer made")
    await service.stop()

    killed = await nats.connect(nats_server.url_as(OPS))
    try:
        held = asyncio.Queue[Msg]()
        await killed.jetstream().subscribe(
            EVENTS_WILDCARD, queue=DURABLE, stream=EVENTS_STREAM, cb=held.put, manual_ack=True
        )
        execution_id = uuid4()
        await request(js, execution_id, datetime.now(UTC) + timedelta(seconds=0.5))
        await asyncio.wait_for(held.get(), 5)  # received, never acknowledged
    finally:
        await killed.close()

    service.start()
    try:

        async def fired() -> list[float]:
            return dispatcher.times_for(execution_id)

        await eventually(fired, timeout=5, what="DeadlineDue well before the ack wait")
    finally:
        await service.stop()


async def consumer_exists(js: JetStreamContext) -> bool:
    try:
        await js.consumer_info(EVENTS_STREAM, DURABLE)
    except nats.js.errors.NotFoundError:
        return False
    return True
