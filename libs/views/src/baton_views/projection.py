"""The projection: lifecycle events -> rows of `executions` and `execution_log`, and the
counters of `execution_counts`.

Each handler mirrors the aggregate's event method of the same name (baton_domain.execution),
so a row always says what `CommandExecution` would say after the same events, and returns
where the row is counted afterwards. Only event data goes into rows (never the clock of the
process projecting), which is what makes a rebuild byte-identical to the live projection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from baton_contracts.nats import LifecycleEvent
from baton_domain.execution import (
    cancel_error,
    expiry_error,
    timeout_error,
    verification_state,
)
from baton_domain.statuses import ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_platform.sql import VALUES_CHUNK, Connection
from baton_views.counts import CountChanges, Counted
from baton_views.store import (
    canonical_json,
    canonical_time,
    read_position,
    write_position,
)

log = logging.getLogger(__name__)

# Gets where the row is counted before the event, returns where after (None: deleted).
Handler = Callable[[Connection, LifecycleEvent, Counted], Counted | None]


def project(
    conn: Connection,
    events: Iterable[LifecycleEvent],
    ended: set[UUID] | None = None,
) -> tuple[int, int]:
    """Apply the events above the stored position, inside the caller's transaction.

    Returns (events applied, new position). Events at or below the position were applied
    before (at-least-once delivery, overlapping reads) and are skipped. `ended`, when given,
    receives the ids of the executions these events ended or deleted, so whoever waits on
    them is woken without reading the rows again. The counters move once for the batch,
    where each row is counted is read once for the batch, and the change feed's rows are
    written together: a batch costs a few statements more than its row updates.
    """
    start = read_position(conn)
    ordered = sorted(events, key=lambda e: e.notification_id)
    fresh = [e for e in ordered if e.notification_id > start]
    if not fresh:
        return 0, start
    batch = _Batch(conn, fresh)
    applied = 0
    for event in fresh:
        if event.type in NOT_EXECUTIONS:
            continue  # the device queues' and the catalog's own streams: no view of them
        batch.apply(event)
        applied += 1
        if ended is not None and event.type in ENDING_TYPES:
            ended.add(event.execution_id)
    batch.finish()
    position = fresh[-1].notification_id
    write_position(conn, position)
    return applied, position


class _Batch:
    """One batch's state: where each execution it touches is counted (read once, then
    kept as the handlers move it), the counters' changes, and the change feed's rows not
    yet written."""

    def __init__(self, conn: Connection, events: list[LifecycleEvent]) -> None:
        self.conn = conn
        self.counts = CountChanges()
        self._changes: list[tuple[Any, ...]] = []
        ids = sorted(
            {str(e.execution_id) for e in events if e.type in _HANDLERS},
        )
        self._counted: dict[str, Counted | None] = dict.fromkeys(ids)
        for at in range(0, len(ids), VALUES_CHUNK):
            chunk = ids[at : at + VALUES_CHUNK]
            rows = conn.execute(
                "SELECT id, tenant, device_id, name, status, ephemeral FROM executions"
                f" WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                self._counted[row[0]] = Counted(*tuple(row)[1:])

    def apply(self, event: LifecycleEvent) -> None:
        key = str(event.execution_id)
        if event.type == "Requested":
            after = _requested(self.conn, event)
            self.counts.moved(None, after)
            self._counted[key] = after
            self._changed(event, after)
            return
        handler = _HANDLERS.get(event.type)
        if handler is None:
            # A newer writer may know more event types; skipping keeps the view moving and
            # the position still advances, exactly as a rebuild by this version would do.
            log.warning("no projection for event type %s (%s)", event.type, event.notification_id)
            return
        before = self._counted.get(key)
        if before is None:
            log.warning("%s for unknown execution %s", event.type, event.execution_id)
            return
        moved = handler(self.conn, event, before)
        self.counts.moved(before, moved)
        self._counted[key] = moved
        if moved is None:
            # Deleted: its changes go with its rows (what a deletion is for), and a rebuild,
            # which sees the deletion too, keeps none of them either.
            self._write_changes()
            self.conn.execute("DELETE FROM execution_changes WHERE execution_id = ?", (key,))
        else:
            self._changed(event, moved)

    def finish(self) -> None:
        self._write_changes()
        self.counts.write(self.conn)

    def _changed(self, event: LifecycleEvent, after: Counted) -> None:
        """The event's row of the change feed: what the execution is after it, at the
        event's notification id (its position; the same on every rebuild)."""
        self._changes.append(
            (
                event.notification_id,
                after.tenant,
                str(event.execution_id),
                after.device_id,
                after.name,
                after.status,
                event.type,
                event.version,
                canonical_time(event.occurred_at),
            )
        )

    def _write_changes(self) -> None:
        if self._changes:
            self.conn.execute_values(
                "INSERT INTO execution_changes (position, tenant, execution_id, device_id,"
                " name, status, kind, seq, at) VALUES {values}",
                self._changes,
            )
            self._changes = []


# --- handlers, one per event type ---------------------------------------------------------


def _requested(conn: Connection, event: LifecycleEvent) -> Counted:
    data = event.data
    occurred = canonical_time(event.occurred_at)
    ephemeral = int(bool(data.get("ephemeral", False)))
    # Stored before tenants existed: without one (or with the default's name).
    tenant = data.get("tenant") or DEFAULT_TENANT
    conn.execute(
        "INSERT INTO executions (id, tenant, device_id, name, params, status, created_at,"
        " updated_at, ttl, deadline, result, error, requested_name, ephemeral, retry_of,"
        " retries, outcome, requested_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, '[]', '', ?)",
        (
            str(event.execution_id),
            tenant,
            data["device_id"],
            data["name"],
            canonical_json(data["params"]),
            ExecutionStatus.PENDING.value,
            occurred,
            occurred,
            int(data["ttl"]),
            canonical_time(data["deadline"]),
            data.get("requested_name") or data["name"],
            ephemeral,
            data.get("retry_of"),
            data.get("requested_by"),
        ),
    )
    pending = ExecutionStatus.PENDING.value
    return Counted(tenant, data["device_id"], data["name"], pending, ephemeral)


def _touched(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    """Dispatched (and anything else that changes no field) only moves updated_at."""
    return _update(conn, event, before)


def _published(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    # Recorded whenever the bridge's report comes (docs/statuses.md): after an answer it
    # cannot come (an answer implies it first), but after a cancel or an expiry it can, and
    # then it moves no status.
    pending = before.status == ExecutionStatus.PENDING.value
    return _update(conn, event, before, status=ExecutionStatus.SENT if pending else None)


def _answered(status: ExecutionStatus | None, outcome: str | None = None) -> Handler:
    """Handlers for the answer events: log the answer, maybe move status, maybe keep
    the payload as `result` or `error` (outcome names the column)."""

    def handle(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
        answer = event.data["answer"]
        _append_log(conn, event, answer)
        fields: dict[str, Any] = {}
        if outcome is not None:
            fields[outcome] = answer["payload"]
        return _update(conn, event, before, status=status, **fields)

    return handle


def _timed_out(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    error = timeout_error(_ttl(conn, event))
    return _update(conn, event, before, status=ExecutionStatus.TIMED_OUT, error=error)


def _expired(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    error = expiry_error(_ttl(conn, event))
    return _update(conn, event, before, status=ExecutionStatus.EXPIRED, error=error)


def _canceled(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    error = cancel_error(event.data["reason"])
    return _update(conn, event, before, status=ExecutionStatus.CANCELED, error=error)


def _verification(status: str) -> Handler:
    """VerificationRequired / Verified / VerificationFailed / VerificationCanceled."""

    def handle(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
        data = event.data
        state = verification_state(
            status, data.get("at"), data.get("title"), data.get("description")
        )
        conn.execute(
            "UPDATE executions SET verification = ?, updated_at = ? WHERE id = ?",
            (canonical_json(state), canonical_time(event.occurred_at), str(event.execution_id)),
        )
        return before

    return handle


def _retried(conn: Connection, event: LifecycleEvent, before: Counted) -> Counted:
    # Appended here rather than by the database's JSON functions (SQLite's and PostgreSQL's
    # differ, and so does their text): the list is written through canonical_json.
    row = conn.execute(
        "SELECT retries FROM executions WHERE id = ?", (str(event.execution_id),)
    ).fetchone()
    retries = [*json.loads(row["retries"]), str(event.data["retry_id"])]
    conn.execute(
        "UPDATE executions SET retries = ?, updated_at = ? WHERE id = ?",
        (canonical_json(retries), canonical_time(event.occurred_at), str(event.execution_id)),
    )
    return before


def _deleted(conn: Connection, event: LifecycleEvent, before: Counted) -> None:
    """The row and its log go: counted nowhere after."""
    conn.execute("DELETE FROM execution_log WHERE execution_id = ?", (str(event.execution_id),))
    conn.execute("DELETE FROM executions WHERE id = ?", (str(event.execution_id),))


_HANDLERS: dict[str, Handler] = {
    "Dispatched": _touched,
    "Published": _published,
    "Acknowledged": _answered(ExecutionStatus.ACKNOWLEDGED),
    "Progressed": _answered(ExecutionStatus.IN_PROGRESS),
    "Succeeded": _answered(ExecutionStatus.SUCCEEDED, "result"),
    "Failed": _answered(ExecutionStatus.FAILED, "error"),
    "Rejected": _answered(ExecutionStatus.REJECTED, "error"),
    "AnswerRecorded": _answered(None),
    "TimedOut": _timed_out,
    "Expired": _expired,
    "Canceled": _canceled,
    "Retried": _retried,
    "VerificationRequired": _verification("PENDING"),
    "Verified": _verification("SUCCEEDED"),
    "VerificationFailed": _verification("FAILED"),
    "VerificationCanceled": _verification("CANCELED"),
    "Deleted": _deleted,
}

PROJECTED_TYPES = frozenset({"Requested", *_HANDLERS})
# Each sets a terminal status (or removes the row): after one, a waiter has its answer.
ENDING_TYPES = frozenset(
    {"Succeeded", "Failed", "Rejected", "TimedOut", "Expired", "Canceled", "Deleted"}
)
# The DeviceQueue's events share the notification log (docs/architecture.md).
DEVICE_QUEUE_TYPES = frozenset(
    {"Opened", "Admitted", "Released", "Finished", "PresenceChanged", "VerificationDone"}
)
CATALOG_TYPES = frozenset(
    {"Started", "Imported", "DeviceTypePut", "DeviceTypeRemoved", "DevicePut", "DeviceRemoved"}
)
NOT_EXECUTIONS = DEVICE_QUEUE_TYPES | CATALOG_TYPES


# --- row writes ---------------------------------------------------------------------------


def _update(
    conn: Connection,
    event: LifecycleEvent,
    before: Counted,
    status: ExecutionStatus | None = None,
    result: Any = None,
    error: Any = None,
) -> Counted:
    """Set the fields given (and updated_at); returns where the row is counted after."""
    assignments = ["updated_at = ?"]
    values: list[Any] = [canonical_time(event.occurred_at)]
    if status is not None:
        assignments.append("status = ?")
        values.append(status.value)
    if status is not None and status.is_terminal:
        assignments.append("outcome = ?")
        values.append(status.value)
    if result is not None:
        assignments.append("result = ?")
        values.append(canonical_json(result))
    if error is not None:
        assignments.append("error = ?")
        values.append(canonical_json(error))
    conn.execute(
        f"UPDATE executions SET {', '.join(assignments)} WHERE id = ?",
        (*values, str(event.execution_id)),
    )
    return before if status is None else before._replace(status=status.value)


def _append_log(conn: Connection, event: LifecycleEvent, answer: dict[str, Any]) -> None:
    # seq follows the event order of the stream, so it is the same on every rebuild.
    conn.execute(
        "INSERT INTO execution_log (execution_id, seq, received_at, status, payload) "
        "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM execution_log WHERE execution_id = ?",
        (
            str(event.execution_id),
            canonical_time(answer["received_at"]),
            answer["status"],
            canonical_json(answer["payload"]),
            str(event.execution_id),
        ),
    )


def _ttl(conn: Connection, event: LifecycleEvent) -> int:
    row = conn.execute(
        "SELECT ttl FROM executions WHERE id = ?", (str(event.execution_id),)
    ).fetchone()
    return int(row["ttl"])
