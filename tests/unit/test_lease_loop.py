"""`while_held`, the loop every replica runs around its lease, against an in-memory bucket
with the same compare-and-set rules as JetStream's (the real one: test_leases.py): the job
starts when the lease is taken, stops when it is lost, and a job that fails to start gives
the lease up for another replica to try."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from baton_platform import leases
from baton_platform.leases import Lease, while_held
from baton_platform.metrics import LEASE_HELD
from tests.conftest import eventually


class Bucket:
    """One key's compare-and-set, in memory."""

    def __init__(self) -> None:
        self.revision = 0
        self.value: bytes | None = None

    async def create(self, key: str, value: bytes) -> int:
        if self.value is not None:
            raise KeyWrongLastSequenceError("exists")
        return self._write(value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if last != self.revision or self.value is None:
            raise KeyWrongLastSequenceError("wrong last sequence")
        return self._write(value)

    async def delete(self, key: str, last: int) -> None:
        if last == self.revision:
            self.value = None
            self.revision += 1

    def _write(self, value: bytes) -> int:
        self.revision += 1
        self.value = value
        return self.revision


@pytest.fixture(autouse=True)
def quick() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leases, "RENEW_S", 0.02)
        yield


def held_gauge(key: str) -> float:
    return float(LEASE_HELD.labels(key)._value.get())


async def test_a_job_that_fails_to_start_gives_the_lease_up_and_is_tried_again() -> None:
    bucket = Bucket()
    lease = Lease(cast(KeyValue, bucket), "job", "a")
    calls: list[str] = []

    async def start() -> None:
        calls.append("start")
        if calls.count("start") == 1:
            raise RuntimeError("store unreachable")

    async def stop() -> None:
        calls.append("stop")

    stopping = asyncio.Event()
    task = asyncio.create_task(while_held(lease, start, stop, stopping))
    await eventually(lambda: _true(calls.count("start") == 2), what="started again")
    assert calls[:2] == ["start", "stop"]  # cleaned up after the failure
    assert held_gauge("job") == 1
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert calls == ["start", "stop", "start", "stop"]
    assert bucket.value is None  # released on the way out
    assert held_gauge("job") == 0


async def test_a_lease_taken_over_stops_the_job_and_it_is_not_started_again_while_held() -> None:
    bucket = Bucket()
    lease = Lease(cast(KeyValue, bucket), "job2", "a")
    calls: list[str] = []

    async def start() -> None:
        calls.append("start")

    async def stop() -> None:
        calls.append("stop")

    stopping = asyncio.Event()
    task = asyncio.create_task(while_held(lease, start, stop, stopping))
    await eventually(lambda: _true(calls == ["start"]), what="started")
    bucket._write(b"b")  # another replica wrote the key (it had lapsed, say)
    await eventually(lambda: _true(calls == ["start", "stop"]), what="stopped")
    assert held_gauge("job2") == 0
    await asyncio.sleep(0.1)  # several tries: the key is the other's
    assert calls == ["start", "stop"]
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert bucket.value == b"b"  # not ours to release


async def _true(value: bool) -> bool:
    return value
