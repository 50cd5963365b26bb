"""Read side: one execution, or a filtered, keyset-paginated list of them.

Pages are cut on (created_at, id), which is unique and fixed once written, so a cursor
stays valid while new executions arrive: no row is skipped or shown twice.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from baton_domain.statuses import ExecutionStatus
from baton_views.store import canonical_time

Order = Literal["newest", "oldest"]
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


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
    ephemeral: bool = False
    retry_of: UUID | None = None
    retries: list[UUID] = field(default_factory=list)
    verification: dict[str, Any] | None = None  # see ExecutionState.verification
    log: list[LogEntry] | None = None  # only when asked for

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


@dataclass(frozen=True)
class ExecutionPage:
    items: list[ExecutionView] = field(default_factory=list)
    total_count: int = 0
    next_cursor: str | None = None


def get_execution(
    conn: sqlite3.Connection, execution_id: UUID, with_log: bool = False
) -> ExecutionView | None:
    row = conn.execute("SELECT * FROM executions WHERE id = ?", (str(execution_id),)).fetchone()
    if row is None:
        return None
    log = _log_of(conn, execution_id) if with_log else None
    return _view(row, log)


def list_executions(
    conn: sqlite3.Connection,
    where: ExecutionFilter,
    order: Order = "newest",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    offset: int = 0,
) -> ExecutionPage:
    """A page of executions: after `cursor` (keyset) or, without one, after `offset` rows."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError("limit", f"must be between 1 and {MAX_LIMIT}")
    if offset < 0 or (offset and cursor is not None):
        raise InvalidQueryError("offset", "must be 0 or more, and not given with a cursor")
    clauses, values = _filter_sql(where)
    total = conn.execute(f"SELECT COUNT(*) FROM executions {_where(clauses)}", values).fetchone()[0]

    direction = "DESC" if order == "newest" else "ASC"
    page_clauses, page_values = list(clauses), list(values)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor, order)
        page_clauses.append(f"(created_at, id) {'<' if order == 'newest' else '>'} (?, ?)")
        page_values += [created_at, last_id]
    rows = conn.execute(
        f"SELECT * FROM executions {_where(page_clauses)} "
        f"ORDER BY created_at {direction}, id {direction} LIMIT ? OFFSET ?",
        [*page_values, limit + 1, offset],
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"], order) if more else None
    return ExecutionPage([_view(r) for r in rows], int(total), next_cursor)


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
    conn: sqlite3.Connection, cutoff: datetime, limit: int, ephemeral_only: bool = False
) -> list[UUID]:
    """Up to `limit` executions created before `cutoff`, oldest first (for purging)."""
    only = " AND ephemeral = 1" if ephemeral_only else ""
    rows = conn.execute(
        f"SELECT id FROM executions WHERE created_at < ?{only} ORDER BY created_at, id LIMIT ?",
        (canonical_time(cutoff), limit),
    ).fetchall()
    return [UUID(row["id"]) for row in rows]


def _filter_sql(where: ExecutionFilter) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    values: list[Any] = []
    if not where.include_ephemeral:
        clauses.append("ephemeral = 0")
    if where.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(where.statuses))})")
        values += sorted(s.value for s in where.statuses)
    if where.name is not None:
        clauses.append("name = ?")
        values.append(where.name)
    if where.device_id is not None:
        clauses.append("device_id = ?")
        values.append(where.device_id)
    if where.created_after is not None:
        clauses.append("created_at >= ?")
        values.append(canonical_time(where.created_after))
    if where.created_before is not None:
        clauses.append("created_at < ?")
        values.append(canonical_time(where.created_before))
    return clauses, values


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _view(row: sqlite3.Row, log: list[LogEntry] | None = None) -> ExecutionView:
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
        ephemeral=bool(row["ephemeral"]),
        retry_of=UUID(row["retry_of"]) if row["retry_of"] else None,
        retries=[UUID(i) for i in json.loads(row["retries"])],
        verification=json.loads(row["verification"]) if row["verification"] else None,
        log=log,
    )


def _log_of(conn: sqlite3.Connection, execution_id: UUID) -> list[LogEntry]:
    rows = conn.execute(
        "SELECT received_at, status, payload FROM execution_log "
        "WHERE execution_id = ? ORDER BY seq",
        (str(execution_id),),
    ).fetchall()
    return [
        LogEntry(datetime.fromisoformat(r["received_at"]), r["status"], json.loads(r["payload"]))
        for r in rows
    ]
