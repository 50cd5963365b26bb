"""The dispatcher's NATS edges: decode, one call on the Writer, encode.

Request/reply subjects (submit, cancel, deadline, ...) are core NATS in a queue group, each
answered once the Writer's group commit holds its effect. Device reports come from the
durable JetStream stream BATON_REPORTS, in batches: see `reports`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
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
    TENANT_SUBMIT_SUBJECT,
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
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
# Requests of one subject in hand at once: enough to fill a group commit (writer.MAX_BATCH).
CONCURRENT_REQUESTS = MAX_BATCH

M = TypeVar("M", bound=BaseModel)
Refuse = Callable[[Problem], BaseModel]
Bind = Callable[[str, M], M]
# Where the tenant is in a tenant client's submit subject.
TENANT_TOKEN = TENANT_SUBMIT_SUBJECT.split(".").index("{tenant}")


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


class RequestEdges:
    """The dispatcher's busy request/reply subjects, on one NATS connection.

    A plain nats-py subscription in the dispatchers' queue group per subject, not FastStream's:
    measured here, FastStream's subscriber cost ~0.4-0.7 ms of CPU per request (dependency
    injection, middleware, its logging) against ~0.08 ms for the same request/reply on
    nats-py, more than the dispatcher's own work for a submit (docs/architecture.md)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._subs: list[Subscription] = []
        self._running: set[asyncio.Task[None]] = set()

    async def serve(
        self,
        subject: str,
        model: type[M],
        handle: Callable[[M], Awaitable[BaseModel]],
        refuse: Callable[[Problem], BaseModel],
        concurrent: int = CONCURRENT_REQUESTS,
        bind: Bind[M] | None = None,
    ) -> None:
        """Answer `subject`: decode, one Writer call, encode.

        Up to `concurrent` requests of the subject are in hand at once, so those that arrive
        together meet in the Writer's queue and share one group commit; with 1, they are
        answered one by one in the order they came.

        A message that does not fit `model` is answered `refuse(problem)` and counted; so is a
        request the Writer fails on (logged): a requester is never left without an answer.
        `bind(subject, command)`, when given, sets what the subject decides on the command."""
        gate = asyncio.Semaphore(concurrent)
        verb = subject.rsplit(".", 1)[-1]

        async def answer(msg: Msg) -> None:
            async with gate:
                bound = None if bind is None else functools.partial(bind, msg.subject)
                reply = await _answer(msg.data, subject, verb, model, handle, refuse, bound)
            if msg.reply:
                await msg.respond(reply)

        async def arrived(msg: Msg) -> None:
            if concurrent == 1:
                await answer(msg)  # nats-py calls back one message at a time, in order
                return
            task = asyncio.create_task(answer(msg))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

        self._subs.append(await self._nc.subscribe(subject, queue=DISPATCHER_QUEUE, cb=arrived))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for task in list(self._running):
            await cancel_and_wait(task)


async def _answer(
    body: bytes,
    subject: str,
    verb: str,
    model: type[M],
    handle: Callable[[M], Awaitable[BaseModel]],
    refuse: Callable[[Problem], BaseModel],
    bind: Callable[[M], M] | None = None,
) -> bytes:
    if len(body) > MAX_COMMAND_BYTES:
        # Stored, it would make events NATS cannot carry: the relay would stop on them.
        REJECTED_MESSAGES.labels(service=SERVICE, reason=f"oversized-{verb}").inc()
        return refuse(too_large(len(body))).model_dump_json().encode()
    try:
        command = model.model_validate_json(body)
        if bind is not None:
            command = bind(command)
    except ValidationError as exc:
        REJECTED_MESSAGES.labels(service=SERVICE, reason=f"invalid-{verb}").inc()
        return refuse(invalid_message(exc)).model_dump_json().encode()
    try:
        reply = await handle(command)
    except Exception:
        log.exception("%s failed", subject)
        REJECTED_MESSAGES.labels(service=SERVICE, reason=f"{verb}-failed").inc()
        about = getattr(command, "execution_id", None)  # what to GET before a retry
        return refuse(FAILED.model_copy(update={"execution_id": about})).model_dump_json().encode()
    return reply.model_dump_json().encode()


def tenant_submit(subject: str, command: SubmitCommand) -> SubmitCommand:
    """A tenant client's submit: its tenant is the subject's (its NATS user may publish there
    only), whatever the message says, and so is who asked (`nats:<tenant>`)."""
    tenant = subject.split(".")[TENANT_TOKEN]
    bound = {"tenant": tenant, "principal": f"nats:{tenant}"}
    return SubmitCommand.model_validate({**command.model_dump(), **bound})


async def register(edges: RequestEdges, writer: Writer) -> None:
    def refused(problem: Problem) -> ExecutionReply:
        return ExecutionReply(problem=problem)

    def deadline_refused(problem: Problem) -> DeadlineReply:
        return DeadlineReply(outcome="unknown", problem=problem)

    await edges.serve(SUBMIT_SUBJECT, SubmitCommand, writer.submit, refused)
    await edges.serve(
        TENANT_SUBMIT_SUBJECT.format(tenant="*"),
        SubmitCommand,
        writer.submit,
        refused,
        bind=tenant_submit,
    )
    await edges.serve(CANCEL_SUBJECT, CancelCommand, writer.cancel, refused)
    await edges.serve(RETRY_SUBJECT, RetryCommand, writer.retry, refused)
    await edges.serve(DELETE_SUBJECT, DeleteCommand, writer.delete, refused)
    await edges.serve(DEADLINE_SUBJECT, DeadlineDue, writer.deadline, deadline_refused)


def register_admin(broker: NatsBroker, writer: Writer) -> None:
    """Purges and the catalog: rare admin requests, answered one at a time in the order they
    came, through FastStream (its declared subscribers; its per-message cost does not matter
    at their rate)."""
    admin: list[tuple[str, type[Any], Callable[[Any], Awaitable[BaseModel]], Refuse]] = [
        (PURGE_SUBJECT, PurgeCommand, writer.purge, lambda p: PurgeReply(problem=p)),
        (
            CATALOG_CHANGE_SUBJECT,
            CatalogChange,
            writer.change_catalog,
            lambda p: CatalogReply(problem=p),
        ),
        (CATALOG_GET_SUBJECT, CatalogQuery, writer.get_catalog, lambda p: CatalogReply(problem=p)),
    ]
    for subject, model, handle, refuse in admin:
        _admin_subject(broker, subject, model, handle, refuse)


def _admin_subject(
    broker: NatsBroker,
    subject: str,
    model: type[M],
    handle: Callable[[M], Awaitable[BaseModel]],
    refuse: Refuse,
) -> None:
    verb = subject.rsplit(".", 1)[-1]

    @broker.subscriber(subject, queue=DISPATCHER_QUEUE, decoder=raw_body, include_in_schema=False)
    async def on_request(message: NatsMessage) -> bytes:
        return await _answer(message.body, subject, verb, model, handle, refuse)
