"""The deadline store: one row per execution, due rows by next attempt, backoff; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from baton_platform.sql import Database
from baton_timeout_scheduler.store import Deadlines, DeadlineStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def where(tmp_path: Path, database_url: str | None) -> Path | Database:
    """The store's place: a file under the test's directory, or the test's database."""
    if database_url is None:
        return tmp_path / "var" / "deadlines.sqlite"
    return Database(url=database_url, schema="scheduler")


@pytest.fixture
def store(where: Path | Database) -> DeadlineStore:
    store = DeadlineStore(where)
    yield store  # type: ignore[misc]
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
