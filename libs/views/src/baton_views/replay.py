"""The projection's source (the event store's notification log) and `rebuild` for `baton replay`.

The projection reads the event store, never JetStream: live projection and replay are the
same code over the same source of truth (docs/architecture.md). eventsourcing is
synchronous, so async callers run these in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from baton_domain.application import Executions
from baton_platform.mapping import read_events
from baton_platform.sql import Connection, Database
from baton_views.projection import Deferred, project
from baton_views.store import TABLES, connect, create_schema, transaction

REBUILD_BATCH = 1000

Progress = Callable[[int, int], None]


def rebuild(
    executions: Executions, views: Path | Database, progress: Progress | None = None
) -> int:
    """Empty the views and project every stored event again; returns the events applied.

    One transaction: a projection running meanwhile (the api) waits for the write lock and
    its readers keep seeing the old rows until the new ones are complete. `progress` gets
    (position reached, last position in the store) after each batch; notification ids can
    have gaps, so these are positions, not counts.
    """
    conn = connect(views)
    try:
        create_schema(conn)
        with transaction(conn):
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}")
            return _project_all(executions, conn, progress)
    finally:
        conn.close()


def _project_all(executions: Executions, conn: Connection, progress: Progress | None) -> int:
    total = executions.recorder.max_notification_id() or 0
    position = applied = 0
    # One transaction: the counters and the position are written once, at the end.
    deferred = Deferred()
    while batch := read_events(executions, position, REBUILD_BATCH):
        done, position = project(conn, batch, deferred=deferred)
        applied += done
        # Events stored while we rebuild are taken too: the loop runs until the log ends.
        total = max(total, position)
        if progress is not None:
            progress(position, total)
    if position:
        deferred.write(conn)
    if progress is not None and (position < total or not applied):
        progress(total, total)  # the last ids were gaps, or there was nothing to do
    return applied
