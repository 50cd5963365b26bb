"""The dispatcher's writer stores what settles work in flight (device reports, due deadlines,
cancels) ahead of new requests, keeps requests a share of each group commit, and a job that
runs alone stays a barrier for both lanes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import uuid4

import pytest

from baton_contracts.nats import CancelCommand, DeadlineDue, StateReport, SubmitCommand
from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.writer import MAX_BATCH, Writer
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from tests.unit.test_api import DEMO


@dataclass
class Busy:
    """A writer held busy by one job until `release`, with the order later jobs ran in."""

    writer: Writer
    ran: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def job(self, name: str) -> Callable[[], str]:
        def call() -> str:
            self.ran.append(name)
            return name

        return call

    def queue(self, name: str, **lane: bool) -> asyncio.Future[str]:
        return asyncio.ensure_future(self.writer._call(self.job(name), **lane))


@pytest.fixture
def now() -> list[datetime]:
    return [datetime.now(UTC)]


@pytest.fixture
def executions(now: list[datetime]) -> Executions:
    return Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )


@asynccontextmanager
async def held(writer: Writer) -> AsyncIterator[Busy]:
    """`writer` held busy by one job until the Busy's `release`; closed after."""
    busy = Busy(writer)

    def hold() -> None:
        busy.started.set()
        busy.release.wait(10)

    holding = asyncio.ensure_future(writer._call(hold))
    assert await asyncio.to_thread(busy.started.wait, 5)
    try:
        yield busy
    finally:
        busy.release.set()
        await holding
        writer.close()


@pytest.fixture
async def busy(executions: Executions) -> AsyncIterator[Busy]:
    async with held(Writer(executions, on_stored=lambda: None)) as busy:
        yield busy


async def test_settling_work_goes_ahead_of_requests_queued_before_it(busy: Busy) -> None:
    queued = [
        busy.queue("submit-1"),
        busy.queue("report", settles=True),
        busy.queue("submit-2"),
        busy.queue("deadline", settles=True),
    ]
    busy.release.set()
    assert await asyncio.wait_for(asyncio.gather(*queued), 5) == [
        "submit-1", "report", "submit-2", "deadline",
    ]  # fmt: skip
    assert busy.ran == ["report", "deadline", "submit-1", "submit-2"]


async def test_a_job_that_runs_alone_is_a_barrier_for_both_lanes(busy: Busy) -> None:
    queued = [
        busy.queue("submit-1"),
        busy.queue("report-1", settles=True),
        busy.queue("forget-cached", alone=True),
        busy.queue("report-2", settles=True),
        busy.queue("submit-2"),
    ]
    busy.release.set()
    await asyncio.wait_for(asyncio.gather(*queued), 5)
    assert busy.ran == ["report-1", "submit-1", "forget-cached", "report-2", "submit-2"]


async def test_a_steady_flow_of_reports_leaves_requests_their_share(
    executions: Executions, now: list[datetime]
) -> None:
    """Two partitions' report consumers, each keeping a whole batch of reports in the queue
    (ReportsConsumer), fill every group commit with settling work: a submit queued behind
    their first batches still goes within a commit or two, not once the stream is drained."""
    writer = Writer(executions, on_stored=lambda: None)
    batches_done = [0]
    submitted_after: list[int] = []

    async def consumer(batches: int) -> None:
        for _ in range(batches):
            reports = [
                StateReport(
                    report_id=str(uuid4()),
                    device_id="demo-thermostat-1",
                    state={"setpoint": 20},
                    received_at=now[0],
                )
                for _ in range(MAX_BATCH)
            ]
            await asyncio.gather(*(writer.apply_state(report) for report in reports))
            batches_done[0] += 1

    async def submit() -> None:
        await asyncio.sleep(0)  # behind the consumers' first batches
        command = SubmitCommand(device_id="demo-thermostat-1", name="reboot", ttl=30)
        assert (await writer.submit(command)).created
        submitted_after.append(batches_done[0])

    try:
        await asyncio.wait_for(asyncio.gather(consumer(6), consumer(6), submit()), 60)
    finally:
        writer.close()
    assert submitted_after[0] <= 2, f"the submit waited for {submitted_after[0]} batches"


async def test_a_cancel_queued_before_a_deadline_was_due_goes_first(
    busy: Busy, executions: Executions, now: list[datetime]
) -> None:
    """The writer busy, a cancel waits in its queue while the deadline passes: the deadline's
    apply, queued after it, does not overtake it (the client canceled in time)."""
    requested = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=1))
    execution_id = requested.execution.id
    cancel = asyncio.ensure_future(busy.writer.cancel(CancelCommand(execution_id=execution_id)))
    await asyncio.sleep(0.05)  # in the writer's queue, before the deadline
    now[0] += timedelta(seconds=2)
    deadline = asyncio.ensure_future(busy.writer.deadline(DeadlineDue(execution_id=execution_id)))
    await asyncio.sleep(0.05)
    busy.release.set()
    canceled, due = await asyncio.wait_for(asyncio.gather(cancel, deadline), 5)
    assert canceled.problem is None, canceled.problem
    assert due.outcome == "ignored"
    assert executions.get(execution_id).status.value == "CANCELED"


async def test_a_deadlines_first_look_does_not_wait_for_the_writer(
    executions: Executions, now: list[datetime]
) -> None:
    """Only applying a deadline takes a turn of the writer: whether the device's answers may
    still be on their way is asked, and answered, while the writer is busy with other work."""
    asked = asyncio.Event()

    class Watching:
        async def held_by(self, device_id: str, deadline: datetime) -> str | None:
            asked.set()
            return "a report not yet applied"

    requested = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=1))
    now[0] += timedelta(seconds=2)
    writer = Writer(executions, on_stored=lambda: None, backlog=cast(ReportsBacklog, Watching()))
    async with held(writer) as busy:
        due = DeadlineDue(execution_id=requested.execution.id)
        # Answered while the writer is still busy: waiting for reports needs no turn of it.
        assert (await asyncio.wait_for(writer.deadline(due), timeout=5)).outcome == (
            "reports-pending"
        )
        assert asked.is_set() and not busy.release.is_set()
