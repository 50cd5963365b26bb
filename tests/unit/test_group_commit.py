"""Group commit (issue 7, item 2): many commands applied in memory and stored together.

Each item of a batch sees what the items before it did; all their events are stored in one
transaction; a bad item fails alone; a transaction that fails (a conflict with another
writer) is retried item by item; and the dispatcher's Writer answers each caller only once
its transaction is committed, with the real position of what it stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from baton_contracts.nats import DeviceReport, SubmitCommand
from baton_dispatcher.writer import Writer
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.errors import ExecutionNotFound, UnknownDevice
from baton_domain.statuses import ExecutionStatus
from baton_platform.eventstore import postgres_env

CATALOG = """
device_types:
  charger:
    delivery: one-at-a-time
    commands:
      start: {}
devices:
  - {id: charger-1, type: charger}
  - {id: charger-2, type: charger}
  - {id: charger-3, type: charger}
"""


# How the dispatcher opens its store (baton_platform.eventstore): aggregates cached, never
# brought up to date from the store, so a conflict must evict the stale copy.
WRITER_CACHE = {"AGGREGATE_CACHE_MAXSIZE": "100", "AGGREGATE_CACHE_FASTFORWARD": "n"}


@pytest.fixture(params=["uncached", "writer-cache"])
def store(
    tmp_path: Path, request: pytest.FixtureRequest, database_url: str | None
) -> Callable[[], Executions]:
    """Opens an application over one store, SQLite or PostgreSQL (each call: another
    writer)."""
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    catalog = Catalog.from_yaml(path)
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "e.db")}
    if database_url is not None:
        env = postgres_env(database_url)
    if request.param == "writer-cache":
        env |= WRITER_CACHE
    return lambda: Executions(catalog, env=env)


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of events in each insert transaction of any application."""
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    from baton_platform.pg_recorder import OneStatementRecorder

    counted: list[int] = []
    for recorder in (SQLiteApplicationRecorder, OneStatementRecorder):
        monkeypatch.setattr(recorder, "insert_events", _counting(recorder.insert_events, counted))
    return counted


def _counting(insert: Callable[..., Any], counted: list[int]) -> Callable[..., Any]:
    def counting(self: Any, stored_events: list[Any], **kwargs: Any) -> Any:
        counted.append(len(stored_events))
        return insert(self, stored_events, **kwargs)

    return counting


def request(app: Executions, device: str = "charger-1") -> Callable[[], Any]:
    return lambda: app.request(RequestCommand(device, "start", {}, None))


def test_a_batch_is_one_transaction_and_each_item_sees_the_ones_before_it(
    store: Callable[[], Executions], transactions: list[int]
) -> None:
    app = store()
    results = app.run_batch([request(app), request(app), request(app, "charger-2")])

    assert len(transactions) == 1  # three executions, two queues: one transaction
    first, second, other = (r.unwrap().execution for r in results)
    # One at a time: the second command saw the first in its device's queue and waits.
    assert (first.dispatched, second.dispatched, other.dispatched) == (True, False, True)
    positions = [r.position for r in results]
    assert all(p is not None and p > 0 for p in positions)
    # None of them is None (asserted above): they sort as ints.
    assert positions == sorted(cast("list[int]", positions)) and len(set(positions)) == 3
    assert app.recorder.max_notification_id() == positions[-1]

    reopened = store()  # what was stored is what the items did
    assert reopened.get(second.id).status is ExecutionStatus.PENDING
    assert reopened.queue_of("charger-1").waiting == [second.id]


def test_a_bad_item_fails_alone_and_leaves_no_trace(
    store: Callable[[], Executions], transactions: list[int]
) -> None:
    app = store()
    seen: list[UUID] = []

    def half_done() -> None:
        # Mutates and saves, then fails: nothing of it may be stored or seen by the next.
        outcome = app.request(RequestCommand("charger-1", "start", {}, None))
        seen.append(outcome.execution.id)
        raise RuntimeError("the item failed after saving")

    unknown = lambda: app.request(RequestCommand("nobody", "start", {}, None))  # noqa: E731
    results = app.run_batch([half_done, unknown, request(app)])

    assert isinstance(results[0].error, RuntimeError) and results[0].position is None
    assert isinstance(results[1].error, UnknownDevice)
    kept = results[2].unwrap().execution
    assert kept.dispatched  # the failed item's command never took the device's turn
    assert len(transactions) == 1
    reopened = store()
    assert reopened.queue_of("charger-1").in_flight == [kept.id]
    with pytest.raises(ExecutionNotFound):
        reopened.get(seen[0])


def test_a_conflict_with_another_writer_is_retried_item_by_item(
    store: Callable[[], Executions], transactions: list[int]
) -> None:
    app, other = store(), store()
    app.request(RequestCommand("charger-1", "start", {}, None))  # the queue exists
    app.queue_of("charger-1")  # and sits in app's cache

    def meanwhile() -> str:
        # Another writer moves charger-1's queue while the batch holds it in memory.
        other.request(RequestCommand("charger-1", "start", {}, None))
        return "moved"

    results = app.run_batch([request(app), meanwhile, request(app, "charger-2")])

    assert [r.error for r in results] == [None, None, None]
    # The batch's transaction failed on the queue's version; each item then went alone (the
    # other writer's command ran a second time, as its item was applied again): 1 + 2 + 3.
    queue = store().queue_of("charger-1")
    assert len(queue.waiting) == 3 and results[0].unwrap().execution.id in queue.waiting
    assert store().get(results[2].unwrap().execution.id).dispatched
    positions = [r.position for r in (results[0], results[2])]
    assert all(p is not None and p > 0 for p in positions)


def test_a_chosen_id_is_written_without_a_look_and_its_repeat_still_found(
    store: Callable[[], Executions], transactions: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The api chooses every execution's id: a new one is written at once, with no read of
    its stream, and a repeat (a lost answer asked again) in a batch or alone still finds
    the execution stored, unchanged: in the writer's cache, or once the store has refused
    the duplicate."""
    app = store()
    looks: list[UUID] = []
    select = app.recorder.select_events

    def counting(originator_id: Any, **kwargs: Any) -> Any:
        looks.append(originator_id)
        return select(originator_id, **kwargs)

    monkeypatch.setattr(app.recorder, "select_events", counting)
    chosen = uuid4()

    def submit(on: Executions = app) -> Any:
        return on.request(RequestCommand("charger-1", "start", {}, None, execution_id=chosen))

    first = app.run_batch([submit])[0].unwrap()
    assert first.created and first.execution.id == chosen
    assert chosen not in looks
    assert len(transactions) == 1

    # A repeat this process stored lately is in its cache (the dispatcher's has one):
    # found without a failed batch. Without a cache, the store refuses the batch's insert
    # and each item goes again alone.
    again = app.run_batch([submit, request(app, "charger-2")])
    repeat, other = (r.unwrap() for r in again)
    assert (repeat.changed, repeat.execution.id, repeat.position) == (False, chosen, None)
    assert other.created and other.execution.dispatched
    cached = app.repository.cache is not None
    assert len(transactions) == (2 if cached else 4)  # (failed; the repeat's own, refused)
    assert submit().changed is False  # alone too

    # One another process stored (a partition handed over): the store refuses the batch's
    # insert, and each item goes again alone.
    elsewhere = store()
    again = elsewhere.run_batch([lambda: submit(elsewhere), request(elsewhere, "charger-3")])
    repeat, other = (r.unwrap() for r in again)
    assert (repeat.changed, repeat.execution.id, repeat.position) == (False, chosen, None)
    assert other.created and other.execution.dispatched
    # (and uncached, the repeat alone above was refused once too)
    assert len(transactions) == (2 if cached else 5) + 3  # failed; refused; the other's
    assert store().queue_of("charger-1").in_flight == [chosen]  # admitted once


def test_an_item_that_stores_nothing_has_no_position(store: Callable[[], Executions]) -> None:
    app = store()
    results = app.run_batch([lambda: app.queue_of("charger-1")])
    assert results[0].position is None and results[0].error is None


async def test_the_writer_groups_concurrent_calls_and_answers_after_the_commit(
    store: Callable[[], Executions], transactions: list[int]
) -> None:
    app = store()
    writer = Writer(app, on_stored=lambda: None)
    commands = [SubmitCommand(device_id=f"charger-{1 + i % 2}", name="start") for i in range(40)]
    try:
        replies = await asyncio.gather(*(writer.submit(c) for c in commands))
        answered_at = app.recorder.max_notification_id()
        assert answered_at is not None
        created = [r.execution for r in replies if r.execution is not None]
        assert len(created) == 40
        # Each answer carries the position its own events were stored at, all committed.
        positions = [r.position for r in replies]
        assert all(p is not None and 0 < p <= answered_at for p in positions)
        assert len(set(positions)) == 40
        # Calls that queued while the writer was busy went into the same transaction.
        assert len(transactions) < 40 and sum(transactions) >= 80

        first = created[0]
        answer = DeviceReport(
            kind="answer",
            execution_id=first.id,
            device_id=first.device_id,
            report_id="r-1",
            status="SUCCEEDED",
            payload={},
            received_at=datetime.now(UTC),
        )
        published = answer.model_copy(update={"kind": "published", "status": None})
        applied = await asyncio.gather(writer.apply_report(published), writer.apply_report(answer))
        assert [r.applied for r in applied] == [True, True]
        assert app.get(first.id).status is ExecutionStatus.SUCCEEDED
    finally:
        writer.close()


def test_snapshots_taken_inside_a_batch_are_of_the_stored_state(
    store: Callable[[], Executions],
) -> None:
    """A device queue is snapshotted every 50 events; a batch that crosses that takes the
    snapshot after its commit, of what was stored."""
    app = store()
    lamp = "charger-2"
    results = app.run_batch([request(app, lamp) for _ in range(99)])
    ids = [r.unwrap().execution.id for r in results]
    assert app.snapshots is not None
    snapshots = list(app.snapshots.get(app.queue_of(lamp).id))
    assert [s.originator_version for s in snapshots] == [50, 100]
    reopened = store().queue_of(lamp)
    assert reopened.in_flight + reopened.waiting == ids
