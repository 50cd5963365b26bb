"""Verification (Traxes): a command may declare the device state it should cause; device
state reports settle it SUCCEEDED, its deadline or the command's own failure FAILED, a
cancel CANCELED. Run against every persistence backend, the views included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.errors import DeadlineNotReached
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_platform.mapping import execution_state
from baton_views import ExecutionViews, read_events

CATALOG = """
device_types:
  charger:
    commands:
      StartCharging:
        verification: {field: charging, equals: true, within: 60}
      StopCharging: {}
devices:
  - {id: charger-1, type: charger}
  - {id: charger-2, type: charger}
"""
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["popo", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Executions:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    env = (
        {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if request.param == "popo"
        else {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "e")}
    )
    return Executions(Catalog.from_yaml(path), env=env, clock=Clock())


def start(app: Executions, device: str = "charger-1") -> UUID:
    return app.request(RequestCommand(device, "StartCharging", {}, None)).execution.id


def answer(app: Executions, execution_id: UUID, status: AnswerStatus) -> None:
    device = app.get(execution_id).device_id
    app.record_answer(execution_id, device, f"{status}-{execution_id}", status, {}, T0)


def verification(app: Executions, execution_id: UUID) -> dict[str, object]:
    state = app.get(execution_id).verification
    assert state is not None
    return state


def test_a_matching_state_verifies_only_that_devices_executions(app: Executions) -> None:
    mine, other = start(app), start(app, "charger-2")
    plain = app.request(RequestCommand("charger-1", "StopCharging", {}, None)).execution.id
    assert app.get(plain).verification is None
    assert verification(app, mine) == {"status": "PENDING", "completed_at": None, "error": None}
    answer(app, mine, AnswerStatus.SUCCEEDED)
    assert app.record_state("charger-1", {"charging": False}, T0) is None  # not yet
    assert app.record_state("charger-1", {"voltage": 230}, T0) is None
    at = T0 + timedelta(seconds=5)
    assert app.record_state("charger-1", {"charging": True}, at) is not None
    assert verification(app, mine) == {
        "status": "SUCCEEDED", "completed_at": at.isoformat(timespec="microseconds"),
        "error": None,
    }  # fmt: skip
    assert verification(app, other)["status"] == "PENDING"  # another device's execution
    assert app.record_state("charger-1", {"charging": True}, at) is None  # nothing waits
    assert app.queue_of("charger-1").verifying == []


def test_progress_answers_leave_the_verification_pending(app: Executions) -> None:
    execution_id = start(app)
    answer(app, execution_id, AnswerStatus.STARTED)
    answer(app, execution_id, AnswerStatus.IN_PROGRESS)
    assert verification(app, execution_id)["status"] == "PENDING"
    answer(app, execution_id, AnswerStatus.SUCCEEDED)
    assert verification(app, execution_id)["status"] == "PENDING"  # the state decides


def test_no_matching_state_before_the_deadline_fails_it(app: Executions) -> None:
    execution_id = start(app)
    answer(app, execution_id, AnswerStatus.SUCCEEDED)
    with pytest.raises(DeadlineNotReached):
        app.reach_deadline(execution_id, "verification")
    app.clock.now = T0 + timedelta(seconds=61)  # type: ignore[attr-defined]
    assert app.reach_deadline(execution_id, "verification").changed
    failed = verification(app, execution_id)
    assert failed["status"] == "FAILED"
    assert failed["error"] == {
        "title": "Not verified",
        "description": "the device did not report charging == True in time",
    }
    assert app.get(execution_id).status is ExecutionStatus.SUCCEEDED  # the command did
    assert not app.reach_deadline(execution_id, "verification").changed  # fired twice


def test_a_failed_command_fails_and_a_canceled_one_cancels_its_verification(
    app: Executions,
) -> None:
    failed, canceled = start(app), start(app)
    answer(app, failed, AnswerStatus.FAILED)
    assert verification(app, failed)["status"] == "FAILED"
    assert verification(app, failed)["error"] == {
        "title": "Command not executed", "description": "the command ended FAILED",
    }  # fmt: skip
    app.cancel(canceled, "stop")
    assert verification(app, canceled)["status"] == "CANCELED"
    assert app.queue_of("charger-1").verifying == []


def test_the_views_show_the_same_verification(app: Executions, tmp_path: Path) -> None:
    ids = [start(app), start(app, "charger-2"), start(app, "charger-2")]
    answer(app, ids[0], AnswerStatus.SUCCEEDED)
    app.record_state("charger-1", {"charging": True}, T0 + timedelta(seconds=1))
    app.cancel(ids[2], "stop")
    app.clock.now = T0 + timedelta(seconds=61)  # type: ignore[attr-defined]
    app.reach_deadline(ids[1])  # TIMED_OUT: its verification FAILED with it
    views = ExecutionViews(tmp_path / "views.sqlite")
    try:
        views.apply(read_events(app, 0, 1000))
        for execution_id in ids:
            row = views.get(execution_id)
            assert row is not None
            assert row.verification == execution_state(app.get(execution_id)).verification
        statuses = [views.get(i).verification["status"] for i in ids]  # type: ignore[union-attr,index]
        assert statuses == ["SUCCEEDED", "FAILED", "CANCELED"]
    finally:
        views.close()


def test_the_api_writes_the_verification_time_as_the_executions_times(app: Executions) -> None:
    from baton_api.schemas import ExecutionOut

    mine = start(app)
    answer(app, mine, AnswerStatus.SUCCEEDED)
    at = T0 + timedelta(seconds=5)
    app.record_state("charger-1", {"charging": True}, at)
    shown = ExecutionOut.of(execution_state(app.get(mine))).model_dump(mode="json")
    assert shown["verification"] == {
        "status": "SUCCEEDED", "completed_at": "2026-01-01T00:00:05Z", "error": None,
    }  # fmt: skip
    assert shown["created_at"].endswith("Z")
