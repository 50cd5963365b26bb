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


class Deferred:
    """What a run of batches in one transaction writes only at its end: the counters and the
    position (`baton replay`'s rebuild). Each batch would otherwise update the same counter
    rows and the position row again, and PostgreSQL keeps every version a transaction
    writes until it ends, so every later read of those rows walks all of them: a rebuild
    of a million executions slowed to a crawl. Nothing reads them in between."""

    def __init__(self, position: int = 0) -> None:
        self.counts = CountChanges()
        self.position = position

    def write(self, conn: Connection) -> None:
        self.counts.write(conn)
        write_position(conn, self.position)


def project(
    conn: Connection,
    events: Iterable[LifecycleEvent],
    ended: set[UUID] | None = None,
    deferred: Deferred | None = None,
) -> tuple[int, int]:
    """Apply the events above the stored position, inside the caller's transaction.

    Returns (events applied, new position). Events at or below the position were applied
    before (at-least-once delivery, overlapping reads) and are skipped. `ended`, when given,
    receives the ids of the executions these events ended or deleted, so whoever waits on
    them is woken without reading the rows again. Where each row is counted is read once
    for the batch, each row is updated once, and the counters and the change feed are
    written together: a batch costs a few statements more than its rows' own writes.
    With `deferred`, the position is its own and the counters' changes and the new
    position go to it, for its `write` at the end of the transaction.
    """
    start = read_position(conn) if deferred is None else deferred.position
    ordered = sorted(events, key=lambda e: e.notification_id)
    fresh = [e for e in ordered if e.notification_id > start]
    if not fresh:
        return 0, start
    batch = _Batch(conn, fresh, CountChanges() if deferred is None else deferred.counts)
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
    if deferred is None:
        batch.counts.write(conn)
        write_position(conn, position)
    else:
        deferred.position = position
    return applied, position


class _Batch:
    """One batch's state: where each execution it touches is counted (read once, then
    kept as the handlers move it), the counters' changes (written by `project`), and what
    it writes at its end: the rows it creates, the columns it sets on rows it found, the
    answers' log and the change feed."""

    def __init__(
        self, conn: Connection, events: list[LifecycleEvent], counts: CountChanges
    ) -> None:
        self.conn = conn
        self.counts = counts
        self._changes: list[tuple[Any, ...]] = []
        # Rows created by this batch, whole, and the columns each row found gets: every
        # write of the projection sets values, so the batch's last value of each column is
        # what the row would hold after the events one by one. A command whose events all
        # fall in one batch is then one INSERT, and a row found one UPDATE.
        self._new: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, dict[str, Any]] = {}
        self._log: list[tuple[str, str, str, str]] = []
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
            self._new[key] = _requested(event)
            after = _counted_as(self._new[key])
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
        self._write_new()
        self._write_rows()
        self._write_log()

    def set(self, event: LifecycleEvent, **columns: Any) -> None:
        """The event's columns (and its time as `updated_at`) for its execution's row."""
        key = str(event.execution_id)
        row = self._new[key] if key in self._new else self._rows.setdefault(key, {})
        row["updated_at"] = canonical_time(event.occurred_at)
        row.update(columns)

    def column(self, event: LifecycleEvent, name: str) -> Any:
        """A column of the event's execution as this batch leaves it so far."""
        key = str(event.execution_id)
        pending = self._new.get(key) or self._rows.get(key, {})
        if name in pending:
            return pending[name]
        row = self.conn.execute(f"SELECT {name} FROM executions WHERE id = ?", (key,)).fetchone()
        return row[0]

    def append_log(self, event: LifecycleEvent, answer: dict[str, Any]) -> None:
        """The answer as the next entry of its execution's log."""
        self._log.append(
            (
                str(event.execution_id),
                canonical_time(answer["received_at"]),
                answer["status"],
                canonical_json(answer["payload"]),
            )
        )

    def forget(self, event: LifecycleEvent) -> None:
        """The execution's row is deleted: nothing of this batch is written to it."""
        key = str(event.execution_id)
        self._new.pop(key, None)
        self._rows.pop(key, None)
        self._log = [entry for entry in self._log if entry[0] != key]

    def _write_new(self) -> None:
        self.conn.execute_values(
            f"INSERT INTO executions ({', '.join(_COLUMNS)}) VALUES {{values}}",
            [tuple(row[name] for name in _COLUMNS) for row in self._new.values()],
        )
        self._new = {}

    def _write_rows(self) -> None:
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for key, row in self._rows.items():
            names = tuple(sorted(row))
            by_columns.setdefault(names, []).append((key, *(row[n] for n in names)))
        for names, values in by_columns.items():
            # Every column the projection sets on a row it found is TEXT: PostgreSQL types
            # a VALUES list's parameters as text. (SQLite names a VALUES list's columns
            # only through a common table expression.)
            assignments = ", ".join(f"{name} = v.{name}" for name in names)
            self.conn.execute_values(
                f"WITH v(id, {', '.join(names)}) AS (VALUES {{values}})"
                f" UPDATE executions SET {assignments} FROM v WHERE executions.id = v.id",
                values,
            )
        self._rows = {}

    def _write_log(self) -> None:
        """The answers' log entries, numbered on from each execution's last (the event
        order of the stream, so the same on every rebuild)."""
        if not self._log:
            return
        found = sorted({entry[0] for entry in self._log})
        last = dict.fromkeys(found, 0)
        for execution_id, seq in self.conn.execute_values(
            "SELECT execution_id, MAX(seq) FROM execution_log"
            " WHERE execution_id IN ({values}) GROUP BY execution_id",
            [(execution_id,) for execution_id in found],
        ):
            last[execution_id] = int(seq)
        rows = []
        for execution_id, received_at, status, payload in self._log:
            last[execution_id] += 1
            rows.append((execution_id, last[execution_id], received_at, status, payload))
        self.conn.execute_values(
            "INSERT INTO execution_log (execution_id, seq, received_at, status, payload)"
            " VALUES {values}",
            rows,
        )
        self._log = []

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


_COLUMNS = (
    "id", "tenant", "device_id", "name", "params", "status", "created_at", "updated_at", "ttl",
    "deadline", "result", "error", "requested_name", "ephemeral", "retry_of", "retries",
    "outcome", "requested_by", "verification",
)  # fmt: skip


def _requested(event: LifecycleEvent) -> dict[str, Any]:
    """The new row, every column of it."""
    data = event.data
    occurred = canonical_time(event.occurred_at)
    return {
        "id": str(event.execution_id),
        # Stored before tenants existed: without one (or with the default's name).
        "tenant": data.get("tenant") or DEFAULT_TENANT,
        "device_id": data["device_id"],
        "name": data["name"],
        "params": canonical_json(data["params"]),
        "status": ExecutionStatus.PENDING.value,
        "created_at": occurred,
        "updated_at": occurred,
        "ttl": int(data["ttl"]),
        "deadline": canonical_time(data["deadline"]),
        "result": None,
        "error": None,
        "requested_name": data.get("requested_name") or data["name"],
        "ephemeral": int(bool(data.get("ephemeral", False))),
        "retry_of": data.get("retry_of"),
        "retries": "[]",
        "outcome": "",
        "requested_by": data.get("requested_by"),
        "verification": None,
    }


def _counted_as(row: dict[str, Any]) -> Counted:
    return Counted(row["tenant"], row["device_id"], row["name"], row["status"], row["ephemeral"])


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
        rows.append_log(event, answer)
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
