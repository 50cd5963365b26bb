"""Runs the execution views' projection inside the api process, and lets requests wait on it.

The loop reads the event store's notification log after the stored position and applies
what it read, up to `batch` events, in one transaction of the views (in a worker thread:
eventsourcing and sqlite3 are synchronous). It wakes early when `wake()` is called (a NATS
lifecycle event arrived) and otherwise polls, so it keeps the views current with NATS down.

Waiting costs no reads per waiter: each applied batch reports which executions it ended,
and only their waiters are woken, through one notifier per execution that all of its
waiters share (docs/architecture.md, "Waiting").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

from baton_domain.application import Executions
from baton_platform.metrics import WAITING_REQUESTS
from baton_views import ExecutionView, ExecutionViews, read_events

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class _Notifier:
    """Set once the views show the execution ended; shared by everyone waiting for that."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class ProjectionRunner:
    def __init__(
        self,
        executions: Executions,
        views: ExecutionViews,
        poll_interval: float,
        batch: int = BATCH,
    ) -> None:
        self._executions = executions
        self._views = views
        self._poll_interval = poll_interval
        self._batch = batch
        self._wake = asyncio.Event()
        # Replaced on every advance: setting the old one releases everyone waiting on it.
        self._advanced = asyncio.Event()
        self._notifiers: dict[UUID, _Notifier] = {}
        self._stopping = False
        self.position = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Ask `run` to return after the step in hand.

        Cancelling it instead could leave a worker thread inside sqlite while the
        connections are being closed, which crashes the interpreter.
        """
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Project until stopped. Errors are logged and retried: reads must keep working."""
        while not self._stopping:
            try:
                if await self.step():
                    continue  # there may be more: drain before sleeping
            except Exception:
                log.exception("projection step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            self._wake.clear()

    async def step(self) -> bool:
        """Apply one batch of new events; returns whether there were any."""
        ended: set[UUID] = set()
        position, applied = await asyncio.to_thread(self._apply_next, ended)
        self._advance(position)
        # After the commit, so a woken waiter's read sees the end.
        for execution_id in ended:
            notifier = self._notifiers.get(execution_id)
            if notifier is not None:
                notifier.ended.set()
        return applied

    def _apply_next(self, ended: set[UUID]) -> tuple[int, bool]:
        """In a worker thread: the next `batch` events after the views' position, applied
        in one transaction. Returns (the views' position, whether there were events)."""
        after = self._views.position()
        events = read_events(self._executions, after, self._batch)
        if not events:
            return after, False
        return self._views.apply(events, ended), True

    def _advance(self, position: int) -> None:
        if position == self.position:
            return
        self.position = position
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    # --- waiting ---------------------------------------------------------------------------

    async def wait_for_position(self, position: int, within: float) -> bool:
        """True once the views include the event at `position`; False after `within` s."""
        deadline = time.monotonic() + within
        while self.position < position:
            if not await self._next_advance(deadline):
                return self.position >= position
        return True

    @property
    def waited_on(self) -> int:
        """How many executions have someone waiting for their end (a notifier each)."""
        return len(self._notifiers)

    async def wait_until_terminal(
        self, execution_id: UUID, within: float, with_log: bool = False
    ) -> ExecutionView | None:
        """The execution as soon as the views show it ended, or as it is after `within` s.

        Two reads of the views whatever happens meanwhile: one now (it may have ended
        already) and one when woken or out of time. The notifier is registered before the
        first read, so an end projected between that read and the wait still wakes it.
        """
        deadline = time.monotonic() + within
        notifier = self._notifiers.get(execution_id)
        if notifier is None:
            notifier = self._notifiers[execution_id] = _Notifier()
        notifier.waiters += 1
        WAITING_REQUESTS.inc()
        try:
            execution = await asyncio.to_thread(self._views.get, execution_id, with_log)
            if execution is not None and execution.is_terminal:
                return execution
            self.wake()  # a waiter usually follows a write: look now rather than at the next poll
            with contextlib.suppress(TimeoutError):
                remaining = max(0.0, deadline - time.monotonic())
                await asyncio.wait_for(notifier.ended.wait(), timeout=remaining)
            return await asyncio.to_thread(self._views.get, execution_id, with_log)
        finally:
            WAITING_REQUESTS.dec()
            notifier.waiters -= 1
            if notifier.waiters == 0:
                del self._notifiers[execution_id]

    async def _next_advance(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.wake()  # a waiter usually follows a write: look now rather than at the next poll
        try:
            await asyncio.wait_for(self._advanced.wait(), timeout=remaining)
        except TimeoutError:
            return False
        return True
