"""Requests on the subjects every dispatcher answers, each sent where its device's streams are
written: handled here when this dispatcher holds the device's partition, else passed on to
the partition's subject, whose holder alone answers it (partitions.py).

The api sends submits to the partition's subject itself; what comes here is a request that
names an execution (cancel, retry, delete, a deadline: its device is read from the store),
and submits from other NATS callers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from baton_contracts.nats import (
    ExecutionReply,
    PartitionVerb,
    Problem,
    SubmitCommand,
    partition_of,
    partition_subject,
)
from baton_domain.application import Executions
from baton_platform.requests import request_patiently

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


def partition_unavailable(execution_id: UUID | None) -> Problem:
    return Problem(
        status=503,
        title="Service unavailable",
        detail="no dispatcher took the device's requests in time (one may be starting or "
        "taking over from another); the request may not have been applied: look before you "
        "retry",
        code="outcome-unknown",
        retry_after=1.0,
        execution_id=execution_id,
    )


class Router:
    def __init__(
        self,
        nc: Client,
        executions: Executions,
        holds: Callable[[int], bool],
        timeout: float,
    ) -> None:
        self._nc = nc
        self._executions = executions
        self._holds = holds
        self._timeout = timeout

    def submit(
        self,
        handle: Callable[[SubmitCommand], Awaitable[ExecutionReply]],
        refused: Callable[[Problem], ExecutionReply],
    ) -> Callable[[SubmitCommand], Awaitable[ExecutionReply]]:
        async def route(command: SubmitCommand) -> ExecutionReply:
            partition = partition_of(command.device_id)
            if self._holds(partition):
                return await handle(command)
            return await self._pass_on(partition, "submit", command, ExecutionReply, refused)

        return route

    def by_execution(
        self,
        verb: PartitionVerb,
        handle: Callable[[C], Awaitable[R]],
        reply: type[R],
        refused: Callable[[Problem], R],
    ) -> Callable[[C], Awaitable[R]]:
        """For a command naming an execution (`execution_id`): to its device's partition."""

        async def route(command: C) -> R:
            execution_id: UUID = getattr(command, "execution_id")  # noqa: B009 (typed per model)
            device_id = await asyncio.to_thread(self._executions.device_of, execution_id)
            if device_id is None or self._holds(partition_of(device_id)):
                return await handle(command)  # here, or not found here like anywhere
            return await self._pass_on(partition_of(device_id), verb, command, reply, refused)

        return route

    async def _pass_on(
        self,
        partition: int,
        verb: PartitionVerb,
        command: BaseModel,
        reply: type[R],
        refused: Callable[[Problem], R],
    ) -> R:
        execution_id = getattr(command, "execution_id", None)
        subject = partition_subject(partition, verb)
        try:
            message = await request_patiently(
                self._nc, subject, command.model_dump_json().encode(), self._timeout
            )
            return reply.model_validate_json(message.data)
        except (NoRespondersError, NatsError, ValidationError) as exc:
            log.warning("passing %s on to partition %d failed: %s", verb, partition, exc)
            return refused(partition_unavailable(execution_id))
