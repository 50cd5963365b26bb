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
from baton_platform.sql import Connection
from baton_views.counts import CountChanges, Counted
from baton_views.store import (
    canonical_json,
    canonical_time,
    read_position,
    write_position,
)

log = logging.getLogger(__name__)

# Gets where the row is counted before the event, returns where after (None: deleted).
Handler = Callable[["_Batch", LifecycleEvent, Counted], Counted | None]


def project(
    conn: Connection,
    events: Iterable[LifecycleEvent],
    ended: set[UUID] | None = None,
) -> tuple[int, int]:
    """Apply the events above the stored position, inside the caller's transaction.

    Returns (events applied, new position). Events at or below the position were applied
    before (at-least-once delivery, overlapping reads) and are skipped. `ended`, when given,
    receives the ids of the executions these events ended or deleted, so whoever waits on
    them is woken without reading the rows again. Where each row is counted is read once
    for the batch, each row is updated once, and the counters and the change feed are
    written together: a batch costs a few statements more than its rows' own writes.
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
    kept as the handlers move it), the counters' changes, and the change feed's rows and
    the executions' columns not yet written."""

    def __init__(self, conn: Connection, events: list[LifecycleEvent]) -> None:
        self.conn = conn
        self.counts = CountChanges()
        self._changes: list[tuple[Any, ...]] = []
        # The columns each execution's row gets at the end of the batch: every UPDATE of
        # the projection sets values, so the batch's last value of each column is what the
        # row would hold after the events one by one, in one statement per row.
        self._rows: dict[str, dict[str, Any]] = {}
        ids = sorted({str(e.execution_id) for e in events if e.type in _HANDLERS})
        self._counted: dict[str, Counted | None] = dict.fromkeys(ids)
        found = conn.execute_values(
            "SELECT id, tenant, device_id, name, status, ephemeral FROM executions"
            " WHERE id IN ({values})",
            [(execution_id,) for execution_id in ids],
        )
        for row in found:
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
        moved = handler(self, event, before)
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
        self._write_rows()
        self.counts.write(self.conn)

    def set(self, event: LifecycleEvent, **columns: Any) -> None:
        """The event's columns (and its time as `updated_at`) for its execution's row."""
        row = self._rows.setdefault(str(event.execution_id), {})
        row["updated_at"] = canonical_time(event.occurred_at)
        row.update(columns)

    def column(self, event: LifecycleEvent, name: str) -> Any:
        """A column of the event's execution as this batch leaves it so far."""
        pending = self._rows.get(str(event.execution_id), {})
        if name in pending:
            return pending[name]
        row = self.conn.execute(
            f"SELECT {name} FROM executions WHERE id = ?", (str(event.execution_id),)
        ).fetchone()
        return row[0]

    def forget(self, event: LifecycleEvent) -> None:
        """The execution's row is deleted: nothing of this batch is written to it."""
        self._rows.pop(str(event.execution_id), None)

    def _write_rows(self) -> None:
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for key, row in self._rows.items():
            names = tuple(sorted(row))
            by_columns.setdefault(names, []).append((*(row[n] for n in names), key))
        for names, values in by_columns.items():
            assignments = ", ".join(f"{name} = ?" for name in names)
            self.conn.executemany(f"UPDATE executions SET {assignments} WHERE id = ?", values)
        self._rows = {}

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


def _touched(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    """Dispatched (and anything else that changes no field) only moves updated_at."""
    return _update(rows, event, before)


def _published(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    # Recorded whenever the bridge's report comes (docs/statuses.md): after an answer it
    # cannot come (an answer implies it first), but after a cancel or an expiry it can, and
    # then it moves no status.
    pending = before.status == ExecutionStatus.PENDING.value
    return _update(rows, event, before, status=ExecutionStatus.SENT if pending else None)


def _answered(status: ExecutionStatus | None, outcome: str | None = None) -> Handler:
    """Handlers for the answer events: log the answer, maybe move status, maybe keep
    the payload as `result` or `error` (outcome names the column)."""

    def handle(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
        answer = event.data["answer"]
        _append_log(rows.conn, event, answer)
        fields: dict[str, Any] = {}
        if outcome is not None:
            fields[outcome] = answer["payload"]
        return _update(rows, event, before, status=status, **fields)

    return handle


def _timed_out(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    error = timeout_error(int(rows.column(event, "ttl")))
    return _update(rows, event, before, status=ExecutionStatus.TIMED_OUT, error=error)


def _expired(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    error = expiry_error(int(rows.column(event, "ttl")))
    return _update(rows, event, before, status=ExecutionStatus.EXPIRED, error=error)


def _canceled(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    error = cancel_error(event.data["reason"])
    return _update(rows, event, before, status=ExecutionStatus.CANCELED, error=error)


def _verification(status: str) -> Handler:
    """VerificationRequired / Verified / VerificationFailed / VerificationCanceled."""

    def handle(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
        data = event.data
        state = verification_state(
            status, data.get("at"), data.get("title"), data.get("description")
        )
        rows.set(event, verification=canonical_json(state))
        return before

    return handle


def _retried(rows: _Batch, event: LifecycleEvent, before: Counted) -> Counted:
    # Appended here rather than by the database's JSON functions (SQLite's and PostgreSQL's
    # differ, and so does their text): the list is written through canonical_json.
    retries = [*json.loads(rows.column(event, "retries")), str(event.data["retry_id"])]
    rows.set(event, retries=canonical_json(retries))
    return before


def _deleted(rows: _Batch, event: LifecycleEvent, before: Counted) -> None:
    """The row and its log go: counted nowhere after."""
    rows.forget(event)
    key = str(event.execution_id)
    rows.conn.execute("DELETE FROM execution_log WHERE execution_id = ?", (key,))
    rows.conn.execute("DELETE FROM executions WHERE id = ?", (key,))


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
    rows: _Batch,
    event: LifecycleEvent,
    before: Counted,
    status: ExecutionStatus | None = None,
    result: Any = None,
    error: Any = None,
) -> Counted:
    """Set the fields given (and updated_at); returns where the row is counted after."""
    columns: dict[str, Any] = {}
    if status is not None:
        columns["status"] = status.value
    if status is not None and status.is_terminal:
        columns["outcome"] = status.value
    if result is not None:
        columns["result"] = canonical_json(result)
    if error is not None:
        columns["error"] = canonical_json(error)
    rows.set(event, **columns)
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
