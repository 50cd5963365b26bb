"""Bridge slots (baton_device_bridge.slots): replica i runs slot i; another replica runs it
only while replica i is gone, and gives it back, its work stopped before the lease is let
go, as soon as replica i is back; never two runners of one slot. Against an in-memory bucket
with JetStream's compare-and-set rules; a lease lapsing (its holder dead for TTL_S) is the
test's `lapse`. The real servers: tests/integration/test_bridge_replicas.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from baton_device_bridge.slots import SlotKeeper, member_key, slot_key
from baton_platform import leases


class Bucket:
    """Keys' compare-and-set, in memory; `down` makes every call fail as NATS gone would."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}
        self.revision = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("no NATS")

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        if key in self.entries:
            raise KeyWrongLastSequenceError("exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._check()
        if key not in self.entries or self.entries[key][0] != last:
            raise KeyWrongLastSequenceError("wrong last sequence")
        return self._write(key, value)

    async def delete(self, key: str, last: int) -> None:
        self._check()
        if key in self.entries and self.entries[key][0] == last:
            del self.entries[key]

    async def get(self, key: str) -> KeyValue.Entry:
        self._check()
        if key not in self.entries:
            raise KeyNotFoundError
        revision, value = self.entries[key]
        return KeyValue.Entry("LEASES", key, value, revision, None, None, None)

    def holder(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[1].decode()

    def lapse(self, holder: str) -> None:
        """Every key of `holder` ages out: it stopped renewing TTL_S ago."""
        for key in [k for k, (_, v) in self.entries.items() if v.decode() == holder]:
            del self.entries[key]

    def _write(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.entries[key] = (self.revision, value)
        return self.revision


@dataclass
class Work:
    """What runs where: every start and stop, in order, across the replicas."""

    log: list[tuple[str, str, int]]
    running: dict[int, str]

    def keeper(
        self, bucket: Bucket, name: str, own: int, fail: set[int] | None = None, grace: float = 0
    ) -> SlotKeeper:
        async def start(slot: int) -> None:
            if slot in (fail or set()):
                raise RuntimeError("broker refused")
            other = self.running.get(slot)
            assert other is None, f"slot {slot} started by {name} while {other} runs it"
            self.running[slot] = name
            self.log.append(("start", name, slot))

        async def stop(slot: int) -> None:
            if self.running.get(slot) == name:
                del self.running[slot]
                self.log.append(("stop", name, slot))

        return SlotKeeper(cast(KeyValue, bucket), name, own, 2, start, stop, self.told, grace)

    async def told(self, slot: int) -> None:
        self.log.append(("told", "", slot))


@pytest.fixture
def work() -> Work:
    return Work([], {})


@pytest.fixture(autouse=True)
def quick() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leases, "RENEW_S", 0.02)
        yield


async def step(*keepers: SlotKeeper) -> None:
    for keeper in keepers:
        await keeper.step()
    await asyncio.sleep(0)  # the starts, each in a task of its own
    await asyncio.sleep(0)


async def test_each_replica_runs_its_own_slot_and_no_other(work: Work) -> None:
    """Also when one starts a moment before the other: a replica not seen yet is given its
    grace period before its slot is taken."""
    bucket = Bucket()
    a, b = work.keeper(bucket, "a", 0, grace=60), work.keeper(bucket, "b", 1, grace=60)
    await step(a)
    assert a.running == [0]
    for _ in range(3):
        await step(a, b)
    assert work.running == {0: "a", 1: "b"}
    assert (a.running, b.running) == ([0], [1])
    assert bucket.holder(slot_key(0)) == "a" and bucket.holder(member_key(1)) == "b"


async def test_past_its_start_a_keeper_takes_a_dead_replicas_slot_without_the_grace(
    work: Work,
) -> None:
    """The grace keeps replicas starting together from taking each other's slots. Later, a
    replica whose member key lapsed has been silent TTL_S already: waiting longer only
    leaves its devices unserved."""
    bucket = Bucket()
    a, b = work.keeper(bucket, "a", 0, grace=60), work.keeper(bucket, "b", 1, grace=60)
    await step(b, a)
    work.running.pop(0)  # a is killed
    bucket.lapse("a")
    await step(b)
    assert b.running == [1]  # young: the grace holds
    b._young_until = 0.0  # as after 2 * TTL_S running
    await step(b)
    assert b.running == [0, 1] and work.running == {0: "b", 1: "b"}


async def test_a_keeper_that_lost_its_own_lease_gives_the_others_the_grace_again(
    work: Work,
) -> None:
    """NATS away for everyone (a node died, the leases' bucket without a leader): every
    replica's keys lapse together. The one back first must not take the others' slots only
    to give them back a moment later."""
    bucket = Bucket()
    a, b = work.keeper(bucket, "a", 0, grace=60), work.keeper(bucket, "b", 1, grace=60)
    await step(b, a)
    a._young_until = b._young_until = 0.0  # both long past their start
    for keeper in (a, b):
        for lease in keeper._leases.values():
            lease._valid_until = 0.0  # not renewed in time: stopped on their own clocks
    bucket.lapse("a")
    bucket.lapse("b")
    await step(b)  # back first: takes its own slot again, not a's
    assert b.running == [1]
    await step(a)
    assert (a.running, b.running) == ([0], [1])


async def test_a_dead_replicas_slot_is_taken_once_its_lease_lapsed_and_given_back(
    work: Work,
) -> None:
    bucket = Bucket()
    a, b = work.keeper(bucket, "a", 0), work.keeper(bucket, "b", 1)
    await step(b, a)
    # a is killed: it renews nothing, stops nothing. Until its leases lapse, b takes nothing.
    work.running.pop(0)  # its process, and its work, are gone
    await step(b)
    assert b.running == [1]
    bucket.lapse("a")
    await step(b)
    assert b.running == [0, 1] and work.running == {0: "b", 1: "b"}
    assert bucket.holder(slot_key(0)) == "b"

    # a is back (a new process, the same holder name): its member key tells b, which stops
    # slot 0's work, then lets the lease go and says so; a takes it at its next step.
    back = work.keeper(bucket, "a", 0)
    await step(back)
    assert back.running == [] and work.running[0] == "b"  # never both
    await step(b)
    assert b.running == [1] and 0 not in work.running
    await step(back)
    assert back.running == [0] and work.running == {0: "a", 1: "b"}
    assert work.log[-3:] == [("stop", "b", 0), ("told", "", 0), ("start", "a", 0)]
    await step(back, b)  # and it stays there
    assert (back.running, b.running) == ([0], [1])


async def test_a_replica_alive_keeps_its_slot_even_while_another_could_take_it(
    work: Work,
) -> None:
    """b does not take slot 0 while a's member key is there, even with slot 0 free (a is
    between two tries): nothing is taken from a live replica on a guess."""
    bucket = Bucket()
    a, b = work.keeper(bucket, "a", 0), work.keeper(bucket, "b", 1)
    await step(b, a)
    del bucket.entries[slot_key(0)]  # free for a moment
    a._leases.clear()
    work.running.pop(0)
    await step(b)
    assert b.running == [1]
    await step(a)
    assert a.running == [0]


async def test_a_holder_cut_off_from_nats_stops_the_slot_on_its_own_clock(
    work: Work,
) -> None:
    """NATS unreachable: the lease is renewed no more, and the slot's work stops once the
    lease's time is up here, TTL_S - SAFETY_S after its last renewal: before the server lets
    it lapse and another replica can take it."""
    bucket = Bucket()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leases, "TTL_S", 0.3)
        patch.setattr(leases, "SAFETY_S", 0.1)
        a = work.keeper(bucket, "a", 0, grace=60)
        await step(a)
        assert work.running == {0: "a"}
        bucket.down = True
        await step(a)
        assert work.running == {0: "a"}  # still within its time
        await asyncio.sleep(0.25)
        # Its MQTT link asks before each connect: no more, whether or not a step ran yet.
        assert not a.holds(0)
        await step(a)
        assert work.running == {} and a.running == []


async def test_a_slot_whose_work_fails_to_start_is_released_for_another_try(
    work: Work,
) -> None:
    bucket = Bucket()
    a = work.keeper(bucket, "a", 0, fail={0}, grace=60)
    await step(a)
    assert slot_key(0) in bucket.entries
    await step(a)
    assert ("told", "", 0) in work.log
    # Released, then taken again at the same step: its own slot is always tried.
    assert work.running == {}


async def test_a_stopping_replica_stops_its_slots_and_releases_their_leases(
    work: Work,
) -> None:
    bucket = Bucket()
    a = work.keeper(bucket, "a", 0, grace=60)
    stopping = asyncio.Event()
    task = asyncio.create_task(a.run(stopping))

    async def running() -> None:
        while work.running != {0: "a"}:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(running(), 5)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert work.running == {} and bucket.entries == {}
