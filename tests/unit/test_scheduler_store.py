"""The deadline store: one row per execution, due rows by next attempt, backoff; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from baton_platform.sql import Database
from baton_timeout_scheduler.store import Change, Deadlines, DeadlineStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def where(tmp_path: Path, database_url: str | None) -> Path | Database:
    """The store's place: a file under the test's directory, or the test's database."""
    if database_url is None:
        return tmp_path / "var" / "deadlines.sqlite"
    return Database(url=database_url, schema="scheduler")


@pytest.fixture
def store(where: Path | Database) -> Iterator[DeadlineStore]:
    store = DeadlineStore(where)
    yield store
    store.close()


def test_upsert_then_due_only_once_passed(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    assert store.due(T0 - timedelta(seconds=1), limit=10) == []
    [row] = store.due(T0, limit=10)
    assert row.execution_id == execution_id
    assert row.due_at == T0
    assert row.attempts == 0


def test_repeated_upsert_keeps_one_row(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    store.upsert(execution_id, T0)
    assert store.count() == 1


def test_repeated_upsert_keeps_backoff_but_a_new_deadline_resets_it(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    store.postpone(execution_id, T0 + timedelta(seconds=5))
    store.upsert(execution_id, T0)  # a duplicate delivery changes nothing
    assert store.due(T0 + timedelta(seconds=1), limit=10) == []
    store.upsert(execution_id, T0 + timedelta(seconds=2))  # a different deadline replaces it
    [row] = store.due(T0 + timedelta(seconds=2), limit=10)
    assert row.due_at == T0 + timedelta(seconds=2)
    assert row.attempts == 0


def test_delete(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    assert store.delete(execution_id) is True
    assert store.delete(execution_id) is False
    assert store.get(execution_id) is None
    assert store.count() == 0


def test_postpone_counts_attempts_and_hides_the_row_until_then(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    assert store.postpone(execution_id, T0 + timedelta(seconds=1)) == 1
    assert store.due(T0 + timedelta(milliseconds=500), limit=10) == []
    [row] = store.due(T0 + timedelta(seconds=1), limit=10)
    assert row.attempts == 1
    assert store.postpone(execution_id, T0 + timedelta(seconds=3)) == 2
    assert store.postpone(uuid4(), T0) == 0  # a row deleted meanwhile: nothing to do


def test_reset_backoff_makes_past_deadlines_due_again(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    store.postpone(execution_id, T0 + timedelta(hours=1))
    store.reset_backoff()
    [row] = store.due(T0, limit=10)
    assert row.attempts == 0


def test_due_is_ordered_and_limited(store: DeadlineStore) -> None:
    ids = [uuid4() for _ in range(5)]
    for i, execution_id in enumerate(reversed(ids)):
        store.upsert(execution_id, T0 - timedelta(seconds=i))
    rows = store.due(T0, limit=3)
    assert [r.execution_id for r in rows] == ids[:3]


def test_naive_deadline_is_taken_as_utc(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0.replace(tzinfo=None))
    row = store.get(execution_id)
    assert row is not None
    assert row.due_at == T0


def test_rows_survive_reopening(where: Path | Database) -> None:
    execution_id = uuid4()
    first = DeadlineStore(where)
    first.upsert(execution_id, T0)
    first.close()
    second = DeadlineStore(where)
    try:
        assert second.get(execution_id) is not None
    finally:
        second.close()


async def test_async_facade_runs_the_same_store(store: DeadlineStore) -> None:
    deadlines = Deadlines(store)
    execution_id = uuid4()
    await deadlines.upsert(execution_id, T0)
    assert [r.execution_id for r in await deadlines.due(T0, limit=5)] == [execution_id]
    assert await deadlines.postpone(execution_id, T0 + timedelta(seconds=1)) == 1
    assert await deadlines.delete(execution_id)
    assert await deadlines.count() == 0


def test_an_execution_has_its_own_and_a_verification_deadline(store: DeadlineStore) -> None:
    execution_id = uuid4()
    store.upsert(execution_id, T0)
    store.upsert(execution_id, T0 + timedelta(seconds=60), "verification")
    assert store.count() == 2
    assert store.delete(execution_id)  # the execution ended...
    kept = store.get(execution_id, "verification")  # ...its verification still waits
    assert kept is not None and kept.kind == "verification"
    assert [d.kind for d in store.due(T0 + timedelta(seconds=61), 10)] == ["verification"]


def test_a_version_1_file_is_converted_and_keeps_its_deadlines(tmp_path: Path) -> None:
    path = tmp_path / "deadlines.sqlite"
    execution_id = uuid4()
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE deadlines (execution_id TEXT PRIMARY KEY, due_at REAL NOT NULL,"
        " next_attempt REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX deadlines_next_attempt ON deadlines (next_attempt);"
    )
    old.execute("INSERT INTO deadlines VALUES (?, ?, ?, 2)", (str(execution_id), 1.0, 5.0))
    old.commit()
    old.close()
    store = DeadlineStore(path)
    try:
        row = store.get(execution_id)
        assert row is not None and (row.kind, row.attempts) == ("execution", 2)
        store.upsert(execution_id, T0, "verification")
        assert store.count() == 2
    finally:
        store.close()
    again = DeadlineStore(path)  # opening a converted file changes nothing
    try:
        assert again.count() == 2
    finally:
        again.close()


def applied_one_by_one(store: DeadlineStore, changes: list[Change]) -> None:
    """What `apply` must amount to: each change, in order."""
    for change in changes:
        if change.due_at is None:
            store.delete(change.execution_id, change.kind)
        else:
            store.upsert(change.execution_id, change.due_at, change.kind)


def rows(store: DeadlineStore) -> list[tuple[str, str, datetime, int]]:
    due = store.due(T0 + timedelta(days=1), limit=100)
    return sorted((str(d.execution_id), d.kind, d.due_at, d.attempts) for d in due)


def test_a_batch_amounts_to_its_changes_in_order(tmp_path: Path, store: DeadlineStore) -> None:
    """Rows changed once are written together; a row changed twice in one batch ends as
    its changes one by one leave it, its backoff included."""
    backed_off, ended, redone, moved, fresh = (uuid4() for _ in range(5))
    later = T0 + timedelta(seconds=30)
    before: list[Change] = [Change(i, "execution", T0) for i in (backed_off, ended, redone, moved)]
    batch = [
        Change(backed_off, "execution", T0),  # delivered again: keeps its backoff
        Change(ended, "execution"),  # ended: deleted
        Change(redone, "execution"),  # deleted, then stored again: backoff reset
        Change(redone, "execution", T0),
        Change(moved, "execution", later),  # moved away and back: backoff reset
        Change(moved, "execution", T0),
        Change(fresh, "execution", T0),
        Change(fresh, "verification", later),
    ]
    reference = DeadlineStore(tmp_path / "reference.sqlite")
    try:
        for one in (store, reference):
            applied_one_by_one(one, before)
            for execution_id in (backed_off, redone, moved):
                one.postpone(execution_id, T0 + timedelta(seconds=5))
        store.apply(batch)
        applied_one_by_one(reference, batch)
        assert rows(store) == rows(reference)
    finally:
        reference.close()
    attempts = {(r[0], r[1]): r[3] for r in rows(store)}
    assert attempts[(str(backed_off), "execution")] == 1
    assert attempts[(str(redone), "execution")] == 0
    assert attempts[(str(moved), "execution")] == 0
    assert (str(ended), "execution") not in attempts
    assert store.count() == 5


def test_a_batch_costs_as_many_statements_for_ten_executions_as_for_one(
    tmp_path: Path,
) -> None:
    store = DeadlineStore(tmp_path / "deadlines.sqlite")
    try:
        ran: list[str] = []
        store._db.set_trace_callback(ran.append)

        def statements(changes: list[Change]) -> int:
            ran.clear()
            store.apply(changes)
            return len([s for s in ran if s.split()[0] in ("INSERT", "DELETE", "UPDATE")])

        one, ten = [uuid4()], [uuid4() for _ in range(10)]
        for ids in (one, ten):
            store.apply([Change(i, "execution", T0) for i in ids])
        # Each batch deletes the rows stored before and stores as many new ones.
        cost_of_one = statements([Change(one[0], "execution"), Change(uuid4(), "execution", T0)])
        cost_of_ten = statements(
            [Change(i, "execution") for i in ten] + [Change(uuid4(), "execution", T0) for _ in ten]
        )
    finally:
        store.close()
    assert cost_of_one == 2
    assert cost_of_ten == cost_of_one
