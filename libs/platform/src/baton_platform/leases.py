"""Leases: who among a service's replicas does a job that must be done by one at a time.

A lease is one key of the JetStream key-value bucket BATON_LEASES (docs/operations.md,
"Replicas"). The bucket's `max_age` is the lease's time to live, so a key whose holder
stopped renewing it disappears on its own; taking a lease is `create` (succeeds only when
the key is absent), renewing is `update` against the revision last written (fails once
anyone else wrote it), and releasing is a delete against that revision. Everything relies on
JetStream's compare-and-set of a subject's last sequence, replicated like the rest of the
stream: no clock is compared across machines.

The holder stops believing it holds the lease before the server can give it to anyone else:
`held` turns false `TTL_S - SAFETY_S` after the start of the last write that succeeded, while
the key lives for `TTL_S` after that write reached the server. A holder that cannot reach
NATS (a network partition) thus gives its work up on its own clock, before another replica
can take it. The work itself must still be safe to overlap in the rare case a holder is
paused past that (a process frozen mid-write): the event store's per-stream version check
is that fence for the dispatcher (docs/architecture.md, "Replicas").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from baton_contracts.nats import LEASES_BUCKET
from baton_platform.metrics import LEASE_HELD
from baton_platform.nats import ensure_bucket

log = logging.getLogger(__name__)

TTL_S = 6.0  # how long a lease outlives its holder's last renewal
SAFETY_S = 1.5  # how much earlier the holder gives it up (clock drift, the write's way back)
RENEW_S = TTL_S / 4  # how often it is renewed, and how often a free one is tried


def holder_name(service: str, instance: str) -> str:
    """The replica's name, the same across its restarts: a replica restarted after a crash
    takes its own leases back at once rather than after they lapse (the work of its previous
    run has stopped with it). So every replica of a service needs its own BATON_INSTANCE,
    as it does for its NATS consumers and MQTT session (docs/operations.md)."""
    return f"{service}.{instance}"


async def open_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The leases bucket with `replicas` copies (BATON_NATS_REPLICAS), scaled in place when
    it was made with another count."""
    return await ensure_bucket(js, LEASES_BUCKET, history=1, replicas=replicas, ttl=TTL_S)


class Lease:
    def __init__(self, bucket: KeyValue, key: str, holder: str) -> None:
        self.key = key
        self.holder = holder
        self._bucket = bucket
        self._revision: int | None = None
        self._valid_until = 0.0  # time.monotonic()

    @property
    def held(self) -> bool:
        return self._revision is not None and time.monotonic() < self._valid_until

    async def keep(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; returns whether it is held.

        A failure to reach NATS leaves the lease as it was: held until its time is up."""
        started = time.monotonic()
        try:
            if self._revision is None or not self.held:
                self._revision = None
                revision = await self._create_or_reclaim()
            else:
                revision = await self._bucket.update(
                    self.key, self.holder.encode(), last=self._revision
                )
        except KeyWrongLastSequenceError:
            if self._revision is not None:
                log.warning("lease %s was taken over", self.key)
            self._revision = None
            return False
        except Exception as exc:  # NATS unreachable, a timeout: try again next time
            log.debug("lease %s not renewed (%s)", self.key, exc)
            return self.held
        self._revision = revision
        self._valid_until = started + TTL_S - SAFETY_S
        return True

    async def _create_or_reclaim(self) -> int:
        try:
            return await self._bucket.create(self.key, self.holder.encode())
        except KeyWrongLastSequenceError:
            entry = await self._bucket.get(self.key)
            if entry.value != self.holder.encode() or entry.revision is None:
                raise
            # Ours, from this replica's previous run: take it back where it stands.
            return await self._bucket.update(self.key, self.holder.encode(), last=entry.revision)

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), so another replica need not wait."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        with contextlib.suppress(Exception):
            await self._bucket.delete(self.key, last=revision)


async def while_held(
    lease: Lease,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Run the job for as long as this process holds `lease`: `start` when it is taken,
    `stop` when it is lost (or `stopping` is set, which also releases it). Every replica
    runs this; one at a time does the job.

    A `start` that fails is stopped and the lease released, so another replica may try;
    this one tries again after `RENEW_S`. So is a job that `alive` says has ended while
    the lease is held: a lease kept for a job that no longer runs stops it everywhere."""
    running = False
    try:
        while not stopping.is_set():
            held = await lease.keep()
            if held and running and alive is not None and not alive():
                log.error("the work of lease %s ended while held; released", lease.key)
                LEASE_HELD.labels(lease.key).set(0)
                running = False
                await _give_up(lease, stop, stopping)
                continue
            if held and not running:
                log.info("took lease %s as %s", lease.key, lease.holder)
                try:
                    await start()
                except Exception:
                    log.exception("could not start the work of lease %s; released", lease.key)
                    await _give_up(lease, stop, stopping)
                    continue
                running = True
                LEASE_HELD.labels(lease.key).set(1)
            elif not held and running:
                log.warning("lost lease %s; stopping its work", lease.key)
                LEASE_HELD.labels(lease.key).set(0)
                await _stop_quietly(lease, stop)
                running = False
            await _pause(stopping, _until_next(lease))
    finally:
        if running:
            LEASE_HELD.labels(lease.key).set(0)
            await stop()
        await lease.release()
        if running:
            log.info("released lease %s", lease.key)


async def hold(
    js: JetStreamContext,
    key: str,
    holder: str,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    replicas: int = 1,
    alive: Callable[[], bool] | None = None,
) -> None:
    """`while_held` on lease `key` of the bucket, opened first (retried while JetStream
    does not answer: a replica starting while NATS is down takes its turn once it is up).
    `replicas`: the bucket's copies (BATON_NATS_REPLICAS)."""
    failures = 0
    while not stopping.is_set():
        try:
            bucket = await open_bucket(js, replicas)
        except Exception as exc:
            failures += 1  # the first is worth a warning, the retries of an outage are not
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "lease bucket not available (%s); trying again", exc)
            await _pause(stopping, RENEW_S)
            continue
        await while_held(Lease(bucket, key, holder), start, stop, stopping, alive)
        return


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


async def _give_up(
    lease: Lease, stop: Callable[[], Awaitable[None]], stopping: asyncio.Event
) -> None:
    """Stop the work, release the lease for another replica, and try again after RENEW_S."""
    await _stop_quietly(lease, stop)
    await lease.release()
    await _pause(stopping, RENEW_S)


async def _stop_quietly(lease: Lease, stop: Callable[[], Awaitable[None]]) -> None:
    try:
        await stop()
    except Exception:
        log.exception("stopping the work of lease %s failed", lease.key)


def _until_next(lease: Lease) -> float:
    """Renew on schedule, but never later than the moment the lease would lapse here."""
    if not lease.held:
        return RENEW_S
    return max(0.05, min(RENEW_S, lease._valid_until - time.monotonic()))
