"""Each execution's trace context, kept beside the event store (not in it) from its submit
until the outbox relay publishes its events, maybe much later and in another dispatcher.

Only while tracing is on (baton_platform.tracing). Not part of the record: the events stay
as they were, so a replay gives the same views byte for byte and old streams need no
upcasting; losing a row (a crash before it was written to disk) costs a broken trace, never
a command. Hence a write without fsync (SQLite `synchronous=OFF`, PostgreSQL
`synchronous_commit=off`), written before the events' commit so the relay always finds it
(docs/architecture.md, "Traces"). Rows older than `KEEP_S` are dropped now and then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from uuid import UUID

from baton_platform.sql import Database, Dialect
from baton_platform.tracing import TRACEPARENT, TRACESTATE

KEEP_S = 7 * 24 * 3600.0
PRUNE_EVERY = 10_000  # rows written between two prunes

SCHEMA = """
CREATE TABLE IF NOT EXISTS trace_contexts (
    execution_id TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL,
    tracestate TEXT NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL
)
"""


UNSYNCED: dict[Dialect, tuple[str, ...]] = {
    "sqlite": ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=OFF"),
    "postgres": ("SET synchronous_commit = off",),
}


class TraceContexts:
    def __init__(self, database: Database) -> None:
        # Set on every connection, one opened again after a PostgreSQL restart too.
        self._db = database.connect(on_open=UNSYNCED)
        self._lock = threading.Lock()
        self._written = 0
        self._db.execute(SCHEMA)

    def keep(self, execution_id: UUID, carrier: Mapping[str, str]) -> None:
        """Remember `carrier` (a `traceparent`, maybe a `tracestate`) for the execution;
        the first one stays (a submit sent again keeps its first trace)."""
        if TRACEPARENT not in carrier:
            return
        row = (str(execution_id), carrier[TRACEPARENT], carrier.get(TRACESTATE, ""), time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO trace_contexts VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", row
            )
            self._written += 1
            if self._written % PRUNE_EVERY == 0:
                cutoff = time.time() - KEEP_S
                self._db.execute("DELETE FROM trace_contexts WHERE stored_at < ?", (cutoff,))

    def find(self, execution_ids: Iterable[UUID]) -> dict[UUID, dict[str, str]]:
        """The contexts kept for those of `execution_ids` that have one."""
        wanted = list(dict.fromkeys(execution_ids))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        with self._lock:
            rows = self._db.execute(
                "SELECT execution_id, traceparent, tracestate FROM trace_contexts "
                f"WHERE execution_id IN ({marks})",
                [str(e) for e in wanted],
            ).fetchall()
        found: dict[UUID, dict[str, str]] = {}
        for execution_id, traceparent, tracestate in rows:
            carrier = {TRACEPARENT: traceparent}
            if tracestate:
                carrier[TRACESTATE] = tracestate
            found[UUID(execution_id)] = carrier
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
