"""baton_platform.pg_recorder: the event store's inserts on PostgreSQL, one statement each,
still atomic and still ordered by the table lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

from baton_platform.eventstore import postgres_env
from baton_platform.pg_recorder import OneStatementRecorder
from baton_platform.sql import conninfo


@pytest.fixture
def recorder(postgres_url: str) -> Iterator[OneStatementRecorder]:
    factory = PostgresFactory(Environment("executions", postgres_env(postgres_url)))
    made = factory.application_recorder()
    assert isinstance(made, OneStatementRecorder)  # what the services' settings choose
    try:
        yield made
    finally:
        factory.close()


def events(stream: object, versions: range) -> list[StoredEvent]:
    return [StoredEvent(stream, v, "t:Event", f"state {v}".encode()) for v in versions]  # type: ignore[arg-type]


def test_an_insert_stores_every_event_and_returns_their_ids_in_order(
    recorder: OneStatementRecorder,
) -> None:
    one, two = uuid4(), uuid4()
    first = recorder.insert_events(events(one, range(1, 4)))
    second = recorder.insert_events([*events(two, range(1, 3)), *events(one, range(4, 5))])
    assert len(first) == 3 and len(second) == 3
    ids = [*first, *second]
    assert ids == sorted(ids) and len(set(ids)) == 6
    stored = recorder.select_notifications(start=ids[0], limit=10)
    assert [(n.id, n.originator_id, n.originator_version) for n in stored] == [
        (ids[0], one, 1), (ids[1], one, 2), (ids[2], one, 3),
        (ids[3], two, 1), (ids[4], two, 2), (ids[5], one, 4),
    ]  # fmt: skip
    assert stored[5].state == b"state 4"
    assert recorder.insert_events([]) == []


def test_a_version_stored_twice_stores_nothing_of_its_insert(
    recorder: OneStatementRecorder,
) -> None:
    one, two = uuid4(), uuid4()
    recorder.insert_events(events(one, range(1, 3)))
    with pytest.raises(IntegrityError):
        recorder.insert_events([*events(two, range(1, 2)), *events(one, range(2, 3))])
    assert recorder.select_events(two) == []
    assert [e.originator_version for e in recorder.select_events(one)] == [1, 2]


def test_an_insert_waits_for_the_table_lock_that_orders_notification_ids(
    recorder: OneStatementRecorder, postgres_url: str
) -> None:
    """Another transaction holding a lock that conflicts with EXCLUSIVE (any writer of the
    table) holds the insert back until it ends: ids are given out in commit order."""
    table = recorder.events_table_name
    done: list[list[int]] = []
    with (
        psycopg.connect(conninfo(postgres_url)) as holder,
        psycopg.connect(conninfo(postgres_url), autocommit=True) as observer,
    ):
        holder.execute(f'LOCK TABLE "{table}" IN ROW EXCLUSIVE MODE')
        writer = threading.Thread(
            target=lambda: done.append(list(recorder.insert_events(events(uuid4(), range(1, 2)))))
        )
        writer.start()
        deadline = time.monotonic() + 10
        waiting = 0
        while waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
            waiting = observer.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE relation = %s::regclass"
                " AND mode = 'ExclusiveLock' AND NOT granted",
                (table,),
            ).fetchone()[0]  # type: ignore[index]
        assert waiting == 1, "the insert never asked for the table lock"
        assert done == []
        holder.commit()
        writer.join(10)
    assert len(done) == 1 and len(done[0]) == 1


def test_a_store_made_by_the_librarys_recorder_takes_inserts_after_an_upgrade(
    postgres_url: str,
) -> None:
    """A store an earlier Baton made (the library's recorder, no function of ours) gets
    the function when this version opens it, and its log goes on where it was."""
    env = {k: v for k, v in postgres_env(postgres_url).items() if k != "APPLICATION_RECORDER_TOPIC"}
    older = PostgresFactory(Environment("executions", env))
    stream = uuid4()
    try:
        library = older.application_recorder()
        assert not isinstance(library, OneStatementRecorder)
        inserted: Sequence[int | None] | None = library.insert_events(events(stream, range(1, 2)))
        [before] = inserted or [None]
    finally:
        older.close()
    newer = PostgresFactory(Environment("executions", postgres_env(postgres_url)))
    try:
        ours = newer.application_recorder()
        after = ours.insert_events(events(stream, range(2, 4)))
        assert before is not None and after is not None and list(after) == [before + 1, before + 2]
        assert [e.originator_version for e in ours.select_events(stream)] == [1, 2, 3]
    finally:
        newer.close()


def test_the_newest_version_of_a_stream_is_read_without_its_events(
    recorder: OneStatementRecorder,
) -> None:
    one, two = uuid4(), uuid4()
    recorder.insert_events([*events(one, range(1, 4)), *events(two, range(1, 2))])
    recorder.insert_events(events(one, range(4, 6)))
    assert (recorder.newest_version(one), recorder.newest_version(two)) == (5, 1)
    assert recorder.newest_version(uuid4()) == 0  # nothing stored
