"""Read side: one execution, or a filtered, keyset-paginated list of them.

Pages are cut on (created_at, id), which is unique and fixed once written, so a cursor
stays valid while new executions arrive: no row is skipped or shown twice.

Every list is one tenant's, and a lookup given a tenant answers for another tenant's
execution exactly as for a missing one (None).

No cost here grows with the number of executions stored (docs/architecture.md, "Costs
that stay flat"). Each page is read from the index whose leading columns are exactly the
tenant and the filter's (store.py makes one per combination), so it reads only the rows
it returns, never another tenant's (and, for a status that has not ended, the other rows
in flight); a filter on several statuses, or with ephemeral executions, reads one such
range per (outcome, ephemeral) and merges them. `total_count` comes from the tenant's
counters (counts.py); a filter on creation time is counted on the index, up to
COUNT_LIMIT rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import product
from typing import Any, Literal
from uuid import UUID

from baton_domain.statuses import ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_platform.sql import Connection, Row
from baton_views.counts import count, tenants
from baton_views.store import (
    FILTER_COLUMNS,
    TENANT_COLUMN,
    canonical_time,
    index_name,
    snapshot,
)

Order = Literal["newest", "oldest"]
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# A list filtered on creation time counts its rows one by one; past this many it stops
# and says total_count is a lower bound (docs/api.md).
COUNT_LIMIT = 10_000


class InvalidQueryError(ValueError):
    """A list query the views cannot answer (bad cursor, limit out of range); names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class LogEntry:
    received_at: datetime
    status: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ExecutionView:
    id: UUID
    device_id: str
    name: str
    params: dict[str, Any]
    status: ExecutionStatus
    created_at: datetime
    updated_at: datetime
    ttl: int
    deadline: datetime
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    requested_name: str = ""  # the name or alias the request used
    requested_by: str | None = None  # who asked (None: stored before it was recorded)
    ephemeral: bool = False
    retry_of: UUID | None = None
    retries: list[UUID] = field(default_factory=list)
    verification: dict[str, Any] | None = None  # see ExecutionState.verification
    log: list[LogEntry] | None = None  # only when asked for
    tenant: str = DEFAULT_TENANT  # whose execution it is

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True)
class ExecutionFilter:
    statuses: frozenset[ExecutionStatus] = frozenset()
    name: str | None = None
    device_id: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    include_ephemeral: bool = False  # ephemeral executions are left out unless asked for
    tenant: str = DEFAULT_TENANT  # a list is always one tenant's: the caller's


@dataclass(frozen=True)
class ExecutionPage:
    items: list[ExecutionView] = field(default_factory=list)
    total_count: int = 0
    next_cursor: str | None = None
    total_count_exact: bool = True  # False: at least total_count (COUNT_LIMIT) rows match


@dataclass(frozen=True)
class _Arm:
    """One index range: the rows with one value of every equality-filtered column."""

    index: str
    clauses: list[str]
    values: list[Any]


def get_execution(
    conn: Connection,
    execution_id: UUID,
    with_log: bool = False,
    tenant: str | None = None,
) -> ExecutionView | None:
    """The execution, or None when there is none: none at all, or (given a `tenant`) none
    of that tenant's. None is the same answer either way, so a caller cannot tell another
    tenant's execution from a missing one."""
    sql, values = "SELECT * FROM executions WHERE id = ?", [str(execution_id)]
    if tenant is not None:
        sql, values = f"{sql} AND tenant = ?", [*values, tenant]
    row = conn.execute(sql, values).fetchone()
    if row is None:
        return None
    log = _log_of(conn, execution_id) if with_log else None
    return _view(row, log)


def list_executions(
    conn: Connection,
    where: ExecutionFilter,
    order: Order = "newest",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    offset: int = 0,
) -> ExecutionPage:
    """A page of executions: after `cursor` (keyset) or, without one, after `offset` rows.

    An offset costs reading the rows it skips (cursors cost nothing); one past the end
    reads none.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError("limit", f"must be between 1 and {MAX_LIMIT}")
    if offset < 0 or (offset and cursor is not None):
        raise InvalidQueryError("offset", "must be 0 or more, and not given with a cursor")
    key = decode_cursor(cursor, order) if cursor is not None else None
    arms = _arms(where, _ephemerals(where), order, key)
    with snapshot(conn):
        total, exact = _total(conn, where)
        if exact and offset >= total:  # past the end: nothing to read
            return ExecutionPage([], total, None, exact)
        rows = _read_arms(conn, arms, order, limit + 1, offset)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"], order) if more else None
    return ExecutionPage([_view(r) for r in rows], total, next_cursor, exact)


def _arms(
    where: ExecutionFilter,
    ephemerals: tuple[int, ...],
    order: Order = "newest",
    cursor: tuple[str, str] | None = None,
) -> list[_Arm]:
    """The index ranges that together hold the rows `where` selects (after the `cursor`
    row in `order`): one per combination of its outcomes and `ephemerals`, each on the
    index led by the tenant and the filtered columns. The statuses that have not ended
    share the outcome '' and are told apart by `status`."""
    ended = sorted(s.value for s in where.statuses if s.is_terminal)
    running = sorted(s.value for s in where.statuses if not s.is_terminal)
    outcomes: list[str | None] = [*ended, *([""] if running else [])] or [None]
    time_clauses, time_values = _bounds(where, order, cursor)
    arms = []
    for outcome, ephemeral in product(outcomes, ephemerals):
        fixed = {"device_id": where.device_id, "name": where.name, "outcome": outcome}
        columns = tuple(c for c in FILTER_COLUMNS if fixed[c] is not None)
        equal = (TENANT_COLUMN, *columns, "ephemeral")
        clauses = [f"{c} = ?" for c in equal] + time_clauses
        values = [where.tenant, *(fixed[c] for c in columns), ephemeral, *time_values]
        if outcome == "":
            clauses.append(f"status IN ({', '.join('?' * len(running))})")
            values += running
        arms.append(_Arm(index_name(columns), clauses, values))
    return arms


def _read_arms(
    conn: Connection,
    arms: list[_Arm],
    order: Order,
    limit: int,
    offset: int = 0,
    columns: str = "*",
) -> Sequence[Row]:
    """Up to `limit` rows of `arms` in `order`, after `offset`: each arm reads at most
    offset + limit rows of its index, in order, and SQLite merges them."""
    direction = "DESC" if order == "newest" else "ASC"
    by = f"ORDER BY created_at {direction}, id {direction}"
    selects = [
        f"SELECT {columns} FROM executions{_indexed_by(conn, arm)}"
        f" WHERE {' AND '.join(arm.clauses)} {by}"
        for arm in arms
    ]
    if len(selects) == 1:
        sql, values = f"{selects[0]} LIMIT ? OFFSET ?", [*arms[0].values, limit, offset]
    else:
        sql = " UNION ALL ".join(
            f"SELECT * FROM ({s} LIMIT ?) AS arm{i}" for i, s in enumerate(selects)
        )
        sql += f" {by} LIMIT ? OFFSET ?"
        values = [v for arm in arms for v in (*arm.values, offset + limit)] + [limit, offset]
    return conn.execute(sql, values).fetchall()


def _total(conn: Connection, where: ExecutionFilter) -> tuple[int, bool]:
    """(total_count, whether it is exact): the counters, or for a filter on creation
    time the matching index entries up to COUNT_LIMIT."""
    ephemerals = _ephemerals(where)
    if where.created_after is None and where.created_before is None:
        found = count(conn, where.tenant, where.device_id, where.name, where.statuses, ephemerals)
        return found, True
    found = 0
    for arm in _arms(where, ephemerals):
        found += conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM executions{_indexed_by(conn, arm)}"
            f" WHERE {' AND '.join(arm.clauses)} LIMIT ?) AS counted",
            [*arm.values, COUNT_LIMIT + 1 - found],
        ).fetchone()[0]
        if found > COUNT_LIMIT:
            return COUNT_LIMIT, False
    return found, True


def _indexed_by(conn: Connection, arm: _Arm) -> str:
    """SQLite is told the arm's index. PostgreSQL has no such clause: its planner finds
    the same index, whose leading columns are exactly the arm's equalities followed by its
    order (tests/unit/test_views_costs.py checks both)."""
    return f" INDEXED BY {arm.index}" if conn.dialect == "sqlite" else ""


# --- cursors ------------------------------------------------------------------------------


def encode_cursor(created_at: str, execution_id: str, order: Order) -> str:
    raw = json.dumps([order, created_at, execution_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> tuple[str, str]:
    """(created_at, id) of the previous page's last row; InvalidQueryError if not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_order, created_at, execution_id = json.loads(raw)
        created_at = canonical_time(created_at)
        execution_id = str(UUID(execution_id))
    except (binascii.Error, ValueError, TypeError, AttributeError) as exc:
        raise InvalidQueryError("cursor", "not a cursor returned by this API") from exc
    if cursor_order != order:
        raise InvalidQueryError("cursor", f"was issued for order={cursor_order}, not order={order}")
    return created_at, execution_id


# --- plumbing -----------------------------------------------------------------------------


def ids_created_before(
    conn: Connection,
    cutoff: datetime,
    limit: int,
    ephemeral_only: bool = False,
    tenant: str | None = None,
) -> list[UUID]:
    """Up to `limit` executions created before `cutoff` (for purging): `tenant`'s, oldest
    first, or (None: the retention sweep) every tenant's, tenant after tenant, each one's
    oldest first. Every index leads with the tenant, so the sweep reads each tenant's
    ranges in turn: a tenant with nothing that old costs one search per range."""
    ephemerals = (1,) if ephemeral_only else (0, 1)
    ids: list[UUID] = []
    for each in tenants(conn) if tenant is None else [tenant]:
        arms = _arms(ExecutionFilter(created_before=cutoff, tenant=each), ephemerals)
        rows = _read_arms(conn, arms, "oldest", limit - len(ids), columns="id, created_at")
        ids += [UUID(row["id"]) for row in rows]
        if len(ids) >= limit:
            break
    return ids


def _ephemerals(where: ExecutionFilter) -> tuple[int, ...]:
    return (0, 1) if where.include_ephemeral else (0,)


def _bounds(
    where: ExecutionFilter, order: Order, cursor: tuple[str, str] | None
) -> tuple[list[str], list[Any]]:
    """The time filters and the cursor as at most one lower and one upper bound, each of
    which SQLite ranges the index on. Two on one side would leave it to range on one and
    filter on the other: `created_at < ?` next to a cursor read every row of the earlier
    pages again. So the cursor absorbs the time filter on its side: ids are never empty,
    so `created_at < t` is `(created_at, id) < (t, '')` (and `>=` is `>`). A bound
    without a cursor stays a plain comparison, which SQLite checks faster per row."""
    after = canonical_time(where.created_after) if where.created_after is not None else None
    before = canonical_time(where.created_before) if where.created_before is not None else None
    clauses: list[str] = []
    values: list[Any] = []
    if cursor is not None and order == "oldest":
        clauses.append("(created_at, id) > (?, ?)")
        values += max((after, ""), cursor) if after is not None else cursor
    elif after is not None:
        clauses.append("created_at >= ?")
        values.append(after)
    if cursor is not None and order == "newest":
        clauses.append("(created_at, id) < (?, ?)")
        values += min((before, ""), cursor) if before is not None else cursor
    elif before is not None:
        clauses.append("created_at < ?")
        values.append(before)
    return clauses, values


def _view(row: Row, log: list[LogEntry] | None = None) -> ExecutionView:
    return ExecutionView(
        id=UUID(row["id"]),
        device_id=row["device_id"],
        name=row["name"],
        params=json.loads(row["params"]),
        status=ExecutionStatus(row["status"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        ttl=row["ttl"],
        deadline=datetime.fromisoformat(row["deadline"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=json.loads(row["error"]) if row["error"] is not None else None,
        requested_name=row["requested_name"],
        requested_by=row["requested_by"],
        ephemeral=bool(row["ephemeral"]),
        retry_of=UUID(row["retry_of"]) if row["retry_of"] else None,
        retries=[UUID(i) for i in json.loads(row["retries"])],
        verification=json.loads(row["verification"]) if row["verification"] else None,
        log=log,
        tenant=row["tenant"],
    )


def _log_of(conn: Connection, execution_id: UUID) -> list[LogEntry]:
    rows = conn.execute(
        "SELECT received_at, status, payload FROM execution_log "
        "WHERE execution_id = ? ORDER BY seq",
        (str(execution_id),),
    ).fetchall()
    return [
        LogEntry(datetime.fromisoformat(r["received_at"]), r["status"], json.loads(r["payload"]))
        for r in rows
    ]
