"""The deadlines the scheduler waits for: one row per execution, in SQLite (`deadlines.sqlite`)
or in the schema `scheduler` of the PostgreSQL database (BATON_DATABASE_URL).

`DeadlineStore` is synchronous (sqlite3, psycopg); `Deadlines` is the same store for the event loop,
each call running in a worker thread. Times are stored as POSIX seconds (UTC) so the due
query is a plain comparison on an index.

`next_attempt` is when the row may fire next: its deadline at first, later than that after
the dispatcher did not answer (backoff). It is reset to the deadline at start, so a
deadline that passed while anything was down fires as soon as the scheduler is back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

from baton_platform.sql import Database

# Two kinds of deadline per execution: its own (created_at + ttl) and, for a command with
# a verification rule, the time by which the device's state must show the change.
Kind = Literal["execution", "verification"]
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deadlines (
    execution_id TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'execution',
    due_at REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (execution_id, kind)
);
CREATE INDEX IF NOT EXISTS deadlines_next_attempt ON deadlines (next_attempt);
"""
# Version 1 had one deadline per execution; its rows are execution deadlines.
_FROM_V1 = """
ALTER TABLE deadlines RENAME TO deadlines_v1;
DROP INDEX IF EXISTS deadlines_next_attempt;
{schema}
INSERT INTO deadlines (execution_id, kind, due_at, next_attempt, attempts)
    SELECT execution_id, 'execution', due_at, next_attempt, attempts FROM deadlines_v1;
DROP TABLE deadlines_v1;
"""
# The name of the store's write lock (baton_platform.sql).
WRITE_LOCK = "deadlines"
# `{values}`: rows of (execution_id, kind, due_at, next_attempt, attempts). A deadline stored
# again unchanged (an event delivered twice) keeps its backoff; a new one resets it.
_UPSERT_ROWS = (
    "INSERT INTO deadlines (execution_id, kind, due_at, next_attempt, attempts) VALUES {values}"
    " ON CONFLICT (execution_id, kind) DO UPDATE SET"
    " due_at = excluded.due_at, next_attempt = excluded.next_attempt, attempts = 0"
    " WHERE deadlines.due_at != excluded.due_at"
)
_DELETE_ROWS = "DELETE FROM deadlines WHERE (execution_id, kind) IN (VALUES {values})"


def _schema(dialect: str) -> str:
    # SQLite's REAL is 8 bytes; PostgreSQL's is 4 (a deadline a couple of minutes off).
    return _SCHEMA if dialect == "sqlite" else _SCHEMA.replace(" REAL ", " DOUBLE PRECISION ")


@dataclass(frozen=True)
class Deadline:
    execution_id: UUID
    due_at: datetime
    attempts: int = 0
    kind: Kind = "execution"


@dataclass(frozen=True)
class Change:
    """What one lifecycle event does to the deadlines: store `due_at` (or move the row to
    it), or, when it is None, delete the row."""

    execution_id: UUID
    kind: Kind = "execution"
    due_at: datetime | None = None


def _to_seconds(moment: datetime) -> float:
    if moment.tzinfo is None:  # the contract says UTC; be lenient with a naive timestamp
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class DeadlineStore:
    """Synchronous; safe to call from several threads (one connection behind a lock)."""

    def __init__(self, where: Path | Database, busy_timeout: float = 5.0) -> None:
        self.database = where if isinstance(where, Database) else Database(path=where)
        self.path = self.database.path  # the SQLite file (None on PostgreSQL)
        self._lock = threading.Lock()
        self._db = self.database.connect()
        if self._db.dialect == "postgres":
            self._create_postgres_schema()
            return
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row is on disk before the event that made it is acknowledged to JetStream;
        # NORMAL would lose the newest rows on power loss, and their deadlines never fire.
        # (PostgreSQL's default, synchronous_commit on, is the same promise.)
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _create_postgres_schema(self) -> None:
        """PostgreSQL's store began at this version: its tables and their version row,
        made once, under the write lock (two schedulers may start together)."""
        with self._db.transaction(WRITE_LOCK):
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            if self._db.execute("SELECT version FROM schema_version").fetchone() is None:
                self._db.executescript(_schema("postgres"))
                self._db.execute(
                    "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                )

    def _migrate(self) -> None:
        """Deadlines are not disposable (unlike views): a version 1 file is converted."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(deadlines)")]
        script = _FROM_V1.format(schema=_SCHEMA) if columns and "kind" not in columns else _SCHEMA
        self._db.executescript(f"BEGIN; {script} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def upsert(self, execution_id: UUID, due_at: datetime, kind: Kind = "execution") -> None:
        """Remember (or move) the deadline; committed when this returns."""
        with self._lock:
            self._upsert(execution_id, due_at, kind)

    def delete(self, execution_id: UUID, kind: Kind = "execution") -> bool:
        with self._lock:
            return self._delete(execution_id, kind)

    def apply(self, changes: Sequence[Change]) -> None:
        """Every change, as if applied in order, in one transaction (one fsync): committed
        when this returns, or none of them if it raises.

        A row changed once in the batch (nearly all: an execution's deadline is stored by
        one event and deleted by a later one) is one of a single multi-row DELETE or
        upsert; a row changed more than once has its changes run one by one, in order,
        since an upsert after a delete or another upsert of the same row sets its attempts
        differently from the last change alone."""
        changed: dict[tuple[UUID, Kind], list[Change]] = {}
        for change in changes:
            changed.setdefault((change.execution_id, change.kind), []).append(change)
        once = [several[0] for several in changed.values() if len(several) == 1]
        deleted = [(str(c.execution_id), c.kind) for c in once if c.due_at is None]
        stored = [
            (str(c.execution_id), c.kind, _to_seconds(c.due_at), _to_seconds(c.due_at), 0)
            for c in once
            if c.due_at is not None
        ]
        with self._lock, self._db.transaction(WRITE_LOCK):
            if deleted:
                self._db.execute_values(_DELETE_ROWS, deleted)
            if stored:
                self._db.execute_values(_UPSERT_ROWS, stored)
            for several in changed.values():
                if len(several) == 1:
                    continue
                for change in several:
                    if change.due_at is None:
                        self._delete(change.execution_id, change.kind)
                    else:
                        self._upsert(change.execution_id, change.due_at, change.kind)

    def _upsert(self, execution_id: UUID, due_at: datetime, kind: Kind) -> None:
        due = _to_seconds(due_at)
        self._db.execute(
            _UPSERT_ROWS.format(values="(?, ?, ?, ?, ?)"), (str(execution_id), kind, due, due, 0)
        )

    def _delete(self, execution_id: UUID, kind: Kind) -> bool:
        cursor = self._db.execute(
            "DELETE FROM deadlines WHERE execution_id = ? AND kind = ?",
            (str(execution_id), kind),
        )
        return cursor.rowcount > 0

    def postpone(self, execution_id: UUID, until: datetime, kind: Kind = "execution") -> int:
        """Not fired this time: try again at `until`. Returns the attempts so far."""
        with self._lock:
            row = self._db.execute(
                "UPDATE deadlines SET next_attempt = ?, attempts = attempts + 1"
                " WHERE execution_id = ? AND kind = ? RETURNING attempts",
                (_to_seconds(until), str(execution_id), kind),
            ).fetchone()
        return int(row[0]) if row else 0

    def due(self, now: datetime, limit: int) -> list[Deadline]:
        """Rows whose next attempt is due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT execution_id, due_at, attempts, kind FROM deadlines"
                " WHERE next_attempt <= ? ORDER BY next_attempt LIMIT ?",
                (_to_seconds(now), limit),
            ).fetchall()
        return [_deadline(r) for r in rows]

    def get(self, execution_id: UUID, kind: Kind = "execution") -> Deadline | None:
        with self._lock:
            row = self._db.execute(
                "SELECT execution_id, due_at, attempts, kind FROM deadlines"
                " WHERE execution_id = ? AND kind = ?",
                (str(execution_id), kind),
            ).fetchone()
        return _deadline(row) if row else None

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM deadlines").fetchone()
        return int(n)

    def reset_backoff(self) -> None:
        """Forget earlier backoff: everything past its deadline is due again now."""
        with self._lock:
            self._db.execute(
                "UPDATE deadlines SET next_attempt = due_at, attempts = 0"
                " WHERE next_attempt != due_at"
            )


def _deadline(row: tuple[str, float, int, Kind]) -> Deadline:
    return Deadline(UUID(row[0]), _from_seconds(row[1]), int(row[2]), row[3])


class Deadlines:
    """The store for async code: every call runs in a worker thread."""

    def __init__(self, store: DeadlineStore) -> None:
        self.store = store

    async def upsert(self, execution_id: UUID, due_at: datetime, kind: Kind = "execution") -> None:
        await asyncio.to_thread(self.store.upsert, execution_id, due_at, kind)

    async def delete(self, execution_id: UUID, kind: Kind = "execution") -> bool:
        return await asyncio.to_thread(self.store.delete, execution_id, kind)

    async def apply(self, changes: Sequence[Change]) -> None:
        await asyncio.to_thread(self.store.apply, changes)

    async def postpone(self, execution_id: UUID, until: datetime, kind: Kind = "execution") -> int:
        return await asyncio.to_thread(self.store.postpone, execution_id, until, kind)

    async def due(self, now: datetime, limit: int) -> list[Deadline]:
        return await asyncio.to_thread(self.store.due, now, limit)

    async def get(self, execution_id: UUID, kind: Kind = "execution") -> Deadline | None:
        return await asyncio.to_thread(self.store.get, execution_id, kind)

    async def count(self) -> int:
        return await asyncio.to_thread(self.store.count)

    async def reset_backoff(self) -> None:
        await asyncio.to_thread(self.store.reset_backoff)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
