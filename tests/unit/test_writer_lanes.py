"""The dispatcher's writer stores what settles work in flight (device reports, due deadlines)
ahead of new requests, and a job that runs alone stays a barrier for both lanes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from baton_dispatcher.writer import Writer
from baton_domain.application import Executions
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
async def busy() -> AsyncIterator[Busy]:
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    held = Busy(Writer(executions, on_stored=lambda: None))

    def hold() -> None:
        held.started.set()
        held.release.wait(10)

    holding = asyncio.ensure_future(held.writer._call(hold))
    assert await asyncio.to_thread(held.started.wait, 5)
    try:
        yield held
    finally:
        held.release.set()
        await holding
        held.writer.close()


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
