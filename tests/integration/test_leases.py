"""Leases on a real nats-server, taken by the services' own NATS users: one holder at a time;
a released lease is taken at once, an abandoned one once it lapses; a holder cut off from
NATS stops believing it holds the lease before anyone else can take it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from baton_cli.localstack import Server
from baton_platform import leases
from baton_platform.leases import Lease, holder_name, open_bucket, while_held
from baton_platform.nats_access import DISPATCHER, inbox_prefix
from tests.conftest import eventually


@pytest.fixture
async def clients(nats_server: Server) -> AsyncIterator[list[Client]]:
    """Three replicas of the dispatcher, each with a connection of its own: a lease is
    contended by replicas of one service (each service may write its own leases only)."""
    opened = [await connect_as(nats_server, DISPATCHER) for _ in range(3)]
    yield opened
    for client in opened:
        if not client.is_closed:
            await client.close()


async def connect_as(server: Server, user: str) -> Client:
    return await nats.connect(server.url_as(user), inbox_prefix=inbox_prefix(user))


async def lease_of(client: Client, key: str, who: str) -> Lease:
    return Lease(await open_bucket(client.jetstream()), key, holder_name(who, "test"))


async def test_one_holder_at_a_time_and_a_released_lease_is_taken_at_once(
    clients: list[Client],
) -> None:
    first = await lease_of(clients[0], "relay", "dispatcher")
    second = await lease_of(clients[1], "relay", "other")
    assert await first.keep()
    assert not await second.keep()
    assert await first.keep()  # renewed
    assert first.held and not second.held
    await first.release()
    assert not first.held
    assert await second.keep()
    assert not await first.keep()  # it is the other's now


async def test_an_abandoned_lease_is_taken_once_it_lapses_and_not_before(
    clients: list[Client],
) -> None:
    first = await lease_of(clients[0], "relay", "a")
    second = await lease_of(clients[2], "relay", "b")
    assert await first.keep()
    abandoned = time.monotonic()  # the holder dies: no renewal, no release

    async def taken() -> bool:
        return await second.keep()

    await eventually(taken, timeout=leases.TTL_S + 5, interval=0.1, what="the lapsed lease")
    waited = time.monotonic() - abandoned
    # Not before the holder stopped believing it held it, and within seconds of the TTL.
    assert waited > leases.TTL_S - leases.SAFETY_S, waited
    assert not first.held
    assert not await first.keep()


async def test_a_holder_cut_off_from_nats_gives_the_work_up_before_another_can_take_it(
    nats_server: Server, clients: list[Client]
) -> None:
    cut_off = await connect_as(nats_server, DISPATCHER)
    lonely = await lease_of(cut_off, "partition.0", "cut-off")
    other = await lease_of(clients[0], "partition.0", "other")
    stopping = asyncio.Event()
    log: list[tuple[str, float]] = []

    async def start() -> None:
        log.append(("start", time.monotonic()))

    async def stop() -> None:
        log.append(("stop", time.monotonic()))

    task = asyncio.create_task(while_held(lonely, start, stop, stopping))
    try:
        await eventually(lambda: _is(log, ["start"]), timeout=5, what="the lease taken")
        await cut_off.close()  # as far as this holder knows, NATS is gone

        async def taken_by_other() -> bool:
            return await other.keep()

        await eventually(taken_by_other, timeout=leases.TTL_S + 5, interval=0.05, what="taken")
        other_took = time.monotonic()
        assert [what for what, _ in log] == ["start", "stop"]
        assert log[1][1] < other_took  # the work had stopped before the other could start
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=5)


async def _is(log: list[tuple[str, float]], expected: list[str]) -> bool:
    return [what for what, _ in log] == expected


async def test_a_restarted_replica_takes_its_own_lease_back_at_once(clients: list[Client]) -> None:
    """The same replica (its BATON_INSTANCE) after a crash: no wait for its old lease to
    lapse. Another replica still cannot take it."""
    before = await lease_of(clients[0], "partition.3", "dispatcher")
    assert await before.keep()  # then the process dies without releasing it
    after = await lease_of(clients[0], "partition.3", "dispatcher")
    other = await lease_of(clients[1], "partition.3", "other")
    assert await after.keep()
    assert not await other.keep()
    assert not await before.keep()  # the dead run's revision is no longer the latest


async def test_work_that_ended_while_its_lease_is_held_is_released_and_started_again(
    clients: list[Client],
) -> None:
    # A job that died (an error its loop did not catch) must not keep the lease: nobody
    # would do the work while the holder goes on renewing it.
    lease = await lease_of(clients[0], "relay", "dispatcher")
    stopping = asyncio.Event()
    starts: list[asyncio.Task[None]] = []
    stops = 0

    async def start() -> None:
        async def job() -> None:
            if not starts[1:]:  # the first run fails at once; the next one runs
                raise RuntimeError("the job's first run fails")
            await asyncio.Event().wait()

        starts.append(asyncio.create_task(job()))

    async def stop() -> None:
        nonlocal stops
        stops += 1

    holding = asyncio.create_task(
        while_held(lease, start, stop, stopping, alive=lambda: not starts[-1].done())
    )
    try:

        async def started_again() -> bool:
            return len(starts) == 2

        await eventually(started_again, timeout=4 * leases.RENEW_S, what="the job started again")
        assert stops == 1
        assert lease.held
    finally:
        stopping.set()
        await holding
        for task in starts:
            task.cancel()
    assert stops == 2
