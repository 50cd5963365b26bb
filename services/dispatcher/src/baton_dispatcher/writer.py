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
from typing import TypeVar

from baton_contracts.nats import (
    CancelCommand,
    DeadlineDue,
    DeadlineReply,
    DeviceReport,
    ExecutionReply,
    SubmitCommand,
)
from baton_domain.application import Executions, Outcome, RequestCommand
from baton_domain.errors import (
    DeadlineNotReached,
    DomainError,
    ExecutionNotFound,
    IllegalTransition,
    WrongDevice,
)
from baton_domain.statuses import AnswerStatus
from baton_platform.mapping import execution_state
from baton_platform.problems import problem_for

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ReportResult:
    """What became of a device report: applied, a harmless duplicate, or refused (and why)."""

    applied: bool
    refused: str | None = None


class Writer:
    def __init__(self, executions: Executions, on_stored: Callable[[], None]) -> None:
        self._executions = executions
        self._on_stored = on_stored
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-writer")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _reply(self, outcome: Outcome) -> ExecutionReply:
        if outcome.changed:
            self._on_stored()
        return ExecutionReply(
            execution=execution_state(outcome.execution),
            position=outcome.position,
            created=outcome.created,
        )

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        request = RequestCommand(
            device_id=command.device_id,
            name=command.name,
            params=command.params,
            ttl=command.ttl,
            idempotency_key=command.idempotency_key,
            principal=command.principal,
            source=command.source,
        )
        try:
            outcome = await self._call(lambda: self._executions.request(request))
        except DomainError as exc:
            return ExecutionReply(problem=problem_for(exc))
        if outcome.created:
            log.info("requested %s %s on %s", outcome.execution.id, command.name, command.device_id)
        return self._reply(outcome)

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        try:
            outcome = await self._call(
                lambda: self._executions.cancel(command.execution_id, command.reason)
            )
        except DomainError as exc:
            return ExecutionReply(problem=problem_for(exc))
        log.info("canceled %s: %s", command.execution_id, command.reason)
        return self._reply(outcome)

    async def deadline(self, due: DeadlineDue) -> DeadlineReply:
        try:
            outcome = await self._call(lambda: self._executions.reach_deadline(due.execution_id))
        except ExecutionNotFound:
            return DeadlineReply(outcome="unknown")
        except DeadlineNotReached:
            return DeadlineReply(outcome="not-yet")
        if not outcome.changed:
            return DeadlineReply(outcome="ignored")
        self._on_stored()
        log.info("deadline of %s: %s", due.execution_id, outcome.execution.status.value)
        return DeadlineReply(outcome="applied")

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
