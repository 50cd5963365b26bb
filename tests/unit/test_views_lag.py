"""The views' lag (`baton_views_behind_events`): what the store holds that the views do not,
sampled by the replica that writes them, for the operator's alert (`BatonViewsBehind`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

import pytest

from baton_api.inmemory import InMemoryGateway
from baton_api.projector import ProjectionRunner
from baton_contracts.nats import LifecycleEvent, SubmitCommand
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform import metrics
from baton_platform.lifecycle import cancel_and_wait
from baton_views import ExecutionViews
from tests.conftest import eventually
from tests.unit.test_api import DEMO


class StuckViews(ExecutionViews):
    """The real views, whose writes fail while `stuck` (a views database that refuses)."""

    stuck = True

    def apply(self, events: Iterable[LifecycleEvent], ended: set[UUID] | None = None) -> int:
        if self.stuck:
            raise RuntimeError("the views database refuses writes")
        return super().apply(events, ended)


def behind() -> float:
    return float(metrics.VIEWS_BEHIND._value.get())


async def test_the_views_lag_is_what_the_projection_has_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "serving", lambda: True)
    monkeypatch.setattr(metrics, "SAMPLE_INTERVAL_S", 0.05)
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    gateway = InMemoryGateway(executions)
    for _ in range(3):
        reply = gateway.handlers.submit(
            SubmitCommand(
                device_id="demo-thermostat-1", name="set_temperature", params={"value": 21}
            )
        )
        assert reply.execution is not None, reply.problem
    stored = executions.recorder.max_notification_id()
    assert stored is not None and stored > 3
    views = StuckViews(tmp_path / "views.db")
    runner = ProjectionRunner(executions, views, poll_interval=0.05)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _is(behind(), stored), what="every stored event behind")
        views.stuck = False
        await eventually(lambda: _is(behind(), 0), what="caught up")
        await runner.stop_projecting()  # another replica writes them now
        views.stuck = True
        gateway.handlers.submit(
            SubmitCommand(
                device_id="demo-thermostat-2", name="set_temperature", params={"value": 21}
            )
        )
        await asyncio.sleep(0.3)  # several samples
        assert behind() == 0  # not this replica's to say
    finally:
        runner.stop()
        await cancel_and_wait(task)
        views.close()
    assert behind() == 0


async def _is(value: float, expected: float) -> bool:
    return value == expected
