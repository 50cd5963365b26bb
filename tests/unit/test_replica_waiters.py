"""Waiting on an api replica that does not project: the projecting replica's announcements
(`ViewsAdvanced`) wake its waiters; a missed announcement is made up for by reading the
views' position, and then every waiter reads again.

Two `ProjectionRunner`s share one views database and the in-memory event store, as two api
replicas share the views; the announcements travel through a list here, as NATS would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID

import pytest

from baton_api.inmemory import InMemoryGateway
from baton_api.projector import Follower, ProjectionRunner
from baton_contracts.nats import ViewsAdvanced
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from tests.conftest import eventually
from tests.unit.test_api import DEMO, answer
from tests.unit.test_waiters import CountingViews, submit, wait_until_terminal


def advance(after: int, position: int, *ended: UUID) -> ViewsAdvanced:
    return ViewsAdvanced(projector="other", after=after, position=position, ended=list(ended))


# --- Follower: when a replica must assume it missed an announcement ---------------------------


def test_announcements_without_a_gap_miss_nothing() -> None:
    known = Follower(grace=0.5)
    assert not known.polled(10, now=0.0)  # where it starts from
    assert not known.heard(advance(10, 15))
    assert not known.heard(advance(15, 20))
    assert (known.position, known.announced) == (20, 20)


def test_a_gap_between_announcements_is_a_missed_one() -> None:
    known = Follower(grace=0.5)
    known.polled(10, now=0.0)
    assert known.heard(advance(12, 15))  # 10 -> 12 never heard of
    assert not known.heard(advance(15, 20))


def test_an_announcement_repeated_or_late_is_not_a_gap() -> None:
    known = Follower(grace=0.5)
    known.polled(0, now=0.0)
    known.heard(advance(0, 5))
    known.heard(advance(5, 9))
    assert not known.heard(advance(0, 5))
    assert (known.position, known.announced) == (9, 9)


def test_a_position_read_and_announced_within_the_grace_misses_nothing() -> None:
    known = Follower(grace=0.5)
    known.polled(10, now=0.0)
    assert not known.polled(14, now=1.0)  # committed; its announcement on its way
    assert known.position == 14  # waiting for a position needs no announcement
    assert not known.polled(14, now=1.2)  # read again soon (a waiter asked): still in time
    known.heard(advance(10, 14))
    assert not known.polled(14, now=2.0)
    assert not known.polled(14, now=9.0)


def test_a_position_read_and_still_unannounced_after_the_grace_is_a_missed_one() -> None:
    known = Follower(grace=0.5)
    known.polled(10, now=0.0)
    assert not known.polled(14, now=1.0)
    assert not known.polled(18, now=1.3)  # more committed meanwhile
    assert known.polled(18, now=1.5)  # 14 read 0.5 s ago, never announced
    assert not known.polled(18, now=1.6)  # once for 14; 18 gets its own grace
    assert known.polled(18, now=2.0)
    assert not known.polled(18, now=5.0)
    assert not known.heard(advance(18, 20))  # and the next one follows on


def test_the_first_announcement_heard_is_where_it_starts_from() -> None:
    known = Follower(grace=0.5)
    assert not known.heard(advance(40, 50))
    assert known.position == 50


# --- two runners over one views database -----------------------------------------------------


@pytest.fixture
def executions() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


Replicas = tuple[ProjectionRunner, ProjectionRunner, CountingViews]


@pytest.fixture
async def replicas(tmp_path: Path, executions: Executions) -> AsyncIterator[Replicas]:
    """A projecting runner whose announcements reach the following one, which reads the
    views' position only when a waiter asks it to (no polls: only announcements wake)."""
    path = tmp_path / "views.db"
    projecting_views, following_views = CountingViews(path), CountingViews(path)
    following = ProjectionRunner(
        executions, following_views, poll_interval=3600, name="api.b", projecting=False
    )

    async def deliver(message: ViewsAdvanced) -> None:
        following.heard(message)

    projecting = ProjectionRunner(
        executions, projecting_views, poll_interval=3600, name="api.a", announce=deliver
    )
    task = asyncio.create_task(following.run())
    try:
        yield projecting, following, following_views
    finally:
        following.stop()
        await task
        projecting_views.close()
        following_views.close()


async def test_a_waiter_on_the_replica_that_does_not_project_is_woken_by_the_announcement(
    executions: Executions, replicas: Replicas
) -> None:
    projecting, following, views = replicas
    gateway = InMemoryGateway(executions)
    execution_id = submit(gateway, "demo-thermostat-1")
    await projecting.step()
    stored = executions.recorder.max_notification_id()
    assert stored is not None
    assert await following.wait_for_position(stored, 5)
    views.gets = 0
    waiters = [
        asyncio.create_task(wait_until_terminal(following, execution_id, 30.0)) for _ in range(5)
    ]
    await eventually(lambda: _true(views.gets >= 5), what="the waiters' first reads")
    answer(executions, execution_id, AnswerStatus.SUCCEEDED, {"ok": True})
    await projecting.step()
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    assert all(r is not None and r.status is ExecutionStatus.SUCCEEDED for r in results)
    assert views.gets == 10  # two reads each
    assert following.waited_on == 0


async def test_a_lost_announcement_still_ends_the_wait_from_the_views_position(
    executions: Executions, tmp_path: Path
) -> None:
    path = tmp_path / "views.db"
    projecting_views, following_views = CountingViews(path), CountingViews(path)
    following = ProjectionRunner(
        executions, following_views, poll_interval=0.2, name="api.b", projecting=False
    )
    lost: list[ViewsAdvanced] = []

    async def lose(message: ViewsAdvanced) -> None:
        lost.append(message)  # published, never arrives

    projecting = ProjectionRunner(
        executions, projecting_views, poll_interval=3600, name="api.a", announce=lose
    )
    task = asyncio.create_task(following.run())
    try:
        gateway = InMemoryGateway(executions)
        execution_id = submit(gateway, "demo-thermostat-1")
        other = submit(gateway, "demo-thermostat-2")
        await projecting.step()
        # The position still arrives by reading it.
        stored = executions.recorder.max_notification_id()
        assert stored is not None
        assert await following.wait_for_position(stored, 5)
        waiter = asyncio.create_task(wait_until_terminal(following, execution_id, 30.0))
        lasting = asyncio.create_task(wait_until_terminal(following, other, 1.5))
        await asyncio.sleep(0)
        answer(executions, execution_id, AnswerStatus.FAILED, {"why": "no"})
        started = time.monotonic()
        await projecting.step()
        ended = await asyncio.wait_for(waiter, timeout=5)
        waited = time.monotonic() - started
        still = await asyncio.wait_for(lasting, timeout=5)
    finally:
        following.stop()
        await task
        projecting_views.close()
        following_views.close()
    assert lost  # nothing was heard
    assert ended is not None and ended.status is ExecutionStatus.FAILED
    assert waited < 2.0  # two reads of the position (0.2 s apart), not the waiter's 30 s
    # Woken for a maybe, it read, found it running, and waited on until its time ran out.
    assert still is not None and not still.is_terminal
    assert following.waited_on == 0


async def test_the_replica_that_projects_ignores_its_own_announcement(
    executions: Executions, tmp_path: Path
) -> None:
    views = CountingViews(tmp_path / "views.db")
    heard: list[ViewsAdvanced] = []
    runner = ProjectionRunner(executions, views, poll_interval=3600, name="api.a")

    async def echo(message: ViewsAdvanced) -> None:
        heard.append(message)
        runner.heard(message)

    runner.announce_with(echo)
    try:
        execution_id = submit(InMemoryGateway(executions), "demo-thermostat-1")
        answer(executions, execution_id, AnswerStatus.SUCCEEDED, {})
        assert await runner.step()
        assert not await runner.step()  # nothing new: nothing announced
    finally:
        views.close()
    [message] = heard
    assert message.projector == "api.a"
    assert message.after == 0
    assert message.position == executions.recorder.max_notification_id()
    assert message.ended == [execution_id]


async def test_a_runner_that_stops_projecting_follows_and_one_that_starts_projects(
    executions: Executions, tmp_path: Path
) -> None:
    """The lease moving: the old holder's steps stop, the new one's start from the views'
    position, and nothing is applied twice (the position is read in the transaction)."""
    path = tmp_path / "views.db"
    first_views, second_views = CountingViews(path), CountingViews(path)
    first = ProjectionRunner(executions, first_views, poll_interval=0.05, name="api.a")
    second = ProjectionRunner(
        executions, second_views, poll_interval=0.05, name="api.b", projecting=False
    )
    gateway = InMemoryGateway(executions)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        submit(gateway, "demo-thermostat-1")
        await eventually(lambda: _true(second.position > 0), what="the follower's position")
        await first.stop_projecting()
        await second.start_projecting()
        last = submit(gateway, "demo-thermostat-2")
        end = executions.recorder.max_notification_id()
        await eventually(lambda: _true(second.position == end), what="the new holder's steps")
        assert not await first.step()  # not projecting: does nothing
        view = second_views.get(last)
    finally:
        first.stop()
        second.stop()
        await asyncio.gather(*tasks)
        first_views.close()
        second_views.close()
    assert view is not None
    assert {first.projecting, second.projecting} == {False, True}


async def _true(value: bool) -> bool:
    return value
