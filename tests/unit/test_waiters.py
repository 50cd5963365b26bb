"""Waiting for an execution's end (`?wait=`, Enapter's execute_command) costs no reads per
waiter: one notifier per execution, resolved by the projection step that ended it.

The projection runs against the in-memory event store and a temp SQLite views database, as
in tests/unit/test_api.py; the views are wrapped to count every row read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest

from baton_api.inmemory import InMemoryGateway
from baton_api.projector import ProjectionRunner
from baton_api.service import ExecutionService
from baton_contracts.nats import SubmitCommand
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_views import ExecutionView, ExecutionViews
from tests.conftest import eventually
from tests.unit.test_api import DEMO, answer

WAITERS = 1000
EXECUTIONS = 250  # four waiters on each: they must share one notifier
ENDING = 200  # these end; the other 50 never do, so their waiters run out of time
UNRELATED_ADVANCES = 30


class CountingViews(ExecutionViews):
    """The real views, counting reads of execution rows (what a waiter would pay for)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets = 0

    def get(
        self, execution_id: UUID, with_log: bool = False, tenant: str | None = None
    ) -> ExecutionView | None:
        self.gets += 1
        return super().get(execution_id, with_log, tenant)


async def wait_until_terminal(
    runner: ProjectionRunner, execution_id: UUID, within: float, with_log: bool = False
) -> ExecutionView | None:
    """One waiter on an execution the views may show ended already (a GET-like wait)."""
    with runner.watching(execution_id) as watch:
        return await watch.until_terminal(within, with_log)


@pytest.fixture
def executions() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def submit(gateway: InMemoryGateway, device: str) -> UUID:
    reply = gateway.handlers.submit(
        SubmitCommand(device_id=device, name="set_temperature", params={"value": 21})
    )
    assert reply.execution is not None, reply.problem
    return reply.execution.id


async def test_a_thousand_waiters_cost_two_reads_each(
    tmp_path: Path, executions: Executions
) -> None:
    gateway = InMemoryGateway(executions)
    views = CountingViews(tmp_path / "views.db")
    runner = ProjectionRunner(executions, views, poll_interval=3600)  # advanced by hand only
    try:
        ids = [submit(gateway, "demo-thermostat-1") for _ in range(EXECUTIONS)]
        # Every execution in the views before anyone waits: a step is one batch (BATCH
        # events), which may hold only some of them; one the views lack when its waiter runs
        # out of time would be answered None, as an unknown id is.
        while await runner.step():
            pass
        views.gets = 0

        ending, lasting = ids[:ENDING], ids[ENDING:]
        waits = [
            asyncio.create_task(wait_until_terminal(runner, execution_id, 30.0))
            for execution_id in ending * (WAITERS // EXECUTIONS)
        ] + [
            asyncio.create_task(wait_until_terminal(runner, execution_id, 1.5))
            for execution_id in lasting * (WAITERS // EXECUTIONS)
        ]

        async def all_started() -> bool:
            return views.gets >= WAITERS

        await eventually(all_started, what="every waiter's first read")

        # Many advances of the views that end none of the awaited executions.
        for _ in range(UNRELATED_ADVANCES):
            submit(gateway, "demo-thermostat-2")
            assert await runner.step()
        for execution_id in ending:
            answer(executions, execution_id, AnswerStatus.SUCCEEDED, {"ok": True})
        while await runner.step():
            pass

        results = await asyncio.wait_for(asyncio.gather(*waits), timeout=20)
    finally:
        views.close()

    ended = results[: len(ending) * (WAITERS // EXECUTIONS)]
    waited_out = results[len(ended) :]
    assert all(r is not None and r.status is ExecutionStatus.SUCCEEDED for r in ended)
    # Out of time: the state then, which the dispatcher's sending left at PENDING or SENT.
    assert all(r is not None and not r.is_terminal for r in waited_out)
    assert {r.id for r in ended if r is not None} == set(ending)
    assert {r.id for r in waited_out if r is not None} == set(lasting)
    assert views.gets <= 2 * WAITERS, f"{views.gets} reads for {WAITERS} waiters"
    assert runner.waited_on == 0


async def test_an_end_projected_while_the_first_read_runs_still_wakes_the_waiter(
    tmp_path: Path, executions: Executions
) -> None:
    """The notifier exists before the first read: an end projected between that read and
    the wait is not missed (else the waiter would sleep until its time ran out)."""
    gateway = InMemoryGateway(executions)
    views = ExecutionViews(tmp_path / "views.db")
    runner = ProjectionRunner(executions, views, poll_interval=3600)
    try:
        execution_id = submit(gateway, "demo-thermostat-1")
        await runner.step()
        stale = views.get(execution_id)
        assert stale is not None and not stale.is_terminal
        reading, release = threading.Event(), threading.Event()
        real_get = views.get

        def slow_first_get(
            execution_id: UUID, with_log: bool = False, tenant: str | None = None
        ) -> ExecutionView | None:
            if not reading.is_set():
                reading.set()
                release.wait(10)
                return stale  # what a read that began before the end's commit sees
            return real_get(execution_id, with_log, tenant)

        views.get = slow_first_get  # type: ignore[method-assign]
        waiter = asyncio.create_task(wait_until_terminal(runner, execution_id, 30.0))
        await asyncio.to_thread(reading.wait, 10)
        answer(executions, execution_id, AnswerStatus.SUCCEEDED, {"ok": True})
        assert await runner.step()
        release.set()

        ended = await asyncio.wait_for(waiter, timeout=5)
    finally:
        release.set()
        views.close()
    assert ended is not None and ended.status is ExecutionStatus.SUCCEEDED
    assert runner.waited_on == 0


async def test_waiters_on_an_execution_that_already_ended_read_once(
    tmp_path: Path, executions: Executions
) -> None:
    gateway = InMemoryGateway(executions)
    views = CountingViews(tmp_path / "views.db")
    runner = ProjectionRunner(executions, views, poll_interval=3600)
    try:
        execution_id = submit(gateway, "demo-thermostat-1")
        answer(executions, execution_id, AnswerStatus.FAILED, {"why": "no"})
        await runner.step()
        views.gets = 0
        results = await asyncio.gather(
            *(wait_until_terminal(runner, execution_id, 30.0, with_log=True) for _ in range(10))
        )
    finally:
        views.close()
    assert all(r is not None and r.status is ExecutionStatus.FAILED and r.log for r in results)
    assert views.gets == 10
    assert runner.waited_on == 0


@dataclass
class Served:
    """The api's submit path over the in-memory dispatcher, its projection running."""

    gateway: InMemoryGateway
    views: CountingViews
    runner: ProjectionRunner
    service: ExecutionService


@contextlib.asynccontextmanager
async def served(tmp_path: Path, executions: Executions) -> AsyncIterator[Served]:
    gateway = InMemoryGateway(executions)
    views = CountingViews(tmp_path / "views.db")
    runner = ProjectionRunner(executions, views, poll_interval=0.05)
    projecting = asyncio.create_task(runner.run())
    try:
        yield Served(gateway, views, runner, ExecutionService(gateway, views, runner))
    finally:
        runner.stop()
        await projecting
        views.close()


SET_TEMPERATURE = SubmitCommand(
    device_id="demo-thermostat-1", name="set_temperature", params={"value": 21}
)


async def test_a_waited_submit_of_a_new_execution_reads_the_views_once(
    tmp_path: Path, executions: Executions
) -> None:
    """Watched from before it is stored, a new execution cannot be in the views as ended
    when its answer starts to wait: the one read is the one after its end woke it."""
    async with served(tmp_path, executions) as api:
        waiting = asyncio.create_task(api.service.submit(SET_TEMPERATURE, wait=30.0))

        async def waits() -> bool:
            stored = bool(api.gateway.submitted) and api.runner.position > 0
            return stored and api.runner.waited_on == 1

        await eventually(waits, what="the submit stored, projected and waited on")
        execution_id = api.gateway.submitted[0].execution_id
        assert execution_id is not None
        assert api.views.gets == 0
        answer(executions, execution_id, AnswerStatus.SUCCEEDED, {"ok": True})
        submitted = await asyncio.wait_for(waiting, timeout=10)
    assert submitted.created
    assert submitted.execution.id == execution_id
    assert submitted.execution.status == ExecutionStatus.SUCCEEDED
    assert api.views.gets == 1
    assert api.runner.waited_on == 0


async def test_a_waited_repeat_of_an_ended_submit_answers_at_once(
    tmp_path: Path, executions: Executions
) -> None:
    """A repeat (same idempotency key) finds its execution: not created now, so it may have
    ended already and is read before waiting."""
    command = SET_TEMPERATURE.model_copy(update={"idempotency_key": "k-1"})
    async with served(tmp_path, executions) as api:
        first = await api.service.submit(command, wait=None)
        answer(executions, first.execution.id, AnswerStatus.FAILED, {"why": "no"})

        async def ended() -> bool:
            view = api.views.get(first.execution.id)
            return view is not None and view.is_terminal

        await eventually(ended, what="the first attempt's end projected")
        api.views.gets = 0
        repeat = await asyncio.wait_for(api.service.submit(command, wait=30.0), timeout=5)
    assert not repeat.created
    assert repeat.execution.id == first.execution.id
    assert repeat.execution.status == ExecutionStatus.FAILED
    assert api.views.gets == 1
