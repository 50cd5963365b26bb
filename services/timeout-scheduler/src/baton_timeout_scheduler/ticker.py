"""Fire due deadlines: ask the dispatcher, and forget a row only once it answered.

Every tick the ticker reads the rows whose next attempt is due and sends each a
`DeadlineDue` request (at most `max_in_flight` at a time, never two for the same row).
- "applied" / "ignored" / "unknown": the dispatcher settled it (or there is nothing to
  settle): the row is deleted.
- "not-yet": the dispatcher's clock is behind ours: keep the row, try again shortly.
- "reports-pending": an answer from before the deadline may not be applied yet (a bridge's
  watermark is not past it, or a report of the device waits in the stream): keep the row,
  ask again quietly, soon: after `pending_retry`, then one `pending_retry` later each time up
  to `pending_cap` (a healthy bridge's watermark passes a deadline within some 0.25 s; a bridge
  that is away may hold deadlines back for a minute, and each ask costs the dispatcher a read).
- no responders, timeout, an unreadable reply, or a reply saying the dispatcher failed on it
  (a problem with status 500 and up, e.g. JetStream not answering during a NATS restart): keep
  the row, try again with backoff. Such a reply settled nothing; deleting the row would leave
  the execution running for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

from baton_contracts.nats import DeadlineDue, DeadlineReply
from baton_platform.logs import about
from baton_timeout_scheduler.store import Deadline, Deadlines, Kind

log = logging.getLogger(__name__)

SETTLED = frozenset({"applied", "ignored", "unknown"})

Clock = Callable[[], datetime]


class DispatcherUnavailableError(Exception):
    """The dispatcher did not answer (no responders, timeout, unreadable reply)."""


# Sends one DeadlineDue and returns the dispatcher's reply, or raises DispatcherUnavailableError.
Requester = Callable[[DeadlineDue], Awaitable[DeadlineReply]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after `attempts` failed ones (1, 2, ...)."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


class Ticker:
    def __init__(
        self,
        deadlines: Deadlines,
        request: Requester,
        tick: float,
        max_in_flight: int = 64,
        retry_base: float = 0.5,
        retry_cap: float = 5.0,
        clock: Clock = utc_now,
        pending_retry: float = 0.25,
        pending_cap: float = 1.0,
    ) -> None:
        self.deadlines = deadlines
        self.request = request
        self.tick = tick
        self.max_in_flight = max_in_flight
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.clock = clock
        self.pending_retry = pending_retry
        self.pending_cap = pending_cap
        self._in_flight: dict[tuple[UUID, Kind], asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Tick until cancelled; a failing tick is logged and the next one tries again."""
        try:
            while True:
                try:
                    await self.fire_due()
                except Exception:
                    log.exception("deadline tick failed")
                await asyncio.sleep(self.tick)
        finally:
            await self.drain()

    async def fire_due(self) -> int:
        """Start a request for each due row not already in flight; returns how many started."""
        free = self.max_in_flight - len(self._in_flight)
        if free <= 0:
            return 0
        rows = await self.deadlines.due(self.clock(), limit=free + len(self._in_flight))
        started = 0
        for row in rows:
            key = (row.execution_id, row.kind)
            if key in self._in_flight or started >= free:
                continue
            task = asyncio.create_task(self._fire(row), name=f"deadline-{row.execution_id}")
            self._in_flight[key] = task
            task.add_done_callback(self._forget)
            started += 1
        return started

    def _forget(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._in_flight.items()):
            if running is task:
                del self._in_flight[key]

    async def drain(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fire(self, row: Deadline) -> None:
        with about(row.execution_id):  # every line below names it (baton_platform.logs)
            await self._fire_about(row)

    async def _fire_about(self, row: Deadline) -> None:
        try:
            reply = await self.request(DeadlineDue(execution_id=row.execution_id, kind=row.kind))
        except DispatcherUnavailableError as exc:
            await self._retry_later(row, f"dispatcher unavailable ({exc})")
            return
        except Exception:
            log.exception("deadline request for %s failed", row.execution_id)
            await self._retry_later(row, "request failed")
            return
        if reply.problem is not None and reply.problem.status >= 500:
            await self._retry_later(row, f"the dispatcher failed on it ({reply.problem.code})")
            return
        if reply.outcome in SETTLED:
            await self.deadlines.delete(row.execution_id, row.kind)
            late = (self.clock() - row.due_at).total_seconds()
            log.info(
                "deadline fired: execution %s due %s (%.2fs ago) -> %s",
                row.execution_id,
                row.due_at.isoformat(),
                late,
                reply.outcome,
            )
        elif reply.outcome == "reports-pending":
            # Expected on every deadline (the watermark passes it a moment later), after a
            # restart, under load: not worth a warning, nor a backoff beyond a second.
            delay = min(self.pending_retry * (row.attempts + 1), self.pending_cap)
            when = self.clock() + timedelta(seconds=delay)
            await self.deadlines.postpone(row.execution_id, when, row.kind)
            log.debug("deadline for %s waits for its device's reports", row.execution_id)
        else:
            await self._retry_later(row, "dispatcher says not yet (clock skew)")

    async def _retry_later(self, row: Deadline, why: str) -> None:
        delay = backoff(row.attempts + 1, self.retry_base, self.retry_cap)
        attempts = await self.deadlines.postpone(
            row.execution_id, self.clock() + timedelta(seconds=delay), row.kind
        )
        # The first failure is worth a warning; the retries of a long outage are not.
        level = logging.WARNING if attempts <= 1 else logging.DEBUG
        log.log(
            level,
            "deadline for %s not fired: %s; attempt %d, next in %.1fs",
            row.execution_id,
            why,
            attempts,
            delay,
        )
