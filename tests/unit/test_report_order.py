"""Reports overtake each other; every fact still lands, in a defined order (docs/statuses.md).

The bridge sends the `published` report and the device's answers from different tasks, and a
report redelivered after a crash comes late. Whatever order they reach the dispatcher in (each
possibly twice), the execution ends the same, with `Published` recorded once and before every
answer, every answer in its log once, and the view showing what the aggregate says.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_views import ExecutionViews, read_events

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
DEVICE = "demo-thermostat-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ANSWER_EVENTS = {"Acknowledged", "Progressed", "Succeeded", "AnswerRecorded"}

Report = Callable[[Executions, UUID], object]


def _answer(report_id: str, status: AnswerStatus, offset: int) -> Report:
    def send(app: Executions, execution_id: UUID) -> object:
        payload = {"step": report_id}
        at = T0 + timedelta(seconds=offset)
        return app.record_answer(execution_id, DEVICE, report_id, status, payload, at)

    return send


REPORTS: dict[str, Report] = {
    "published": lambda app, execution_id: app.record_published(execution_id),
    "started": _answer("a1", AnswerStatus.STARTED, 1),
    "progress": _answer("a2", AnswerStatus.IN_PROGRESS, 2),
    "succeeded": _answer("a3", AnswerStatus.SUCCEEDED, 3),
}
ORDERS = list(itertools.permutations(REPORTS))


def new_app() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def request(app: Executions) -> UUID:
    return app.request(RequestCommand(DEVICE, "reboot", {}, None)).execution.id


def event_types(app: Executions, execution_id: UUID) -> list[str]:
    return [type(e).__name__ for e in app.events_of(execution_id)]


@pytest.mark.parametrize("twice", [False, True], ids=["once", "each-twice"])
@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_every_order_of_the_reports_records_every_fact(
    order: tuple[str, ...], twice: bool, tmp_path: Path
) -> None:
    app = new_app()
    execution_id = request(app)
    # Each twice: at-least-once delivery, the repeat right after (or, below, at the end).
    sequence = [name for name in order for _ in range(2 if twice else 1)]
    for name in sequence + (list(order) if twice else []):
        REPORTS[name](app, execution_id)

    execution = app.get(execution_id)
    assert execution.status is ExecutionStatus.SUCCEEDED
    assert execution.result == {"step": "a3"}
    assert sorted(entry["report_id"] for entry in execution.log) == ["a1", "a2", "a3"]
    types = event_types(app, execution_id)
    assert types.count("Published") == 1
    assert types[:3] == ["Requested", "Dispatched", "Published"]  # before every answer
    assert len([t for t in types if t in ANSWER_EVENTS]) == 3

    views = ExecutionViews(tmp_path / "views.sqlite")
    views.apply(read_events(app, 0, 1000))
    row = views.get(execution_id, with_log=True)
    assert row is not None and row.log is not None
    assert row.status is ExecutionStatus.SUCCEEDED
    assert sorted(e.status for e in row.log) == ["IN_PROGRESS", "STARTED", "SUCCEEDED"]


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_published_after_the_end_is_recorded_and_moves_no_status(
    ending: str, tmp_path: Path
) -> None:
    """Canceled or expired while on its way: the broker still took it, a fact worth keeping
    (the device may act on it); the status stays where the end put it, in the view too."""
    now = [datetime.now(UTC)]
    app = Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )
    execution_id = request(app)
    if ending == "cancel":
        app.cancel(execution_id, "by test")
    else:
        now[0] += timedelta(days=1)
        app.reach_deadline(execution_id)
    ended = app.get(execution_id).status

    assert app.record_published(execution_id).changed
    assert not app.record_published(execution_id).changed  # once
    assert app.get(execution_id).status is ended
    assert event_types(app, execution_id)[-1] == "Published"

    views = ExecutionViews(tmp_path / "views.sqlite")
    views.apply(read_events(app, 0, 1000))
    row = views.get(execution_id)
    assert row is not None
    assert row.status is ended
