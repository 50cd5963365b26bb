"""Which devices this dispatcher writes: the partitions whose leases it holds.

Devices fall into `PARTITIONS` partitions (`baton_contracts.nats.partition_of`). A dispatcher
writes a device's streams only while it holds the lease `partition.<n>` of the device's
partition (baton_platform.leases): it then answers the partition's request subjects and
consumes the partition's device reports. Every dispatcher also keeps a lease of its own,
`dispatchers.<holder>`, so each can count the live ones and knows its share of the
partitions. It takes every free partition (one without a holder is worse than one with a
busy holder) and gives away those above its share, so a new replica gets its share within
seconds, a stopped one's partitions are taken as soon as it says so, and a dead one's once
their leases lapse (docs/architecture.md, "Replicas").
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from baton_contracts.nats import (
    DISPATCHER_MEMBER_LEASE,
    LEASES_BUCKET,
    PARTITION_LEASE,
    PARTITIONS,
    lease_pattern,
)
from baton_platform.leases import RENEW_S, Lease

log = logging.getLogger(__name__)

# A partition given away is not taken back at the next step: time for the replica it was
# given away to (told at once: `look_now`) to take it. Short, because a partition given to a
# replica that then stops must be taken back soon (requests wait for it).
COOL_OFF_S = RENEW_S


def partition_key(partition: int) -> str:
    return PARTITION_LEASE.format(partition=partition)


class PartitionKeeper:
    """Keeps this dispatcher's share of the partitions: `start(n)` once partition n is held,
    `stop(n)` before it is given away or once it is lost. `held` is what it writes now."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: KeyValue,
        holder: str,
        start: Callable[[int], Awaitable[None]],
        stop: Callable[[int], Awaitable[None]],
        released: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._js = js
        self._bucket = bucket
        self._holder = holder
        self._start = start
        self._stop = stop
        self._released = released  # tell the others (they `look_now`)
        self._leases: dict[int, Lease] = {}
        self._given_away: dict[int, float] = {}  # partition -> time.monotonic()
        self._look = asyncio.Event()
        self._renewed_at = 0.0  # time.monotonic() of the last renewal round
        # Its own member key: one NATS token, unique to this process.
        member = DISPATCHER_MEMBER_LEASE.format(holder=holder.replace(".", "-"))
        self._member = Lease(bucket, member, holder)

    def holds(self, partition: int) -> bool:
        lease = self._leases.get(partition)
        return lease is not None and lease.held

    @property
    def held(self) -> list[int]:
        return sorted(p for p in self._leases if self.holds(p))

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    await self.step()
                except Exception:
                    log.exception("keeping the partitions failed; again shortly")
                await self._pause(stopping)
        finally:
            for partition in list(self._leases):
                await self._give_up(partition)
            await self._member.release()

    @property
    def holder(self) -> str:
        return self._holder

    def look_now(self) -> None:
        """Another dispatcher gave partitions away: take them now, not at the next renewal,
        even those this one gave away a moment ago (their taker may be the one leaving)."""
        self._given_away.clear()
        self._look.set()

    async def _pause(self, stopping: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._look.wait())}
        _, pending = await asyncio.wait(waits, timeout=RENEW_S, return_when=FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        self._look.clear()

    async def step(self) -> None:
        """Renew what is held, then move towards this dispatcher's share."""
        await self._renew()
        try:
            members = await self._members()
        except Exception as exc:  # NATS unreachable: nothing to balance with
            log.debug("cannot count the dispatchers: %s", exc)
            return
        share = math.ceil(PARTITIONS / members)
        for partition in sorted(self._leases, reverse=True)[: max(0, len(self._leases) - share)]:
            await self._give_up(partition)
            self._given_away[partition] = time.monotonic()
        await self._take_free()

    async def _renew(self) -> None:
        self._renewed_at = time.monotonic()
        await self._member.keep()
        for partition, lease in list(self._leases.items()):
            if not await lease.keep():
                log.warning("lost partition %d", partition)
                del self._leases[partition]
                await self._stop_quietly(partition)

    async def _take_free(self) -> None:
        now = time.monotonic()
        candidates = [
            p
            for p in range(PARTITIONS)
            if p not in self._leases and now - self._given_away.get(p, -COOL_OFF_S) >= COOL_OFF_S
        ]
        # In random order, so that replicas starting together do not all ask for the same.
        random.shuffle(candidates)
        for partition in candidates:
            if time.monotonic() - self._renewed_at >= RENEW_S:
                # Starting a partition takes a second or more on a loaded cluster: taking
                # several must not let those held lapse meanwhile. Seen in a chaos run: a
                # dispatcher took 8 partitions over in 10 s, renewed nothing meanwhile, and
                # the restarted other one took all 15 whose leases had lapsed.
                await self._renew()
            lease = Lease(self._bucket, partition_key(partition), self._holder)
            if await lease.keep():
                self._leases[partition] = lease
                log.info("took partition %d", partition)
                await self._start(partition)

    async def _give_up(self, partition: int) -> None:
        """Stop its work first, then let it go, so the next holder starts after this one."""
        lease = self._leases.pop(partition)
        await self._stop_quietly(partition)
        await lease.release()  # NATS gone: the lease lapses on its own
        log.info("gave partition %d away", partition)
        if self._released is not None:
            try:
                await self._released()
            except Exception as exc:  # they take it at their next renewal
                log.debug("could not tell the others: %s", exc)

    async def _stop_quietly(self, partition: int) -> None:
        """Stop the partition's work whatever fails on the way (a closed connection): what
        cannot be unsubscribed goes with the connection."""
        try:
            await self._stop(partition)
        except Exception as exc:
            log.warning("stopping partition %d: %s", partition, exc)

    async def _members(self) -> int:
        """The live dispatchers: the member keys in the bucket whose last entry is a value.

        A member key a dispatcher released on a clean stop stays in the stream as a delete
        marker until it ages out (`TTL_S`). Counted as a member, it had the others give
        partitions away to nobody at each step for those seconds, each left unserved for a
        cool-off: requests on them waited 1.5 s, again and again."""
        prefix = f"$KV.{LEASES_BUCKET}."
        info = await self._js.stream_info(
            f"KV_{LEASES_BUCKET}", subjects_filter=prefix + lease_pattern(DISPATCHER_MEMBER_LEASE)
        )
        live = 0
        for subject in info.state.subjects or {}:
            try:
                await self._bucket.get(subject.removeprefix(prefix))
            except KeyNotFoundError:  # deleted, or aged out since the listing
                continue
            live += 1
        return max(1, live)
