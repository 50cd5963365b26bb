"""The api's only way to change anything: the dispatcher, behind `CommandGateway`.

Production talks NATS request/reply; tests use `baton_api.inmemory.InMemoryGateway`.
A reply carrying a `Problem` is turned into a `ProblemError` by the caller, not here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar
from uuid import UUID

from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from baton_api.limits import MAX_BODY_BYTES
from baton_api.nats_link import NatsLink
from baton_api.problems import ProblemError, outcome_unknown, payload_too_large, unavailable
from baton_contracts.nats import (
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    DELETE_SUBJECT,
    MAX_COMMAND_BYTES,
    PURGE_SUBJECT,
    RETRY_SUBJECT,
    CancelCommand,
    CatalogChange,
    CatalogReply,
    DeleteCommand,
    ExecutionReply,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
    partition_of,
    partition_subject,
)
from baton_platform import tracing
from baton_platform.logs import about
from baton_platform.requests import request_patiently

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

# The share of the request timeout the dispatcher has to *start* a submit's write; the rest
# (1 s of the default 5 s) is for the write itself and the reply (docs/architecture.md).
DISPATCHER_SHARE = 0.8
# A submit with no answer after this long is sent again, once within the default 5 s, while
# the dispatcher still starts its write (before `answer_by`): a lost request (a partition
# moving between dispatchers on two NATS nodes) costs 2 s, not a 503.
RESEND_S = 2.0


class CommandGateway(Protocol):
    async def submit(self, command: SubmitCommand) -> ExecutionReply: ...

    async def cancel(self, command: CancelCommand) -> ExecutionReply: ...

    async def retry(self, command: RetryCommand) -> ExecutionReply: ...

    async def delete(self, command: DeleteCommand) -> ExecutionReply: ...

    async def purge(self, command: PurgeCommand) -> PurgeReply: ...

    async def change_catalog(self, change: CatalogChange) -> CatalogReply: ...


class NatsGateway:
    """Request/reply on the dispatcher's subjects. A transport failure is a 503 problem of
    one of two kinds (docs/api.md): `unavailable` when the request was never sent (nothing
    was stored; retry), `outcome-unknown` when it was sent and no answer came in time."""

    def __init__(self, link: NatsLink, timeout: float) -> None:
        self._link = link
        self._timeout = timeout

    def _answer_by(self) -> datetime:
        """When the dispatcher must have started a write for its answer to arrive while we
        still wait; after it, it stores nothing (writer.py)."""
        return datetime.now(UTC) + timedelta(seconds=self._timeout * DISPATCHER_SHARE)

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        command = command.model_copy(update={"answer_by": self._answer_by()})
        payload = command.model_dump_json().encode()
        # The dispatcher's limit, measured on what is sent: re-encoding can grow a body
        # (`1E15` is 4 bytes in JSON and 18 once encoded).
        if len(payload) > MAX_COMMAND_BYTES:
            raise payload_too_large(
                f"the command is {len(payload)} bytes once encoded; the limit is "
                f"{MAX_COMMAND_BYTES} bytes (request bodies: {MAX_BODY_BYTES} bytes)"
            )
        # Straight to the dispatcher that writes the device's streams.
        subject = partition_subject(partition_of(command.device_id), "submit")
        return await self._naming(
            subject, payload, command.execution_id, "the command may have been stored and sent"
        )

    async def cancel(self, command: CancelCommand) -> ExecutionReply:
        return await self._request(CANCEL_SUBJECT, _encoded(command), ExecutionReply)

    async def retry(self, command: RetryCommand) -> ExecutionReply:
        command = command.model_copy(update={"answer_by": self._answer_by()})
        return await self._naming(
            RETRY_SUBJECT, _encoded(command), command.retry_id, "the retry may have been stored"
        )

    async def delete(self, command: DeleteCommand) -> ExecutionReply:
        return await self._request(DELETE_SUBJECT, _encoded(command), ExecutionReply)

    async def purge(self, command: PurgeCommand) -> PurgeReply:
        return await self._request(PURGE_SUBJECT, _encoded(command), PurgeReply)

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        return await self._request(CATALOG_CHANGE_SUBJECT, _encoded(change), CatalogReply)

    async def _naming(
        self, subject: str, payload: bytes, execution_id: UUID | None, stored: str
    ) -> ExecutionReply:
        """A request naming the execution it makes (a submit, a retry): the dispatcher stores
        it once and answers a repeat with what it stored, so it is sent again when lost, and
        an answer that never comes names the execution a GET settles it with."""
        unknown = outcome_unknown(
            f"the dispatcher did not answer in time; {stored}: GET its Location (404: nothing "
            "was stored), or retry with the same Idempotency-Key",
            execution_id,
        )
        with about(execution_id):
            return await self._request(subject, payload, ExecutionReply, unknown, RESEND_S)

    async def _request(
        self,
        subject: str,
        payload: bytes,
        reply: type[R],
        unknown: ProblemError | None = None,
        resend_after: float | None = None,
    ) -> R:
        client = self._link.client
        if client is None or not client.is_connected:
            raise unavailable("the message bus is not reachable; nothing was stored; retry")
        try:
            verb = subject.rsplit(".", 1)[-1]
            with tracing.span(f"request {verb}", tracing.SpanKind.CLIENT):
                message = await request_patiently(
                    client, subject, payload, self._timeout, resend_after
                )
        except NoRespondersError:
            raise unavailable("no dispatcher is running; nothing was stored; retry") from None
        except MaxPayloadError:
            # Refused by the client before sending: it can never succeed, so no "retry".
            limit = client.max_payload
            raise payload_too_large(f"the request is larger than {limit} bytes") from None
        except NatsTimeoutError:
            raise unknown or _unknown(subject) from None
        except NatsError as exc:
            # The connection failed while the request was out: it may have arrived.
            log.warning("request on %s failed: %s", subject, exc)
            raise unknown or _unknown(subject) from None
        try:
            return reply.model_validate_json(message.data)
        except ValidationError:
            log.exception("the dispatcher's reply on %s cannot be read", subject)
            raise


def _encoded(command: BaseModel) -> bytes:
    return command.model_dump_json().encode()


def _unknown(subject: str) -> ProblemError:
    return outcome_unknown(
        f"the dispatcher did not answer in time ({subject.rsplit('.', 1)[-1]}); the request "
        "may have been applied: look before you retry"
    )
