"""A `CommandGateway` that calls the `Executions` application in-process.

For tests and local experiments without NATS or a dispatcher: it runs the same
`CommandHandlers` the dispatcher runs, so the api cannot tell the difference.
"""

from __future__ import annotations

import asyncio

from baton_contracts.nats import (
    CancelCommand,
    CatalogChange,
    CatalogReply,
    DeleteCommand,
    ExecutionReply,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
)
from baton_domain.application import Executions
from baton_platform.commands import CommandHandlers


class InMemoryGateway:
    def __init__(self, executions: Executions) -> None:
        self.executions = executions
        self.handlers = CommandHandlers(executions)
        self.submitted: list[SubmitCommand] = []

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        self.submitted.append(command)
        return await asyncio.to_thread(self.handlers.submit, command)

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        return await asyncio.to_thread(self.handlers.cancel, command)

    async def retry(self, command: RetryCommand) -> ExecutionReply:
        return await asyncio.to_thread(self.handlers.retry, command)

    async def delete(self, command: DeleteCommand) -> ExecutionReply:
        return await asyncio.to_thread(self.handlers.delete, command)

    async def purge(self, command: PurgeCommand) -> PurgeReply:
        return await asyncio.to_thread(self.handlers.purge, command)

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        return await asyncio.to_thread(self.handlers.change_catalog, change)
