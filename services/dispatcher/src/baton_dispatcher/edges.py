"""The dispatcher's NATS edges: decode, one call on the Writer, encode.

Request/reply subjects (submit, cancel, deadline, ...) are core NATS in a queue group, each
answered once the Writer's group commit holds its effect. Device reports come from the
durable JetStream stream BATON_REPORTS, in batches: see `reports`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from baton_contracts.nats import (
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    CATALOG_GET_SUBJECT,
    DEADLINE_SUBJECT,
    DELETE_SUBJECT,
    DISPATCHER_QUEUE,
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
    PartitionVerb,
    Problem,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
    partition_subject,
)
from baton_dispatcher.router import Router
from baton_dispatcher.writer import MAX_BATCH, Writer
from baton_platform.consumers import raw_body
from baton_platform.requests import Refuse, RequestEdges, answer_request, answers_to, any_inbox

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
M = TypeVar("M", bound=BaseModel)
# Requests of one subject in hand at once: enough to fill a group commit (writer.MAX_BATCH).
CONCURRENT_REQUESTS = MAX_BATCH


def refused(problem: Problem) -> ExecutionReply:
    return ExecutionReply(problem=problem)


def deadline_refused(problem: Problem) -> DeadlineReply:
    return DeadlineReply(outcome="unknown", problem=problem)


async def register(edges: RequestEdges, writer: Writer, router: Router) -> None:
    """The subjects every dispatcher answers: each request goes on to its device's partition."""
    by_execution = router.by_execution
    await edges.serve(SUBMIT_SUBJECT, SubmitCommand, router.submit(writer.submit, refused), refused)
    cancel = by_execution("cancel", writer.cancel, ExecutionReply, refused)
    await edges.serve(CANCEL_SUBJECT, CancelCommand, cancel, refused)
    retry = by_execution("retry", writer.retry, ExecutionReply, refused)
    await edges.serve(RETRY_SUBJECT, RetryCommand, retry, refused)
    delete = by_execution("delete", writer.delete, ExecutionReply, refused)
    await edges.serve(DELETE_SUBJECT, DeleteCommand, delete, refused)
    deadline = by_execution("deadline", writer.deadline, DeadlineReply, deadline_refused)
    await edges.serve(DEADLINE_SUBJECT, DeadlineDue, deadline, deadline_refused)


async def serve_partition(
    edges: RequestEdges, writer: Writer, partition: int
) -> list[Subscription]:
    """The subjects of one partition this dispatcher holds: handled here, by the Writer."""

    def subject(verb: PartitionVerb) -> str:
        return partition_subject(partition, verb)

    return [
        await edges.serve(subject("submit"), SubmitCommand, writer.submit, refused),
        await edges.serve(subject("cancel"), CancelCommand, writer.cancel, refused),
        await edges.serve(subject("retry"), RetryCommand, writer.retry, refused),
        await edges.serve(subject("delete"), DeleteCommand, writer.delete, refused),
        await edges.serve(subject("deadline"), DeadlineDue, writer.deadline, deadline_refused),
    ]


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

    # Answered here rather than by FastStream, which would publish to any reply subject.
    @broker.subscriber(
        subject,
        queue=DISPATCHER_QUEUE,
        decoder=raw_body,
        include_in_schema=False,
        no_reply=True,
    )
    async def on_request(message: NatsMessage) -> None:
        msg: Msg = message.raw_message
        if not answers_to(msg, SERVICE, verb, any_inbox):
            return
        answer = await answer_request(SERVICE, message.body, subject, verb, model, handle, refuse)
        if msg.reply:
            await msg.respond(answer)
