"""The execution views: each event type, at-least-once safety, and replay byte for byte."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_platform.mapping import execution_state
from baton_views import ExecutionViews, read_events, rebuild
from baton_views.projection import DEVICE_QUEUE_TYPES, PROJECTED_TYPES
from baton_views.store import TABLES

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
DEVICE = "demo-thermostat-1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(clock: Clock) -> Executions:
    return Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock
    )


@pytest.fixture
def views(tmp_path: Path) -> ExecutionViews:
    return ExecutionViews(tmp_path / "views.sqlite")


def request(app: Executions, name: str = "reboot", params: dict[str, Any] | None = None) -> UUID:
    return app.request(RequestCommand(DEVICE, name, params or {}, None)).execution.id


def answer(
    app: Executions,
    execution_id: UUID,
    report: str,
    status: AnswerStatus,
    payload: dict[str, Any] | None = None,
) -> None:
    app.record_answer(execution_id, DEVICE, report, status, payload or {}, datetime.now(UTC))


def every_ending(app: Executions, clock: Clock) -> dict[str, UUID]:
    """One execution per way an execution can go, between them every event type."""
    ids = {
        name: request(app)
        for name in ("succeeded", "failed", "rejected", "timed_out", "expired", "canceled", "sent")
    }
    for name in ("succeeded", "failed", "rejected", "timed_out", "sent"):
        app.record_published(ids[name])
    answer(app, ids["succeeded"], "s1", AnswerStatus.STARTED)
    answer(app, ids["succeeded"], "s2", AnswerStatus.IN_PROGRESS, {"percent": 50})
    answer(app, ids["succeeded"], "s3", AnswerStatus.SUCCEEDED, {"ok": True, "a": [1, "é"]})
    answer(app, ids["succeeded"], "s4", AnswerStatus.STARTED)  # late: AnswerRecorded
    answer(app, ids["failed"], "f1", AnswerStatus.FAILED, {"code": "jammed"})
    answer(app, ids["rejected"], "r1", AnswerStatus.REJECTED, {"reason": "busy"})
    app.cancel(ids["canceled"], "changed my mind")
    clock.now += timedelta(seconds=31)
    app.reach_deadline(ids["timed_out"])
    app.reach_deadline(ids["expired"])
    ids["retry"] = app.retry(ids["failed"], "test", "test").execution.id  # Retried
    doomed = request(app)
    answer(app, doomed, "d1", AnswerStatus.STARTED)
    app.delete(doomed, "by test")  # Canceled + Deleted: no rows left
    return ids


def project_all(app: Executions, views: ExecutionViews, batch: int = 1000) -> None:
    while events := read_events(app, views.position(), batch):
        views.apply(events)


def dump(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [
            (table, *row)
            for table in TABLES
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        ]
    finally:
        conn.close()


def test_every_event_type_projects_what_the_aggregate_says(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    ids = every_ending(app, clock)
    project_all(app, views, batch=3)  # small batches: positions carry across calls

    types = {e.type for e in read_events(app, 0, 1000)} - DEVICE_QUEUE_TYPES
    assert types == {
        "Requested",
        "Dispatched",
        "Published",
        "Acknowledged",
        "Progressed",
        "Succeeded",
        "Failed",
        "Rejected",
        "AnswerRecorded",
        "TimedOut",
        "Expired",
        "Canceled",
        "Retried",
        "Deleted",
    }
    # The verification events are projected in tests/unit/test_verification.py.
    assert types == PROJECTED_TYPES - {
        "VerificationRequired", "Verified", "VerificationFailed", "VerificationCanceled",
    }  # fmt: skip
    for execution_id in ids.values():
        row = views.get(execution_id)
        assert row is not None
        state = execution_state(app.get(execution_id))
        assert (row.status.value, row.result, row.error) == (
            state.status,
            state.result,
            state.error,
        )
        assert (row.created_at, row.updated_at, row.deadline) == (
            state.created_at,
            state.updated_at,
            state.deadline,
        )
        assert (row.device_id, row.name, row.params, row.ttl) == (
            state.device_id,
            state.name,
            state.params,
            state.ttl,
        )
        assert (row.ephemeral, row.retry_of, row.retries) == (
            state.ephemeral,
            state.retry_of,
            state.retries,
        )

    assert views.get(ids["sent"]).status is ExecutionStatus.SENT  # type: ignore[union-attr]
    assert views.get(ids["expired"]).error == {  # type: ignore[union-attr]
        "code": "expired",
        "message": "not delivered to the device within 30 s",
    }


def test_the_log_keeps_every_answer_in_order_late_ones_included(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    ids = every_ending(app, clock)
    project_all(app, views)
    row = views.get(ids["succeeded"], with_log=True)
    assert row is not None and row.log is not None
    aggregate_log = app.get(ids["succeeded"]).log
    assert [(e.status, e.payload) for e in row.log] == [
        (a["status"], a["payload"]) for a in aggregate_log
    ]
    assert [e.received_at for e in row.log] == [
        datetime.fromisoformat(a["received_at"]) for a in aggregate_log
    ]
    assert views.get(ids["succeeded"]).log is None  # type: ignore[union-attr]
    assert views.get(ids["expired"], with_log=True).log == []  # type: ignore[union-attr]


def test_events_seen_twice_change_nothing(
    app: Executions, views: ExecutionViews, clock: Clock, tmp_path: Path
) -> None:
    every_ending(app, clock)
    events = read_events(app, 0, 1000)
    assert views.apply(events) == events[-1].notification_id
    before = dump(views.path)
    assert views.apply(events) == events[-1].notification_id
    assert views.apply(events[:5]) == events[-1].notification_id
    assert dump(views.path) == before


def test_rebuild_gives_the_same_rows_byte_for_byte(
    app: Executions, views: ExecutionViews, clock: Clock, tmp_path: Path
) -> None:
    every_ending(app, clock)
    project_all(app, views, batch=2)
    live = dump(views.path)

    progress: list[tuple[int, int]] = []
    replayed = tmp_path / "replayed.sqlite"
    applied = rebuild(app, replayed, lambda done, total: progress.append((done, total)))
    stored = read_events(app, 0, 1000)
    assert applied == len([e for e in stored if e.type not in DEVICE_QUEUE_TYPES])
    assert dump(replayed) == live
    assert progress[-1][0] == progress[-1][1] == views.position()

    # Rebuilding over existing (even stale or wrong) rows replaces them all.
    conn = sqlite3.connect(views.path)
    conn.execute("UPDATE executions SET status = 'bogus'")
    conn.commit()
    conn.close()
    rebuild(app, views.path)
    assert dump(views.path) == live


def test_rebuild_of_an_empty_store(app: Executions, tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    assert rebuild(app, tmp_path / "v.sqlite", lambda d, t: progress.append((d, t))) == 0
    assert progress == [(0, 0)]
    assert ExecutionViews(tmp_path / "v.sqlite").position() == 0


def test_rows_hold_canonical_json_and_utc_timestamps(
    app: Executions, views: ExecutionViews
) -> None:
    execution_id = request(app, "set_temperature", {"value": 21})
    project_all(app, views)
    conn = sqlite3.connect(views.path)
    params, created_at, deadline = conn.execute(
        "SELECT params, created_at, deadline FROM executions WHERE id = ?", (str(execution_id),)
    ).fetchone()
    conn.close()
    assert params == '{"value":21}'
    assert created_at.endswith("+00:00") and len(created_at) == len(
        "2026-01-01T00:00:00.000000+00:00"
    )
    assert deadline.endswith("+00:00")


def test_a_views_database_of_another_schema_version_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE executions (id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO executions VALUES ('stale')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    views = ExecutionViews(path)
    try:
        assert views.position() == 0
        assert views.list().total_count == 0
    finally:
        views.close()
