"""Runs the execution views' projection inside the api process, and lets requests wait on it.

Every api replica reads the views; the one holding lease `projection` writes them
(docs/architecture.md, "Replicas"). While this process projects, the loop reads the event
store's notification log after the stored position and applies what it read, up to `batch`
events, in one transaction of the views (in a worker thread: eventsourcing and sqlite3 are
synchronous). It wakes early when a NATS lifecycle event arrives and otherwise polls. After
each batch it announces what it did (`ViewsAdvanced`: the new position and the executions
the batch ended) to the other replicas.

While another replica projects, this one follows: each announcement moves its position and
wakes the waiters of the executions it names. Announcements are core NATS, at most once, so
the loop also reads the views' position every `poll_interval`: a gap between announcements,
or a position read that no announcement has covered `poll_interval` later, means one was
missed, and then every waiter reads its execution again (`Follower`).

Waiting costs no reads per waiter: each applied batch reports which executions it ended,
and only their waiters are woken, through one notifier per execution that all of its
waiters share (docs/architecture.md, "Waiting").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from baton_contracts.nats import ViewsAdvanced
from baton_domain.application import Executions
from baton_platform import metrics
from baton_platform.lifecycle import rest_of
from baton_platform.metrics import WAITING_REQUESTS
from baton_views import ExecutionView, ExecutionViews, read_events

log = logging.getLogger(__name__)

BATCH = 500
# The least time between the starts of two steps while events keep coming, set by the
# size of the last batch: `LINGER_PER_EVENT_S` for each of its events, within the bounds.
# A step costs about ten statements whatever it holds, so stepping every 4 ms under load
# burns a quarter of a core on them alone. Idle, a command's events come a few at a time and
# each waits at most a few ms; from about 500 events/s (70 commands/s) each batch makes the
# next one longer, up to `LINGER_MAX_S`: then a step holds every event of 25 ms, the
# statements shared by ~15 commands (docs/benchmarks.md, "The projection's linger").
LINGER_MIN_S = 0.004
LINGER_MAX_S = 0.025
LINGER_PER_EVENT_S = 0.002


def linger(events: int) -> float:
    """How long after the start of a step that read `events` the next one may start."""
    return min(LINGER_MAX_S, max(LINGER_MIN_S, events * LINGER_PER_EVENT_S))


Announce = Callable[[ViewsAdvanced], Awaitable[None]]


@dataclass
class _Notifier:
    """Set once the views show the execution ended; shared by everyone waiting for that.

    `ended` is also set (and then replaced) when an announcement was missed: the execution
    may have ended, so its waiters read it again and, if it has not, wait on."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0


class Follower:
    """What a replica that does not project knows of the views from announcements and
    polls, and when it must assume it missed one. Pure: no I/O; the time is passed in."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # how long an announcement may take to arrive after its commit
        self.position = 0  # the views include everything up to here
        self.announced = 0  # announcements heard, without a gap, up to here
        # The oldest position read that no announcement has covered yet, and since when.
        self._unannounced: tuple[int, float] | None = None
        self._started = False  # the first poll or announcement is where we start from

    def heard(self, message: ViewsAdvanced) -> bool:
        """An announcement; returns whether one before it was missed."""
        missed = self._started and message.after > self.announced
        self._started = True
        self.announced = max(self.announced, message.position)
        self.position = max(self.position, message.position)
        return missed

    def polled(self, position: int, now: float) -> bool:
        """The views' position read at `now`; returns whether an announcement was missed:
        a position read `grace` seconds ago or more is still not announced."""
        if not self._started:
            self._started = True
            self.announced = max(self.announced, position)
        self.position = max(self.position, position)
        missed = False
        if self._unannounced is not None:
            oldest, since = self._unannounced
            if oldest > self.announced and now - since >= self.grace:
                missed = True
                self.announced = oldest
            if oldest > self.announced:
                return missed  # still waiting for that one's announcement
        self._unannounced = (position, now) if position > self.announced else None
        return missed

    def projected(self, position: int) -> None:
        """This process wrote the views up to `position` (it knows what ended)."""
        self.position = max(self.position, position)
        self.announced = max(self.announced, position)
        self._unannounced = None
        self._started = True


class ProjectionRunner:
    def __init__(
        self,
        executions: Executions,
        views: ExecutionViews,
        poll_interval: float,
        batch: int = BATCH,
        *,
        name: str = "",
        announce: Announce | None = None,
        projecting: bool = True,
    ) -> None:
        self._executions = executions
        self._views = views
        self._poll_interval = poll_interval
        self._batch = batch
        self.name = name  # this process's name as a projector (its lease holder name)
        self._announce = announce
        self._projecting = projecting
        self._stepping = asyncio.Lock()
        self._wake = asyncio.Event()
        # Replaced on every advance: setting the old one releases everyone waiting on it.
        self._advanced = asyncio.Event()
        self._notifiers: dict[UUID, _Notifier] = {}
        self._stopping = False
        self._known = Follower(grace=poll_interval)
        self._advanced_to = 0

    @property
    def position(self) -> int:
        """The views include every event up to here, as far as this process knows."""
        return self._known.position

    @property
    def projecting(self) -> bool:
        """Whether this process writes the views now (holds the lease, or is alone)."""
        return self._projecting

    def announce_with(self, announce: Announce) -> None:
        self._announce = announce

    def wake(self) -> None:
        """Look now: project, or (following) read the views' position."""
        self._wake.set()

    def event_stored(self) -> None:
        """A lifecycle event went out: there is something to project (if this projects)."""
        if self._projecting:
            self._wake.set()

    def stop(self) -> None:
        """Ask `run` to return after the step in hand.

        Cancelling it instead could leave a worker thread inside sqlite while the
        connections are being closed, which crashes the interpreter.
        """
        self._stopping = True
        self._wake.set()

    async def start_projecting(self) -> None:
        """This process writes the views from now on (it took the lease)."""
        self._projecting = True
        self._wake.set()

    async def stop_projecting(self) -> None:
        """Another may write the views from now on: returns once no step of ours is running
        (one may be inside its transaction; the views' position, read and written in that
        transaction, keeps two projectors from applying an event twice)."""
        self._projecting = False
        async with self._stepping:
            pass

    async def run(self) -> None:
        """Project (or follow) until stopped. Errors are logged and retried: reads must keep
        working."""
        # How far behind the store the views are, while this process writes them.
        stored = self._executions.recorder.max_notification_id
        async with metrics.lag_sampled(
            metrics.VIEWS_BEHIND, stored, lambda: self.position if self._projecting else None
        ):
            await self._run()

    async def _run(self) -> None:
        last_step = float("-inf")  # no step yet: nothing to wait out
        read = 0  # events of the last step
        while not self._stopping:
            try:
                if self._projecting:
                    last_step, read = time.monotonic(), 0
                    read = await self.step()
                    if read >= self._batch:
                        continue  # a full batch: there is more, drain before sleeping
                else:
                    await self.follow_step()
            except Exception:
                log.exception("projection step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            if self._projecting:
                # Woken again right after a step: let the events in flight join the next
                # batch (under load each batch's own statements, and its announcement,
                # are then shared by many events; idle, nothing waits).
                await rest_of(linger(read), last_step)
            self._wake.clear()

    async def step(self) -> int:
        """Apply one batch of new events; returns how many there were (0: none)."""
        async with self._stepping:
            if not self._projecting:
                return 0
            ended: set[UUID] = set()
            after, position, read = await asyncio.to_thread(self._apply_next, ended)
            self._known.projected(position)
            self._advance()
            # After the commit, so a woken waiter's read sees the end.
            self._ended(ended)
        if read:
            await self._tell(ViewsAdvanced(
                projector=self.name, after=after, position=position, ended=sorted(ended)
            ))  # fmt: skip
        return read

    async def follow_step(self) -> None:
        """Following: read the views' position (the fallback for a missed announcement)."""
        position = await asyncio.to_thread(self._views.position)
        if self._known.polled(position, time.monotonic()):
            log.info("missed an announcement of the views; every waiter reads again")
            self._maybe_ended(self._notifiers)
        self._advance()

    def heard(self, message: ViewsAdvanced) -> None:
        """Another replica committed a batch to the views (its announcement)."""
        if message.projector == self.name:
            return  # our own: done already
        if self._known.heard(message):
            log.info("missed an announcement of the views; every waiter reads again")
            self._maybe_ended(self._notifiers)
        self._advance()
        self._ended(message.ended)

    def _apply_next(self, ended: set[UUID]) -> tuple[int, int, int]:
        """In a worker thread: the next `batch` events after the views' position, applied
        in one transaction. Returns (the position before, the views' position, how many
        events were read)."""
        after = self._views.position()
        events = read_events(self._executions, after, self._batch)
        if not events:
            return after, after, 0
        return after, self._views.apply(events, ended), len(events)

    async def _tell(self, message: ViewsAdvanced) -> None:
        if self._announce is None:
            return
        try:
            await self._announce(message)
        except Exception as exc:  # the others fall back on reading the position
            log.debug("views advance not announced (%s)", exc)

    def _advance(self) -> None:
        if self._advanced_to == self._known.position:
            return
        self._advanced_to = self._known.position
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    def _ended(self, execution_ids: Iterable[UUID]) -> None:
        for execution_id in execution_ids:
            notifier = self._notifiers.get(execution_id)
            if notifier is not None:
                notifier.ended.set()

    @staticmethod
    def _maybe_ended(notifiers: dict[UUID, _Notifier]) -> None:
        for notifier in notifiers.values():
            if not notifier.ended.is_set():
                maybe, notifier.ended = notifier.ended, asyncio.Event()
                maybe.set()

    # --- waiting ---------------------------------------------------------------------------

    async def wait_for_position(self, position: int, within: float) -> bool:
        """True once the views include the event at `position`; False after `within` s."""
        deadline = time.monotonic() + within
        while self.position < position:
            if not await self._next_advance(deadline):
                return self.position >= position
        return True

    def advance_signal(self) -> asyncio.Event:
        """Set once the views advance past what this process knows now (its own projection,
        another replica's announcement, or a read of the position): take it before reading
        the views, then wait on it, and no advance in between is missed."""
        return self._advanced

    @property
    def waited_on(self) -> int:
        """How many executions have someone waiting for their end (a notifier each)."""
        return len(self._notifiers)

    @contextlib.contextmanager
    def watching(self, execution_id: UUID) -> Iterator[Watch]:
        """Any end of the execution the views show from now on wakes the `Watch`. Taken
        before the write an answer waits for, it makes the first read of `until_terminal`
        unneeded when that write created the execution: its end cannot be in the views
        yet, and any later end wakes the watch."""
        notifier = self._notifiers.get(execution_id)
        if notifier is None:
            notifier = self._notifiers[execution_id] = _Notifier()
        notifier.waiters += 1
        WAITING_REQUESTS.inc()
        try:
            yield Watch(self, self._views, execution_id, notifier)
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


@dataclass
class Watch:
    """One waiter's hold on an execution's notifier (`ProjectionRunner.watching`)."""

    runner: ProjectionRunner
    views: ExecutionViews
    execution_id: UUID
    notifier: _Notifier

    async def until_terminal(
        self, within: float, with_log: bool = False, *, unended: bool = False
    ) -> ExecutionView | None:
        """The execution as soon as the views show it ended, or as it is after `within` s.

        Two reads of the views whatever happens meanwhile: one now (it may have ended
        already) and one when woken or out of time; one more each time a missed
        announcement woke it. The notifier was registered before the first read, so an end
        projected between that read and the wait still wakes it. `unended`: its end cannot
        be in the views yet (the watch began before the write that created it), so the
        first read is skipped."""
        deadline = time.monotonic() + within
        if not unended:
            execution = await self._read(with_log)
            if execution is not None and execution.is_terminal:
                return execution
        self.runner.wake()  # a waiter usually follows a write: look now, not at the next poll
        while True:
            ended = self.notifier.ended
            with contextlib.suppress(TimeoutError):
                remaining = max(0.0, deadline - time.monotonic())
                await asyncio.wait_for(ended.wait(), timeout=remaining)
            execution = await self._read(with_log)
            if (
                execution is None
                or execution.is_terminal
                or self.notifier.ended.is_set()  # woken for its end, not for a maybe
                or time.monotonic() >= deadline
            ):
                return execution

    async def _read(self, with_log: bool) -> ExecutionView | None:
        return await asyncio.to_thread(self.views.get, self.execution_id, with_log)
