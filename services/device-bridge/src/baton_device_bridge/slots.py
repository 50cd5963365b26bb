"""Which slots this bridge replica runs: its own, and a dead replica's until it is back.

With `BATON_BRIDGE_REPLICAS=N` the devices fall into N slots (`sha256(device id) mod N`,
baton_device_bridge.replicas). Everything a share of the devices needs across processes
hangs off its slot, not off a process: the MQTT client id and persistent session, the
events durable, the watermark, the probe topic (`slot_settings`), and the raw-mapped
devices' in-flight record, kept in JetStream (baton_device_bridge.in_flight). A slot is run
by one process at a time: the holder of its lease `bridge.<k>` (baton_platform.leases).

Replica i prefers slot i: it always tries to take it. While it lives it also keeps a member
key, `bridge-replicas.<i>`. Another replica takes slot k only while nobody holds it and
replica k's member key is gone (replica k dead: both lapse `TTL_S` after its last
renewal), and gives it back as soon as the member key is there again, stopping the slot's
work first and then releasing the lease, so the two never overlap; it says so on a
core-NATS subject and replica k takes its slot at once rather than at its next try.

A holder that cannot renew stops the slot's work on its own clock, `SAFETY_S` before the
lease can lapse on the server (every step's NATS call is bounded by the time left), and the
slot's start runs in a task of its own, so a slow start never delays a renewal. The MQTT
broker is the second fence: a session taken with the slot's client id disconnects the
older one (docs/architecture.md, "Bridge slots").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from baton_contracts.nats import BRIDGE_MEMBER_LEASE, BRIDGE_SLOT_LEASE
from baton_platform import leases
from baton_platform.leases import Lease
from baton_platform.metrics import LEASE_HELD

log = logging.getLogger(__name__)

T = TypeVar("T")
SlotWork = Callable[[int], Awaitable[None]]


def slot_key(slot: int) -> str:
    return BRIDGE_SLOT_LEASE.format(slot=slot)


def member_key(replica: int) -> str:
    return BRIDGE_MEMBER_LEASE.format(replica=replica)


class SlotKeeper:
    """Runs `start(k)` for each slot k this replica takes (in a task of its own) and
    `stop(k)` before it lets the slot go or once it lost it. `running` is what it runs now."""

    def __init__(
        self,
        bucket: KeyValue,
        holder: str,
        own: int,
        slots: int,
        start: SlotWork,
        stop: SlotWork,
        released: SlotWork | None = None,
        grace: float | None = None,
    ) -> None:
        self._bucket = bucket
        self._holder = holder
        self.own = own
        self.slots = slots
        self._start = start
        self._stop = stop
        self._released = released
        self._member = Lease(bucket, member_key(own), holder)
        self._leases: dict[int, Lease] = {}  # the slots held
        self._starting: dict[int, asyncio.Task[None]] = {}
        self._look = asyncio.Event()
        # How long a replica must have been seen gone before its slot is taken, while this
        # keeper is young (just started, or just back from NATS trouble that cost it a
        # lease): replicas starting together, or all cut off together, do not take each
        # other's slots only to give them back. Otherwise a replica is gone once its member
        # key lapsed (TTL_S of silence already): its slot is taken at once, ~3 s sooner.
        self._grace = 2 * leases.RENEW_S if grace is None else grace
        self._young_until = time.monotonic() + 2 * leases.TTL_S
        self._gone_since: dict[int, float] = {}  # replica -> time.monotonic()

    @property
    def running(self) -> list[int]:
        return [k for k in range(self.slots) if self.holds(k)]

    def holds(self, slot: int) -> bool:
        """Whether this process may run `slot` now: its lease held, on this process's clock."""
        lease = self._leases.get(slot)
        return lease is not None and lease.held

    def look_now(self) -> None:
        """A replica gave a slot back: try to take it now, not at the next renewal."""
        self._look.set()

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    await self.step()
                except Exception:
                    log.exception("keeping the bridge slots failed; again shortly")
                await self._pause(stopping)
        finally:
            for slot in list(self._leases):
                await self._let_go(slot, tell=False)
            await self._member.release()

    async def step(self) -> None:
        """Renew what is held, give back what its own replica wants, take what is free."""
        await self._stop_lapsed()
        await self._bounded(self._member.keep(), False)
        for slot, lease in list(self._leases.items()):
            if not await self._bounded(lease.keep(), lease.held):
                log.warning("lost bridge slot %d; stopping its work", slot)
                await self._drop(slot)
                self._young_again()
        await self._stop_lapsed()
        for slot, task in list(self._starting.items()):
            if task.done() and (task.cancelled() or task.exception() is not None):
                log.error("could not start bridge slot %d: %r; released", slot, task.exception())
                await self._let_go(slot, tell=True)
        for slot in [k for k in self._leases if k != self.own]:
            if await self._alive(slot):
                log.info("replica %d is back: giving bridge slot %d back", slot, slot)
                await self._let_go(slot, tell=True)
        for slot in self._wanted():
            if slot not in self._leases and (slot == self.own or await self._gone(slot)):
                await self._take(slot)

    def _wanted(self) -> list[int]:
        """Its own slot first: a replica always tries to take it."""
        return [self.own, *(k for k in range(self.slots) if k != self.own)]

    async def _take(self, slot: int) -> None:
        lease = Lease(self._bucket, slot_key(slot), self._holder)
        if not await self._bounded(lease.keep(), False):
            return
        self._leases[slot] = lease
        LEASE_HELD.labels(lease.key).set(1)
        if slot == self.own:
            log.info("took bridge slot %d (its own) as %s", slot, self._holder)
        else:
            log.warning("took bridge slot %d of replica %d, which is gone", slot, slot)
        self._starting[slot] = asyncio.ensure_future(self._start(slot))

    async def _gone(self, replica: int) -> bool:
        """Whether replica `replica` is gone: its member key lapsed (for the grace period,
        while this keeper is young)."""
        if await self._alive(replica):
            self._gone_since.pop(replica, None)
            return False
        now = time.monotonic()
        since = self._gone_since.setdefault(replica, now)
        return now >= self._young_until or now - since >= self._grace

    async def _alive(self, replica: int) -> bool:
        """Whether replica `replica` keeps its member key (it lives). Unknown (NATS not
        answering) counts as alive: nothing is taken from it on a guess."""
        try:
            await asyncio.wait_for(self._bucket.get(member_key(replica)), self._budget())
        except KeyNotFoundError:
            return False
        except Exception as exc:
            log.debug("cannot tell whether bridge replica %d lives: %r", replica, exc)
        return True

    async def _stop_lapsed(self) -> None:
        """Stop, on this process's clock, the work of every slot whose lease is no longer
        held here: before the server can give it to anyone else."""
        for slot, lease in list(self._leases.items()):
            if not lease.held:
                log.warning("bridge slot %d not renewed in time; stopping its work", slot)
                await self._drop(slot)
                self._young_again()

    def _young_again(self) -> None:
        """This keeper could not renew (NATS, or its leases' bucket, away): the others likely
        could not either, and are as good as starting again. The grace applies to them anew,
        so their slots are not taken only to be given back a moment later."""
        self._young_until = time.monotonic() + 2 * leases.TTL_S

    async def _drop(self, slot: int) -> None:
        """Stop the slot's work; the lease is not ours any more (or soon will not be)."""
        lease = self._leases.pop(slot)
        LEASE_HELD.labels(lease.key).set(0)
        await self._stop_work(slot)

    async def _let_go(self, slot: int, tell: bool) -> None:
        """Stop the slot's work first, then release its lease: the next holder starts after."""
        lease = self._leases.pop(slot, None)
        if lease is None:
            return
        LEASE_HELD.labels(lease.key).set(0)
        await self._stop_work(slot)
        await lease.release()  # NATS gone: it lapses on its own
        log.info("released bridge slot %d", slot)
        if tell and self._released is not None:
            try:
                await self._released(slot)
            except Exception as exc:  # its replica takes it at its next try
                log.debug("could not tell the replicas: %s", exc)

    async def _stop_work(self, slot: int) -> None:
        task = self._starting.pop(slot, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        try:
            await self._stop(slot)
        except Exception:
            log.exception("stopping bridge slot %d failed", slot)

    def _budget(self) -> float:
        """How long a NATS call may take: no later than the first held lease would lapse."""
        now = time.monotonic()
        ends = [lease._valid_until - now for lease in self._leases.values() if lease.held]
        return max(0.05, min([leases.RENEW_S, *ends]))

    async def _bounded(self, call: Awaitable[T], otherwise: T) -> T:
        try:
            return await asyncio.wait_for(call, self._budget())
        except TimeoutError:
            return otherwise

    async def _pause(self, stopping: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._look.wait())}
        _, pending = await asyncio.wait(waits, timeout=self._budget(), return_when=FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        self._look.clear()
