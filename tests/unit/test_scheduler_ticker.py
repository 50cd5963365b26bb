"""The ticker and the event handling, with the store on a tmp file and a fake dispatcher."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import pytest

from baton_contracts.nats import DeadlineDue, DeadlineReply, LifecycleEvent, Problem
from baton_timeout_scheduler.edges import MalformedEventError, change_of, decode
from baton_timeout_scheduler.store import Change, Deadlines, DeadlineStore
from baton_timeout_scheduler.ticker import DispatcherUnavailableError, Ticker, backoff

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
Outcome = Literal["applied", "ignored", "not-yet", "reports-pending", "unknown"]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FakeDispatcher:
    def __init__(self, outcome: Outcome | None = "applied") -> None:
        self.outcome = outcome  # None: nobody answers
        self.requests: list[UUID] = []

    async def __call__(self, due: DeadlineDue) -> DeadlineReply:
        self.requests.append(due.execution_id)
        if self.outcome is None:
            raise DispatcherUnavailableError("no responders")
        return DeadlineReply(outcome=self.outcome)


@pytest.fixture
def deadlines(tmp_path: Path) -> Iterator[Deadlines]:
    store = DeadlineStore(tmp_path / "deadlines.sqlite")
    yield Deadlines(store)
    store.close()


async def settle(ticker: Ticker) -> None:
    await ticker.fire_due()
    await asyncio.gather(*list(ticker._in_flight.values()))


@pytest.mark.parametrize("outcome", ["applied", "ignored", "unknown"])
async def test_a_settled_deadline_is_deleted(deadlines: Deadlines, outcome: Outcome) -> None:
    clock, dispatcher = Clock(), FakeDispatcher(outcome)
    ticker = Ticker(deadlines, dispatcher, tick=0.01, clock=clock)
    execution_id = uuid4()
    await deadlines.upsert(execution_id, T0 + timedelta(seconds=1))
    await settle(ticker)
    assert dispatcher.requests == []  # not due yet
    clock.now += timedelta(seconds=1)
    await settle(ticker)
    assert dispatcher.requests == [execution_id]
    assert await deadlines.count() == 0


@pytest.mark.parametrize("outcome", ["not-yet", None])
async def test_an_unsettled_deadline_is_kept_and_retried_with_backoff(
    deadlines: Deadlines, outcome: Outcome | None
) -> None:
    clock, dispatcher = Clock(), FakeDispatcher(outcome)
    ticker = Ticker(deadlines, dispatcher, tick=0.01, retry_base=0.5, retry_cap=2.0, clock=clock)
    execution_id = uuid4()
    await deadlines.upsert(execution_id, T0)
    await settle(ticker)
    await settle(ticker)  # backing off: not asked again yet
    assert dispatcher.requests == [execution_id]
    clock.now += timedelta(seconds=0.5)
    await settle(ticker)
    assert len(dispatcher.requests) == 2
    row = await deadlines.get(execution_id)
    assert row is not None
    assert row.attempts == 2
    dispatcher.outcome = "applied"
    clock.now += timedelta(seconds=1)
    await settle(ticker)
    assert await deadlines.count() == 0


async def test_a_deadline_the_dispatcher_failed_on_is_kept_and_retried(
    deadlines: Deadlines,
) -> None:
    """The dispatcher answers `unknown` with an internal-error problem when handling the
    deadline raised (say, JetStream did not answer while nats-server restarted): nothing was
    settled, so the row stays; deleting it left the execution PENDING for ever."""
    failed = Problem(status=500, title="Internal error", detail="logged", code="internal-error")
    clock = Clock()
    replies = [DeadlineReply(outcome="unknown", problem=failed), DeadlineReply(outcome="applied")]
    asked: list[UUID] = []

    async def dispatcher(due: DeadlineDue) -> DeadlineReply:
        asked.append(due.execution_id)
        return replies.pop(0)

    ticker = Ticker(deadlines, dispatcher, tick=0.01, retry_base=0.5, clock=clock)
    execution_id = uuid4()
    await deadlines.upsert(execution_id, T0)
    await settle(ticker)
    assert asked == [execution_id]
    assert await deadlines.count() == 1
    clock.now += timedelta(seconds=0.5)
    await settle(ticker)
    assert asked == [execution_id, execution_id]
    assert await deadlines.count() == 0


async def test_a_deadline_waiting_for_reports_is_asked_again_soon_without_backoff(
    deadlines: Deadlines, caplog: pytest.LogCaptureFixture
) -> None:
    """`reports-pending`: the device's answer may be on its way to being applied; the row stays
    and is asked again soon (0.25 s, 0.5 s, ... never more than 1 s later), with no warning."""
    clock, dispatcher = Clock(), FakeDispatcher("reports-pending")
    ticker = Ticker(deadlines, dispatcher, tick=0.01, retry_base=0.5, retry_cap=5.0, clock=clock)
    execution_id = uuid4()
    await deadlines.upsert(execution_id, T0)
    for asked, wait in enumerate([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], start=1):
        await settle(ticker)
        assert len(dispatcher.requests) == asked
        clock.now += timedelta(seconds=wait - 0.01)
        await settle(ticker)
        assert len(dispatcher.requests) == asked  # not yet
        clock.now += timedelta(seconds=0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    dispatcher.outcome = "ignored"
    await settle(ticker)
    assert await deadlines.count() == 0


async def test_many_due_rows_are_fired_boundedly(deadlines: Deadlines) -> None:
    clock = Clock()
    gate = asyncio.Event()
    seen: list[UUID] = []

    async def slow_dispatcher(due: DeadlineDue) -> DeadlineReply:
        seen.append(due.execution_id)
        await gate.wait()
        return DeadlineReply(outcome="applied")

    ticker = Ticker(deadlines, slow_dispatcher, tick=0.01, max_in_flight=4, clock=clock)
    for _ in range(10):
        await deadlines.upsert(uuid4(), T0)
    assert await ticker.fire_due() == 4
    assert await ticker.fire_due() == 0  # full: nothing more, and nothing twice
    await asyncio.sleep(0)
    assert len(seen) == 4
    gate.set()
    for _ in range(5):
        await settle(ticker)
    assert len(seen) == 10
    assert len(set(seen)) == 10
    assert await deadlines.count() == 0


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def event(execution_id: UUID, type_: str, data: dict[str, object] | None = None) -> LifecycleEvent:
    return LifecycleEvent(
        notification_id=1,
        execution_id=execution_id,
        version=1,
        type=type_,
        occurred_at=T0,
        data=data or {},
    )


async def test_requested_stores_and_terminal_deletes(deadlines: Deadlines) -> None:
    execution_id = uuid4()
    due = (T0 + timedelta(seconds=30)).isoformat()
    requested = change_of(event(execution_id, "Requested", {"deadline": due}))
    assert requested == Change(execution_id, "execution", T0 + timedelta(seconds=30))
    assert change_of(event(execution_id, "Dispatched")) is None
    await deadlines.apply([requested])
    row = await deadlines.get(execution_id)
    assert row is not None
    assert row.due_at == T0 + timedelta(seconds=30)
    succeeded = change_of(event(execution_id, "Succeeded"))
    assert succeeded == Change(execution_id, "execution")
    await deadlines.apply([succeeded])
    assert await deadlines.get(execution_id) is None


async def test_a_batch_of_changes_is_applied_in_order_in_one_transaction(
    deadlines: Deadlines,
) -> None:
    first, second = uuid4(), uuid4()
    due = T0 + timedelta(seconds=30)
    await deadlines.apply(
        [Change(first, "execution", due), Change(second, "execution", due), Change(first)]
    )
    assert await deadlines.get(first) is None  # stored, then deleted by the later change
    assert await deadlines.get(second) is not None


async def test_a_batch_that_fails_stores_none_of_its_changes(
    deadlines: Deadlines, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, lost, stored = uuid4(), uuid4(), uuid4()
    due = T0 + timedelta(seconds=30)
    await deadlines.apply([Change(kept, "execution", due), Change(stored, "execution", due)])
    connection = deadlines.store._db
    write = connection.execute_values

    def failing(sql: str, rows: Any, *args: Any) -> Any:
        if sql.startswith("INSERT"):  # the batch's last write, after its delete
            raise sqlite3.OperationalError("disk I/O error")
        return write(sql, rows, *args)

    monkeypatch.setattr(connection, "execute_values", failing)
    with pytest.raises(sqlite3.OperationalError):
        await deadlines.apply(
            [Change(lost, "execution", due), Change(kept), Change(stored, "execution", T0)]
        )
    assert await deadlines.get(lost) is None
    assert await deadlines.get(kept) is not None  # its delete was rolled back too
    unmoved = await deadlines.get(stored)
    assert unmoved is not None and unmoved.due_at == due


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"type": "Requested"}', b"{}"],
)
def test_malformed_messages_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedEventError):
        decode(body)


@pytest.mark.parametrize("data", [{}, {"deadline": "tomorrow"}])
async def test_requested_without_a_valid_deadline_is_malformed(
    deadlines: Deadlines, data: dict[str, object]
) -> None:
    with pytest.raises(MalformedEventError):
        change_of(event(uuid4(), "Requested", data))
