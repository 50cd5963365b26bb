"""Wire commands -> application calls -> wire replies: the one translation of the write side.

The dispatcher runs these on its writer thread; the api's in-memory gateway (tests) calls
them directly, so both answer exactly alike. Synchronous, like the eventsourcing library.
"""

from __future__ import annotations

from collections.abc import Callable

from baton_contracts.nats import (
    CancelCommand,
    DeleteCommand,
    ExecutionReply,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
)
from baton_domain.application import Executions, Outcome, RequestCommand
from baton_domain.errors import DomainError
from baton_platform.mapping import execution_state
from baton_platform.problems import problem_for


class CommandHandlers:
    def __init__(self, executions: Executions) -> None:
        self.executions = executions

    def submit(self, command: SubmitCommand) -> ExecutionReply:
        request = RequestCommand(
            device_id=command.device_id,
            name=command.name,
            params=command.params,
            ttl=command.ttl,
            idempotency_key=command.idempotency_key,
            principal=command.principal,
            source=command.source,
            ephemeral=command.ephemeral,
        )
        return self._reply(lambda: self.executions.request(request))

    def cancel(self, command: CancelCommand) -> ExecutionReply:
        return self._reply(lambda: self.executions.cancel(command.execution_id, command.reason))

    def retry(self, command: RetryCommand) -> ExecutionReply:
        return self._reply(
            lambda: self.executions.retry(command.execution_id, command.principal, command.source)
        )

    def delete(self, command: DeleteCommand) -> ExecutionReply:
        return self._reply(lambda: self.executions.delete(command.execution_id, command.reason))

    def purge(self, command: PurgeCommand) -> PurgeReply:
        try:
            deleted, position = self.executions.purge(command.execution_ids, command.reason)
        except DomainError as exc:
            return PurgeReply(problem=problem_for(exc))
        return PurgeReply(deleted=deleted, position=position)

    @staticmethod
    def _reply(call: Callable[[], Outcome]) -> ExecutionReply:
        try:
            outcome = call()
        except DomainError as exc:
            return ExecutionReply(problem=problem_for(exc))
        return ExecutionReply(
            execution=execution_state(outcome.execution),
            position=outcome.position,
            created=outcome.created,
        )
