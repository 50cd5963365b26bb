"""A `CommandGateway` that calls the `Executions` application in-process.

For tests and local experiments without NATS or a dispatcher: it answers exactly as the
dispatcher does (same `problem_for` translation, same `execution_state` mapping), so the
api cannot tell the difference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from baton_contracts.nats import CancelCommand, ExecutionReply, SubmitCommand
from baton_domain.application import Executions, Outcome, RequestCommand
from baton_domain.errors import DomainError
from baton_platform.mapping import execution_state
from baton_platform.problems import problem_for


class InMemoryGateway:
    def __init__(self, executions: Executions) -> None:
        self.executions = executions
        self.submitted: list[SubmitCommand] = []

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        self.submitted.append(command)
        request = RequestCommand(
            device_id=command.device_id,
            name=command.name,
            params=command.params,
            ttl=command.ttl,
            idempotency_key=command.idempotency_key,
            principal=command.principal,
            source=command.source,
        )
        return await self._call(lambda: self.executions.request(request))

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        return await self._call(
            lambda: self.executions.cancel(command.execution_id, command.reason)
        )

    async def _call(self, command: Callable[[], Outcome]) -> ExecutionReply:
        try:
            outcome = await asyncio.to_thread(command)
        except DomainError as exc:
            return ExecutionReply(problem=problem_for(exc))
        return ExecutionReply(
            execution=execution_state(outcome.execution),
            position=outcome.position,
            created=outcome.created,
        )
