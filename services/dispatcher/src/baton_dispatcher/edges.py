"""The dispatcher's NATS edges: decode, one call on the Writer, encode.

Request/reply subjects (submit, cancel, deadline, ...) are core NATS in a queue group, each
answered once the Writer's group commit holds its effect. Device reports come from the
durable JetStream stream BATON_REPORTS, in batches: see `reports`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from pydantic import BaseModel, ValidationError

from baton_contracts.nats import (
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    CATALOG_GET_SUBJECT,
    DEADLINE_SUBJECT,
    DELETE_SUBJECT,
    DISPATCHER_QUEUE,
    MAX_COMMAND_BYTES,
    PURGE_SUBJECT,
    RETRY_SUBJECT,
    SUBMIT_SUBJECT,
    CancelCommand,
    CatalogChange,
    CatalogQuery,
    CatalogReply,
    DeadlineDue,
    DeadlineReply,
    DeleteCommand,
    ExecutionReply,
    FieldProblem,
    Problem,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
)
from baton_dispatcher.writer import MAX_BATCH, Writer
from baton_platform.consumers import raw_body
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
# Requests of one subject in hand at once: enough to fill a group commit (writer.MAX_BATCH).
CONCURRENT_REQUESTS = MAX_BATCH

M = TypeVar("M", bound=BaseModel)


# A bug or a store failure while handling a request; whether it stored anything is not
# known here, so the answer does not say.
FAILED = Problem(
    status=500,
    title="Internal error",
    detail="the dispatcher failed on this request; it has been logged",
    code="internal-error",
)


def invalid_message(exc: ValidationError) -> Problem:
    return Problem(
        status=422,
        title="Invalid message",
        detail="the request does not match the message schema",
        code="invalid-message",
        errors=[
            FieldProblem(field=".".join(str(p) for p in err["loc"]) or "(body)", reason=err["msg"])
            for err in exc.errors()
        ],
    )


def too_large(size: int) -> Problem:
    return Problem(
        status=413,
        title="Payload too large",
        detail=f"the request is {size} bytes; the limit is {MAX_COMMAND_BYTES} bytes",
        code="payload-too-large",
    )


def request_reply(
    broker: NatsBroker,
    subject: str,
    model: type[M],
    handle: Callable[[M], Awaitable[BaseModel]],
    refuse: Callable[[Problem], BaseModel],
    max_workers: int = CONCURRENT_REQUESTS,
) -> None:
    """A request/reply subject of the dispatcher: decode, one Writer call, encode.

    Up to `max_workers` requests of the subject are handled at once, so those that arrive
    together meet in the Writer's queue and share one group commit.

    A message that does not fit `model` is answered `refuse(problem)` and counted; so is a
    request the Writer fails on (logged): a requester is never left without an answer."""
    verb = subject.rsplit(".", 1)[-1]
    reason = "invalid-" + verb

    @broker.subscriber(
        subject,
        queue=DISPATCHER_QUEUE,
        decoder=raw_body,
        include_in_schema=False,
        max_workers=max_workers,
    )
    async def on_request(message: NatsMessage) -> bytes:
        if len(message.body) > MAX_COMMAND_BYTES:
            # Stored, it would make events NATS cannot carry: the relay would stop on them.
            REJECTED_MESSAGES.labels(service=SERVICE, reason=f"oversized-{verb}").inc()
            return refuse(too_large(len(message.body))).model_dump_json().encode()
        try:
            command = model.model_validate_json(message.body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason=reason).inc()
            return refuse(invalid_message(exc)).model_dump_json().encode()
        try:
            reply = await handle(command)
        except Exception:
            log.exception("%s failed", subject)
            REJECTED_MESSAGES.labels(service=SERVICE, reason=f"{verb}-failed").inc()
            about = getattr(command, "execution_id", None)  # what to GET before a retry
            return (
                refuse(FAILED.model_copy(update={"execution_id": about})).model_dump_json().encode()
            )
        return reply.model_dump_json().encode()


def register(broker: NatsBroker, writer: Writer) -> None:
    def refused(problem: Problem) -> ExecutionReply:
        return ExecutionReply(problem=problem)

    request_reply(broker, SUBMIT_SUBJECT, SubmitCommand, writer.submit, refused)
    request_reply(broker, CANCEL_SUBJECT, CancelCommand, writer.cancel, refused)
    request_reply(broker, RETRY_SUBJECT, RetryCommand, writer.retry, refused)
    request_reply(broker, DELETE_SUBJECT, DeleteCommand, writer.delete, refused)
    request_reply(
        broker,
        PURGE_SUBJECT,
        PurgeCommand,
        writer.purge,
        lambda p: PurgeReply(problem=p),
        max_workers=1,
    )
    request_reply(
        broker,
        CATALOG_CHANGE_SUBJECT,
        CatalogChange,
        writer.change_catalog,
        lambda p: CatalogReply(problem=p),
        max_workers=1,  # in the order they came
    )
    request_reply(
        broker,
        CATALOG_GET_SUBJECT,
        CatalogQuery,
        writer.get_catalog,
        lambda p: CatalogReply(problem=p),
    )

    @broker.subscriber(
        DEADLINE_SUBJECT,
        queue=DISPATCHER_QUEUE,
        decoder=raw_body,
        include_in_schema=False,
        max_workers=CONCURRENT_REQUESTS,
    )
    async def on_deadline(message: NatsMessage) -> bytes:
        body = message.body
        try:
            due = DeadlineDue.model_validate_json(body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="invalid-deadline").inc()
            reply = DeadlineReply(outcome="unknown", problem=invalid_message(exc))
            return reply.model_dump_json().encode()
        return (await writer.deadline(due)).model_dump_json().encode()
