"""Application calls for the dispatcher's edges, run on one writer thread.

The eventsourcing library is synchronous; one dedicated thread keeps it off the event loop
and serialises writes inside this process (no optimistic-concurrency retries between our own
handlers). Every method returns a wire model: the edges only decode and encode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

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
from baton_domain.application import Executions
from baton_domain.errors import (
    DeadlineNotReached,
    ExecutionNotFound,
    IllegalTransition,
    UnknownDevice,
    WrongDevice,
)
from baton_domain.statuses import AnswerStatus
from baton_platform.commands import CommandHandlers
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_EXPIRED = "request-expired"


def request_expired(command: SubmitCommand) -> Problem:
    return Problem(
        status=503,
        title="Request expired",
        detail=(
            "the dispatcher reached the request after its requester stopped waiting; "
            "nothing was stored; retry"
        ),
        code=REQUEST_EXPIRED,
        retry_after=1.0,
        execution_id=command.execution_id,
    )


@dataclass(frozen=True)
class ReportResult:
    """What became of a device report: applied, a harmless duplicate, or refused (and why)."""

    applied: bool
    refused: str | None = None


class Backlog(Protocol):
    async def holds(self, device_id: str, deadline: datetime) -> bool: ...


class Writer:
    def __init__(
        self,
        executions: Executions,
        on_stored: Callable[[], None],
        backlog: Backlog | None = None,
    ) -> None:
        self._executions = executions
        self._backlog = backlog
        self._handlers = CommandHandlers(executions)
        self._on_stored = on_stored
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-writer")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        reply = await self._write(lambda: self._submit_in_time(command))
        if reply.created and reply.execution is not None:
            log.info("requested %s %s on %s", reply.execution.id, command.name, command.device_id)
        elif reply.problem is not None and reply.problem.code == REQUEST_EXPIRED:
            REJECTED_MESSAGES.labels(service="dispatcher", reason=REQUEST_EXPIRED).inc()
            log.warning(
                "dropped submit %s for %s: its requester stopped waiting at %s",
                command.execution_id,
                command.device_id,
                command.answer_by,
            )
        return reply

    def _submit_in_time(self, command: SubmitCommand) -> ExecutionReply:
        # Checked on the writer thread right before the write, after any wait in the queue:
        # the api told its client the outcome is unknown at `answer_by`, and a write
        # landing after that would be a command the client may well send again.
        if command.answer_by is not None and datetime.now(UTC) > command.answer_by:
            return ExecutionReply(problem=request_expired(command))
        return self._handlers.submit(command)

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        reply = await self._write(lambda: self._handlers.cancel(command))
        if reply.problem is None:
            log.info("canceled %s: %s", command.execution_id, command.reason)
        return reply

    async def retry(self, command: RetryCommand) -> ExecutionReply:
        reply = await self._write(lambda: self._handlers.retry(command))
        if reply.execution is not None:
            log.info("retried %s as %s", command.execution_id, reply.execution.id)
        return reply

    async def delete(self, command: DeleteCommand) -> ExecutionReply:
        reply = await self._write(lambda: self._handlers.delete(command))
        if reply.problem is None:
            log.info("deleted %s: %s", command.execution_id, command.reason)
        return reply

    async def purge(self, command: PurgeCommand) -> PurgeReply:
        reply = await self._call(lambda: self._handlers.purge(command))
        if reply.deleted:
            self._on_stored()
            log.info("purged %d execution(s): %s", reply.deleted, command.reason)
        return reply

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        reply = await self._call(lambda: self._handlers.change_catalog(change))
        if reply.position is not None:
            self._on_stored()
            log.info("catalog changed: %s", change.op)
        return reply

    async def get_catalog(self, _query: CatalogQuery) -> CatalogReply:
        return await self._call(self._handlers.get_catalog)

    async def seed_catalog(self) -> None:
        if await self._call(self._executions.seed_catalog) is not None:
            self._on_stored()
            log.info("catalog stored from the seed file (first start)")

    async def _write(self, call: Callable[[], ExecutionReply]) -> ExecutionReply:
        reply = await self._call(call)
        if reply.position is not None:  # something was stored: the relay can go now
            self._on_stored()
        return reply

    async def deadline(self, due: DeadlineDue) -> DeadlineReply:
        if self._backlog is not None:
            # An answer from before this deadline may still be on its way (in the broker, a
            # bridge, or the reports stream): it is applied first, the scheduler asks again.
            try:
                waiting = await self._call(
                    lambda: due_of(self._executions.get(due.execution_id), due.kind)
                )
            except ExecutionNotFound:
                return DeadlineReply(outcome="unknown")
            if waiting.at is not None and await self._backlog.holds(waiting.device_id, waiting.at):
                return DeadlineReply(outcome="reports-pending")
        try:
            outcome = await self._call(
                lambda: self._executions.reach_deadline(due.execution_id, due.kind)
            )
        except ExecutionNotFound:
            return DeadlineReply(outcome="unknown")
        except DeadlineNotReached:
            return DeadlineReply(outcome="not-yet")
        if not outcome.changed:
            return DeadlineReply(outcome="ignored")
        self._on_stored()
        log.info("deadline of %s: %s", due.execution_id, outcome.execution.status.value)
        return DeadlineReply(outcome="applied")

    async def apply_presence(self, report: PresenceReport) -> ReportResult:
        """Online releases what waited for the device; offline holds back what comes next."""
        try:
            position = await self._call(
                lambda: self._executions.record_presence(
                    report.device_id, report.online, report.received_at
                )
            )
        except UnknownDevice:
            return ReportResult(applied=False, refused="unknown-device")
        if position is not None:
            self._on_stored()
            log.info("%s is %s", report.device_id, "online" if report.online else "offline")
        return ReportResult(applied=position is not None)

    async def apply_state(self, report: StateReport) -> ReportResult:
        """A device's state: settles the verification of its executions that wait for it."""
        try:
            position = await self._call(
                lambda: self._executions.record_state(
                    report.device_id, report.state, report.received_at
                )
            )
        except UnknownDevice:
            return ReportResult(applied=False, refused="unknown-device")
        if position is not None:
            self._on_stored()
        return ReportResult(applied=position is not None)

    async def apply_report(self, report: DeviceReport) -> ReportResult:
        try:
            if report.kind == "published":
                outcome = await self._call(
                    lambda: self._executions.record_published(report.execution_id)
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
                    )
                )
        except ExecutionNotFound:
            return ReportResult(applied=False, refused="unknown-execution")
        except WrongDevice:
            return ReportResult(applied=False, refused="wrong-device")
        except IllegalTransition:
            return ReportResult(applied=False, refused="illegal-transition")
        if outcome.changed:
            self._on_stored()
        return ReportResult(applied=outcome.changed)
