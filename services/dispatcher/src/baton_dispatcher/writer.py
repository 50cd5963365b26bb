"""Application calls for the dispatcher's edges, run on one writer thread, in group commits.

The eventsourcing library is synchronous; one dedicated thread keeps it off the event loop
and serialises writes inside this process (no optimistic-concurrency retries between our own
handlers). The calls that arrive while a transaction is being stored wait in a queue and go
together into the next one (`Executions.run_batch`): one fsync for up to MAX_BATCH submits,
reports, deadlines and presence changes, and none of the waiting when the dispatcher is idle
(a lone call goes at once). Each caller gets its answer only after its transaction is
committed. Every method returns a wire model: the edges only decode and encode.

What settles work already in flight (device reports, due deadlines, cancels) goes ahead
of new requests in the queue: after a fault the queue fills with both, and deadlines that
waited behind the submits were applied late, by more than the chaos checks' 30 s grace. A
submit that waits instead gets `request-expired` once its requester stops waiting, a clear
retryable answer. Ahead, not instead: while requests wait, each group commit keeps
REQUESTS_SHARE of its places for them. Settling work is not bounded by the requests stored
before it (state, presence and progress reports come as often as devices send them, and
after a fault the reports stream holds whatever piled up), and each partition's reports
consumer keeps up to a whole batch in the queue: two of them alone left a submit no place
in any group commit until the stream was drained. A cancel settles too: in one queue a
cancel taken before a deadline's apply was queued went first, and it must still, or a
client who canceled in time is refused (409) and the record says EXPIRED or TIMED_OUT.
The order between the two lanes means nothing otherwise: a report and a request for one
device come from different senders, unordered. A job that runs alone (a catalog change,
forgetting the cache on a partition's takeover) stays a barrier for both: nothing queued
after it runs before it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from baton_contracts.nats import (
    CancelCommand,
    CatalogChange,
    CatalogQuery,
    CatalogReply,
    DeadlineDue,
    DeadlineReply,
    DeleteCommand,
    DeviceReport,
    ExecutionReply,
    PresenceReport,
    Problem,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    StateReport,
    SubmitCommand,
)
from baton_dispatcher.backlog import due_of
from baton_dispatcher.traces import TraceContexts
from baton_domain.application import Executions
from baton_domain.errors import (
    AnswerLogFull,
    DeadlineNotReached,
    ExecutionNotFound,
    IllegalTransition,
    UnknownDevice,
    WrongDevice,
)
from baton_domain.group_commit import BatchResult
from baton_domain.statuses import AnswerStatus
from baton_platform import tracing
from baton_platform.commands import CommandHandlers
from baton_platform.metrics import REJECTED_MESSAGES, observe_stored

log = logging.getLogger(__name__)

# A deadline held this long past its time is logged with what holds it (again after as
# long); at most this many executions are remembered for that.
LONG_HOLD_S = 10.0
HELD_NOTED_MAX = 10_000
# A deadline answered this slowly is logged with where the time went.
SLOW_DEADLINE_S = 1.0
T = TypeVar("T")

# Bounds one transaction (and so the wait of the first caller in it): at ~10-20 us of
# application work per command, a full batch is a few milliseconds.
MAX_BATCH = 256

# While requests wait, the places of each group commit kept for them (the module's docstring).
REQUESTS_SHARE = MAX_BATCH // 4

REQUEST_EXPIRED = "request-expired"
# Due deadlines' first looks read at once at most (Writer._looks).
LOOKS_AT_ONCE = 2


def request_expired(execution_id: UUID | None) -> Problem:
    return Problem(
        status=503,
        title="Request expired",
        detail=(
            "the dispatcher reached the request after its requester stopped waiting; "
            "nothing was stored; retry"
        ),
        code=REQUEST_EXPIRED,
        retry_after=1.0,
        execution_id=execution_id,
    )


@dataclass(frozen=True)
class ReportResult:
    """What became of a device report: applied, a harmless duplicate, or refused (and why)."""

    applied: bool
    refused: str | None = None


class Backlog(Protocol):
    async def held_by(self, device_id: str, deadline: datetime) -> str | None: ...


@dataclass
class _Job:
    call: Callable[[], Any]
    done: asyncio.Future[BatchResult[Any]]
    # The order jobs were queued in, across both lanes.
    seq: int
    # Catalog changes, purges and the catalog seed run in their own transaction: they read
    # the store beyond the streams a batch keeps in memory.
    alone: bool = False


class Writer:
    def __init__(
        self,
        executions: Executions,
        on_stored: Callable[[], None],
        backlog: Backlog | None = None,
        traces: TraceContexts | None = None,
    ) -> None:
        self._executions = executions
        self._traces = traces
        self._backlog = backlog
        self._held_noted: dict[UUID, float] = {}  # seconds late when last said (_note_held)
        self._handlers = CommandHandlers(executions)
        self._on_stored = on_stored
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-writer")
        # A due deadline's first look, outside the writer. Few at once: each takes one of the
        # event store's pooled connections, which the writer needs too.
        self._looks = ThreadPoolExecutor(
            max_workers=LOOKS_AT_ONCE, thread_name_prefix="baton-deadline-look"
        )
        # Device reports and due deadlines, then new requests (the module's docstring).
        self._settling: deque[_Job] = deque()
        self._requests: deque[_Job] = deque()
        self._barriers: deque[int] = deque()  # the seq of each queued job that runs alone
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def _stored(
        self, fn: Callable[[], T], alone: bool = False, settles: bool = False
    ) -> BatchResult[T]:
        """`fn` run on the writer thread in the next group commit; its result once stored.
        `settles`: it settles work in flight (a report, a deadline, a cancel), ahead of new
        requests."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="writer")
        done: asyncio.Future[BatchResult[Any]] = asyncio.get_running_loop().create_future()
        job = _Job(fn, done, next(self._seq), alone)
        if alone:  # only requests run alone
            self._barriers.append(job.seq)
        (self._settling if settles and not alone else self._requests).append(job)
        self._wake.set()
        return await done

    async def _call(self, fn: Callable[[], T], alone: bool = False, settles: bool = False) -> T:
        return (await self._stored(fn, alone, settles)).unwrap()

    def _next_batch(self) -> list[_Job]:
        """Whatever queued up while the last transaction was stored, settling work first
        (requests keep their share of places); a job that runs alone goes once nothing
        queued before it waits."""
        barrier = self._barriers[0] if self._barriers else math.inf
        settling = bool(self._settling) and self._settling[0].seq < barrier
        if self._requests and self._requests[0].alone and not settling:
            self._barriers.popleft()
            return [self._requests.popleft()]
        waiting = 0  # the requests this batch keeps places for, up to their share
        for job in itertools.islice(self._requests, REQUESTS_SHARE):
            if job.alone:
                break
            waiting += 1
        jobs: list[_Job] = []
        while (
            self._settling and self._settling[0].seq < barrier and len(jobs) < MAX_BATCH - waiting
        ):
            jobs.append(self._settling.popleft())
        while self._requests and not self._requests[0].alone and len(jobs) < MAX_BATCH:
            jobs.append(self._requests.popleft())
        return jobs

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._settling and not self._requests:
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = self._next_batch()
            if jobs[0].alone:
                results = [await loop.run_in_executor(self._thread, self._alone, jobs[0].call)]
            else:
                calls = [job.call for job in jobs]
                results = await loop.run_in_executor(
                    self._thread, self._executions.run_batch, calls
                )
            if any(result.position is not None for result in results):
                self._on_stored()  # something was stored: the relay can go now
            for job, result in zip(jobs, results, strict=True):
                if not job.done.done():  # its caller may have been cancelled meanwhile
                    job.done.set_result(result)

    @staticmethod
    def _alone(call: Callable[[], T]) -> BatchResult[T]:
        try:
            return BatchResult(call())
        except Exception as exc:
            return BatchResult(error=exc)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=True)
        self._looks.shutdown(wait=True)

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        taken = time.monotonic()
        traces, carried, execution_id = self._traces, tracing.current(), command.execution_id
        if traces is None or not carried or execution_id is None:
            reply = await self._write(lambda: self._submit_in_time(command))
        else:

            def traced() -> ExecutionReply:
                # Before the events: the relay, woken by their commit, finds it.
                traces.keep(execution_id, carried)
                return self._submit_in_time(command)

            reply = await self._write(traced)
        if reply.created and reply.execution is not None:
            observe_stored(taken)  # a repeat finds its execution: not created, not counted
            log.info("requested %s %s on %s", reply.execution.id, command.name, command.device_id)
        else:
            _note_dropped(
                reply,
                command.answer_by,
                "submit %s for %s",
                command.execution_id,
                command.device_id,
            )
        return reply

    def _submit_in_time(self, command: SubmitCommand) -> ExecutionReply:
        return _in_time(
            command.answer_by, command.execution_id, lambda: self._handlers.submit(command)
        )

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        # Settling: it goes before the apply of a deadline queued after it (the docstring).
        reply = await self._write(lambda: self._handlers.cancel(command), settles=True)
        if reply.problem is None:
            log.info("canceled %s: %s", command.execution_id, command.reason)
        return reply

    async def retry(self, command: RetryCommand) -> ExecutionReply:
        reply = await self._write(
            lambda: _in_time(
                command.answer_by, command.retry_id, lambda: self._handlers.retry(command)
            )
        )
        if reply.created and reply.execution is not None:
            log.info("retried %s as %s", command.execution_id, reply.execution.id)
        else:
            _note_dropped(reply, command.answer_by, "retry of %s", command.execution_id)
        return reply

    async def delete(self, command: DeleteCommand) -> ExecutionReply:
        reply = await self._write(lambda: self._handlers.delete(command))
        if reply.problem is None:
            log.info("deleted %s: %s", command.execution_id, command.reason)
        return reply

    async def purge(self, command: PurgeCommand) -> PurgeReply:
        reply = await self._call(lambda: self._handlers.purge(command), alone=True)
        if reply.deleted:
            self._on_stored()
            log.info("purged %d execution(s): %s", reply.deleted, command.reason)
        return reply

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        reply = await self._call(lambda: self._handlers.change_catalog(change), alone=True)
        if reply.position is not None:
            self._on_stored()
            log.info("catalog changed: %s", change.op)
        return reply

    async def get_catalog(self, query: CatalogQuery) -> CatalogReply:
        return await self._call(lambda: self._handlers.get_catalog(query), alone=True)

    async def forget_cached(self) -> None:
        """Before writing a partition taken over from another dispatcher: nothing cached may
        be older than what that one stored."""
        await self._call(self._executions.forget_cached, alone=True)

    async def seed_catalog(self) -> None:
        if await self._call(self._executions.seed_catalog, alone=True) is not None:
            self._on_stored()
            log.info("catalog stored from the seed file (first start)")

    async def _write(
        self, call: Callable[[], ExecutionReply], settles: bool = False
    ) -> ExecutionReply:
        stored = await self._stored(call, settles=settles)
        reply = stored.unwrap()
        if reply.position is not None:  # the batch's commit knows where it landed
            reply = reply.model_copy(update={"position": stored.position})
        return reply

    async def deadline(self, due: DeadlineDue) -> DeadlineReply:
        started = time.monotonic()
        phases: dict[str, float] = {}
        reply = await self._deadline(due, phases)
        took = time.monotonic() - started
        if took >= SLOW_DEADLINE_S:
            # The scheduler waits for each answer with a bounded number in flight: slow
            # answers are what makes deadlines late under faults, so say where the time went.
            spent = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in phases.items())
            log.warning(
                "deadline of %s answered %s in %.2f s (%s)",
                due.execution_id,
                reply.outcome,
                took,
                spent,
            )
        return reply

    async def _deadline(self, due: DeadlineDue, phases: dict[str, float]) -> DeadlineReply:
        """`phases`: filled with the seconds each step took."""
        mark = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[phase] = now - mark
            mark = now

        if self._backlog is not None:
            # An answer from before this deadline may still be on its way (in the broker, a
            # bridge, or the reports stream): it is applied first, the scheduler asks again.
            # The first look reads the committed execution outside the writer's queue, so a
            # deadline waits behind the writer's backlog once, to be applied, not twice (after
            # a fault that backlog is what made deadlines late). Committed is enough: what it
            # reads (the deadline, whether the execution or its verification ended) is never
            # undone, and a report stored meanwhile is still in the reports stream.
            loop = asyncio.get_running_loop()
            try:
                waiting = due_of(
                    await loop.run_in_executor(
                        self._looks, self._executions.committed, due.execution_id
                    ),
                    due.kind,
                )
            except ExecutionNotFound:
                return DeadlineReply(outcome="unknown")
            finally:
                lap("read")
            try:
                held_by = (
                    None
                    if waiting.at is None
                    else await self._backlog.held_by(waiting.device_id, waiting.at)
                )
                if held_by is not None:
                    self._note_held(due, waiting.at, held_by)
                    return DeadlineReply(outcome="reports-pending")
            finally:
                lap("watermarks and reports")
        try:
            outcome = await self._call(
                lambda: self._executions.reach_deadline(due.execution_id, due.kind), settles=True
            )
        except ExecutionNotFound:
            return DeadlineReply(outcome="unknown")
        except DeadlineNotReached:
            return DeadlineReply(outcome="not-yet")
        finally:
            lap("apply")
        if not outcome.changed:
            return DeadlineReply(outcome="ignored")
        log.info("deadline of %s: %s", due.execution_id, outcome.execution.status.value)
        return DeadlineReply(outcome="applied")

    def _note_held(self, due: DeadlineDue, at: datetime | None, held_by: str) -> None:
        """Say what a deadline waits for, once it has waited long: a deadline is held a
        moment after its time as a rule (the bridges' watermarks pass it), seconds after a
        fault, but one held for long waits for something that may not come."""
        if at is None:
            return
        late = (datetime.now(UTC) - at).total_seconds()
        last = self._held_noted.get(due.execution_id)
        if late < LONG_HOLD_S or (last is not None and late - last < LONG_HOLD_S):
            return
        if len(self._held_noted) >= HELD_NOTED_MAX:
            self._held_noted.clear()
        self._held_noted[due.execution_id] = late
        log.warning(
            "deadline of %s (%s) held %.0f s past its time by %s",
            due.execution_id,
            due.kind,
            late,
            held_by,
        )

    async def apply_presence(self, report: PresenceReport) -> ReportResult:
        """Online releases what waited for the device; offline holds back what comes next."""
        try:
            position = await self._call(
                lambda: self._executions.record_presence(
                    report.device_id, report.online, report.received_at
                ),
                settles=True,
            )
        except UnknownDevice:
            return ReportResult(applied=False, refused="unknown-device")
        if position is not None:
            log.info("%s is %s", report.device_id, "online" if report.online else "offline")
        return ReportResult(applied=position is not None)

    async def apply_state(self, report: StateReport) -> ReportResult:
        """A device's state: settles the verification of its executions that wait for it."""
        try:
            position = await self._call(
                lambda: self._executions.record_state(
                    report.device_id, report.state, report.received_at
                ),
                settles=True,
            )
        except UnknownDevice:
            return ReportResult(applied=False, refused="unknown-device")
        return ReportResult(applied=position is not None)

    async def apply_report(self, report: DeviceReport) -> ReportResult:
        try:
            if report.kind == "published":
                outcome = await self._call(
                    lambda: self._executions.record_published(report.execution_id), settles=True
                )
            else:
                assert report.status is not None
                status = AnswerStatus(report.status)
                outcome = await self._call(
                    lambda: self._executions.record_answer(
                        report.execution_id,
                        report.device_id,
                        report.report_id,
                        status,
                        report.payload,
                        report.received_at,
                    ),
                    settles=True,
                )
        except ExecutionNotFound:
            return ReportResult(applied=False, refused="unknown-execution")
        except WrongDevice:
            return ReportResult(applied=False, refused="wrong-device")
        except IllegalTransition:
            return ReportResult(applied=False, refused="illegal-transition")
        except AnswerLogFull:
            return ReportResult(applied=False, refused=AnswerLogFull.code)
        return ReportResult(applied=outcome.changed)


def _in_time(
    answer_by: datetime | None, execution_id: UUID | None, write: Callable[[], ExecutionReply]
) -> ExecutionReply:
    """`write`, unless its requester stopped waiting. Checked on the writer thread right
    before the write, after any wait in the queue: the api told its client the outcome is
    unknown at `answer_by`, and a write landing after that would be one the client may well
    send again."""
    if answer_by is not None and datetime.now(UTC) > answer_by:
        return ExecutionReply(problem=request_expired(execution_id))
    return write()


def _note_dropped(
    reply: ExecutionReply, answer_by: datetime | None, what: str, *args: object
) -> None:
    """Count and log a request `_in_time` dropped (`what % args` names it), if it was one."""
    if reply.problem is None or reply.problem.code != REQUEST_EXPIRED:
        return
    REJECTED_MESSAGES.labels(service="dispatcher", reason=REQUEST_EXPIRED).inc()
    log.warning(f"dropped {what}: its requester stopped waiting at %s", *args, answer_by)
