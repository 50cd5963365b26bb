"""`ExecutionViews`: the views database as one object (project, position, queries).

Synchronous, like sqlite3 and psycopg: async callers use a worker thread. Writes and reads
go through separate connections, so a projection waiting on the write lock (a `baton
replay` running in another process) never holds up a query; readers see the last commit
(SQLite in WAL mode, PostgreSQL always).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from baton_contracts.nats import LifecycleEvent
from baton_domain.statuses import ExecutionStatus
from baton_platform.sql import Connection, Database
from baton_views.changes import (
    PRUNE_PAGE,
    Change,
    ChangeFilter,
    change_floor,
    changes_after,
    prune_changes,
)
from baton_views.counts import count, unfinished_by_device
from baton_views.projection import project
from baton_views.queries import (
    DEFAULT_LIMIT,
    ExecutionFilter,
    ExecutionPage,
    ExecutionView,
    Order,
    get_execution,
    ids_created_before,
    list_executions,
)
from baton_views.store import (
    canonical_time,
    connect,
    create_schema,
    read_position,
    transaction,
)

T = TypeVar("T")


class ExecutionViews:
    def __init__(self, where: Path | Database) -> None:
        self.database = where if isinstance(where, Database) else Database(path=where)
        # The SQLite file (None on PostgreSQL).
        self.path = self.database.path
        self._writer = connect(self.database)
        create_schema(self._writer)
        self._reader = connect(self.database)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def close(self) -> None:
        # Under both locks: closing a connection another thread is using crashes sqlite3.
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()

    # --- projection ---------------------------------------------------------------------

    def apply(self, events: Iterable[LifecycleEvent], ended: set[UUID] | None = None) -> int:
        """Apply events and store the new position in one transaction; returns the position.

        Safe to call with events seen before: those at or below the position are skipped.
        `ended` receives the ids of the executions the events ended (see `project`).
        """
        with self._write_lock, transaction(self._writer) as conn:
            _, position = project(conn, events, ended)
        return position

    def position(self) -> int:
        return self._read(read_position)

    def prune_changes(self, before: datetime, limit: int = PRUNE_PAGE) -> int:
        """Delete up to `limit` of the change feed's oldest rows older than `before` (one
        transaction); returns how many: call again while it returns `limit`."""
        cutoff = canonical_time(before)
        with self._write_lock, transaction(self._writer) as conn:
            return prune_changes(conn, cutoff, limit)

    def change_floor(self) -> int:
        """The last position pruned from the change feed (0: none)."""
        return self._read(change_floor)

    # --- queries ------------------------------------------------------------------------

    def get(
        self, execution_id: UUID, with_log: bool = False, tenant: str | None = None
    ) -> ExecutionView | None:
        """The execution; None if there is none or (given a `tenant`) it is another
        tenant's: the same answer, so the caller cannot tell them apart."""
        return self._read(lambda conn: get_execution(conn, execution_id, with_log, tenant))

    def list(
        self,
        where: ExecutionFilter | None = None,
        order: Order = "newest",
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        offset: int = 0,
    ) -> ExecutionPage:
        return self._read(
            lambda conn: list_executions(
                conn, where or ExecutionFilter(), order, limit, cursor, offset
            )
        )

    def changes(self, where: ChangeFilter, after: int, limit: int) -> builtins.list[Change]:
        """Up to `limit` changes matching `where` after position `after`, oldest first."""
        return self._read(lambda conn: changes_after(conn, where, after, limit))

    def pending(self, tenant: str) -> int:
        """How many of `tenant`'s executions are PENDING: one lookup of the counters."""
        statuses = [ExecutionStatus.PENDING]
        return self._read(lambda conn: count(conn, tenant, None, None, statuses, (0, 1)))

    def unfinished_by_device(self) -> builtins.list[tuple[str, str, int]]:
        """(device id, status, how many) of the executions not yet ended, every tenant's."""
        return self._read(unfinished_by_device)

    def ids_created_before(
        self,
        cutoff: datetime,
        limit: int,
        ephemeral_only: bool = False,
        tenant: str | None = None,
    ) -> builtins.list[UUID]:
        """Up to `limit` ids created before `cutoff`: `tenant`'s, or (None) every tenant's."""
        return self._read(
            lambda conn: ids_created_before(conn, cutoff, limit, ephemeral_only, tenant)
        )

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self._read_lock:
            return query(self._reader)
