"""A deadline the dispatcher answers slowly is logged with where the time went: slow answers
are what make deadlines late under faults (the scheduler has a bounded number in flight)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from baton_contracts.nats import DeadlineDue
from baton_dispatcher import writer as writer_module
from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.writer import Writer
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from tests.unit.test_api import DEMO


class Backlog:
    """Reports of the device still waiting, after `delay` seconds of looking."""

    def __init__(self, delay: float, waiting: bool) -> None:
        self.delay, self.waiting = delay, waiting

    async def held_by(self, device_id: str, deadline: datetime) -> str | None:
        await asyncio.sleep(self.delay)
        return "a report not yet applied" if self.waiting else None


async def answer_after(delay: float, waiting: bool) -> str:
    now = [datetime.now(UTC)]
    executions = Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )
    backlog = cast(ReportsBacklog, Backlog(delay, waiting))
    writer = Writer(executions, on_stored=lambda: None, backlog=backlog)
    try:
        requested = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=1))
        now[0] += timedelta(seconds=2)
        reply = await writer.deadline(DeadlineDue(execution_id=requested.execution.id))
        return reply.outcome
    finally:
        writer.close()


async def test_a_slow_answer_is_logged_with_its_steps(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "SLOW_DEADLINE_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="baton_dispatcher.writer"):
        assert await answer_after(0.3, waiting=True) == "reports-pending"
    [line] = [r.getMessage() for r in caplog.records if "answered" in r.getMessage()]
    assert "answered reports-pending in 0." in line
    assert "(read 0.0" in line
    assert "watermarks and reports 0.3" in line


async def test_a_quick_answer_is_not_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "SLOW_DEADLINE_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="baton_dispatcher.writer"):
        assert await answer_after(0.0, waiting=False) == "applied"
    assert not [r for r in caplog.records if "answered" in r.getMessage()]


async def test_a_deadline_held_long_is_logged_with_what_holds_it_once_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held a moment is the rule; held for long, it may wait for something that never comes:
    said, with what, and not on every ask of the scheduler."""
    now = [datetime.now(UTC) - timedelta(seconds=30)]  # requested 30 s ago, due 29 s ago
    executions = Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )
    backlog = cast(ReportsBacklog, Backlog(0.0, waiting=True))
    writer = Writer(executions, on_stored=lambda: None, backlog=backlog)
    try:
        requested = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=1))
        due = DeadlineDue(execution_id=requested.execution.id)
        with caplog.at_level(logging.WARNING, logger="baton_dispatcher.writer"):
            for _ in range(3):  # the scheduler asks again and again
                assert (await writer.deadline(due)).outcome == "reports-pending"
    finally:
        writer.close()
    [line] = [r.getMessage() for r in caplog.records if "held" in r.getMessage()]
    assert f"deadline of {requested.execution.id} (execution) held 29 s past its time" in line
    assert line.endswith("by a report not yet applied")
