"""The change feed (`execution_changes`): what happened to executions, in position order.

A position is the event's notification id in the event store: every api replica reads the
same rows in the same order, and the projection commits them in that order (each batch in
one transaction, above every position before it), so "the rows after position p" read at
any time never miss one that commits later: a reader that resumes after the last position
it saw gets every later change once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from baton_platform.sql import Connection, Row

# The most rows one read returns: a subscriber holds at most this many at once.
CHANGES_PAGE = 100
# The most rows one pruning transaction deletes (the projection waits for it meanwhile).
PRUNE_PAGE = 1000
# `projection_position`'s row for the feed's floor: the last position pruned (0: none).
FLOOR_NAME = "change-feed-floor"


@dataclass(frozen=True)
class ChangeFilter:
    """Which changes: one tenant's (None: every tenant's, for the webhook deliveries), and
    optionally one execution's, one device's, one command name's, some statuses."""

    tenant: str | None
    execution_id: UUID | None = None
    device_id: str | None = None
    name: str | None = None
    statuses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Change:
    position: int
    tenant: str
    execution_id: UUID
    device_id: str
    name: str
    status: str
    kind: str  # the lifecycle event's type: Requested, Dispatched, Published, Succeeded...
    seq: int  # the event's number in its execution's stream, from 1
    at: str  # when it happened (the event's time, ISO-8601 UTC)


def changes_after(
    conn: Connection, where: ChangeFilter, after: int, limit: int = CHANGES_PAGE
) -> list[Change]:
    """Up to `limit` changes matching `where` with a position above `after`, oldest first.

    One execution's changes are read through their own index; a tenant's feed through the
    tenant's, from `after` on, with the other filters checked on the rows: a filter that
    matches little reads past what it skips (a client resuming far back pays for that)."""
    clauses = ["position > ?"]
    params: list[Any] = [after]
    if where.tenant is not None:
        clauses.append("tenant = ?")
        params.append(where.tenant)
    if where.execution_id is not None:
        clauses.append("execution_id = ?")
        params.append(str(where.execution_id))
    if where.device_id is not None:
        clauses.append("device_id = ?")
        params.append(where.device_id)
    if where.name is not None:
        clauses.append("name = ?")
        params.append(where.name)
    if where.statuses:
        statuses = sorted(where.statuses)
        clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params.extend(statuses)
    rows = conn.execute(
        "SELECT position, tenant, execution_id, device_id, name, status, kind, seq, at"
        f" FROM execution_changes WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [_change(row) for row in rows]


def prune_changes(conn: Connection, before: str, limit: int = PRUNE_PAGE) -> int:
    """Delete the oldest changes, up to `limit`, in position order while they happened
    before `before` (canonical UTC text), and raise the floor to the last one deleted;
    returns how many. Oldest first through the primary key: a sweep reads what it deletes
    and one row more, however long the feed."""
    rows = conn.execute(
        "SELECT position, at FROM execution_changes ORDER BY position LIMIT ?", (limit,)
    ).fetchall()
    # Positions in order, times nearly so (dispatchers' clocks): stop at the first newer one.
    count = next((n for n, row in enumerate(rows) if row["at"] >= before), len(rows))
    if not count:
        return 0
    upto = int(rows[count - 1]["position"])
    conn.execute("DELETE FROM execution_changes WHERE position <= ?", (upto,))
    conn.execute(
        "INSERT INTO projection_position (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (FLOOR_NAME, upto),
    )
    return count


def change_floor(conn: Connection) -> int:
    """The last position pruned from the feed: a reader resuming below it may have missed
    changes (0: nothing pruned)."""
    row = conn.execute(
        "SELECT position FROM projection_position WHERE name = ?", (FLOOR_NAME,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _change(row: Row) -> Change:
    return Change(
        position=int(row["position"]),
        tenant=row["tenant"],
        execution_id=UUID(row["execution_id"]),
        device_id=row["device_id"],
        name=row["name"],
        status=row["status"],
        kind=row["kind"],
        seq=int(row["seq"]),
        at=row["at"],
    )
