"""The api's only way to change anything: the dispatcher, behind `CommandGateway`.

Production talks NATS request/reply; tests use `baton_api.inmemory.InMemoryGateway`.
A reply carrying a `Problem` is turned into a `ProblemError` by the caller, not here.
"""

from __future__ import annotations

import logging
from typing import Protocol, TypeVar

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from baton_api.nats_link import NatsLink
from baton_api.problems import unavailable
from baton_contracts.nats import (
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    DELETE_SUBJECT,
    PURGE_SUBJECT,
    RETRY_SUBJECT,
    SUBMIT_SUBJECT,
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

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


class CommandGateway(Protocol):
    async def submit(self, command: SubmitCommand) -> ExecutionReply: ...

    async def cancel(self, command: CancelCommand) -> ExecutionReply: ...

    async def retry(self, command: RetryCommand) -> ExecutionReply: ...

    async def delete(self, command: DeleteCommand) -> ExecutionReply: ...

    async def purge(self, command: PurgeCommand) -> PurgeReply: ...

    async def change_catalog(self, change: CatalogChange) -> CatalogReply: ...


class NatsGateway:
    """Request/reply on the dispatcher's subjects; any transport failure is a 503 problem."""

    def __init__(self, link: NatsLink, timeout: float) -> None:
        self._link = link
        self._timeout = timeout

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        return await self._request(SUBMIT_SUBJECT, command)

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        return await self._request(CANCEL_SUBJECT, command)

    async def retry(self, command: RetryCommand) -> ExecutionReply:
        return await self._request(RETRY_SUBJECT, command)

    async def delete(self, command: DeleteCommand) -> ExecutionReply:
        return await self._request(DELETE_SUBJECT, command)

    async def purge(self, command: PurgeCommand) -> PurgeReply:
        return await self._request(PURGE_SUBJECT, command, PurgeReply)

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        return await self._request(CATALOG_CHANGE_SUBJECT, change, CatalogReply)

    async def _request(
        self,
        subject: str,
        command: BaseModel,
        reply: type[R] = ExecutionReply,  # type: ignore[assignment]
    ) -> R:
        client = self._link.client
        if client is None or not client.is_connected:
            raise unavailable("the message bus is not reachable; try again shortly")
        try:
            message = await client.request(
                subject, command.model_dump_json().encode(), timeout=self._timeout
            )
        except NoRespondersError:
            raise unavailable("no dispatcher is running; try again shortly") from None
        except NatsTimeoutError:
            raise unavailable("the dispatcher did not answer in time") from None
        except NatsError as exc:
            log.warning("request on %s failed: %s", subject, exc)
            raise unavailable("the message bus is not reachable; try again shortly") from None
        try:
            return reply.model_validate_json(message.data)
        except ValidationError:
            log.exception("the dispatcher's reply on %s cannot be read", subject)
            raise
