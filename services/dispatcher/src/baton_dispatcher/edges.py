"""The dispatcher's NATS edges: decode, one call on the Writer, encode.

Request/reply subjects (submit, cancel, deadline) are core NATS in a queue group; device
reports come from the durable JetStream stream BATON_REPORTS and are acknowledged only after
their effect is stored. A report that cannot be decoded, or still fails after many
deliveries, is dead-lettered with a reason instead of looping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
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
    REJECTIONS_SUBJECT,
    REPORT_ADAPTER,
    REPORTS_STREAM,
    REPORTS_WILDCARD,
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
    PresenceReport,
    Problem,
    PurgeCommand,
    PurgeReply,
    ReportRejected,
    RetryCommand,
    StateReport,
    SubmitCommand,
)
from baton_dispatcher.writer import Writer
from baton_platform.consumers import durable_subscriber, raw_body, resume_in_order
from baton_platform.deadletters import dead_letter
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
REPORTS_DURABLE = "baton-dispatcher-reports"
MAX_DELIVERIES = 20
# Reports are applied in the order of the stream, also across a crash: one unacknowledged at
# a time (a device's STARTED must not land after its SUCCEEDED because the instance that held
# it was killed), and a short ack wait, since a stuck one holds back every report behind it.
REPORTS_MAX_ACK_PENDING = 1
REPORTS_ACK_WAIT_S = 5.0

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
) -> None:
    """A request/reply subject of the dispatcher: decode, one Writer call, encode.

    A message that does not fit `model` is answered `refuse(problem)` and counted; so is a
    request the Writer fails on (logged): a requester is never left without an answer."""
    verb = subject.rsplit(".", 1)[-1]
    reason = "invalid-" + verb

    @broker.subscriber(subject, queue=DISPATCHER_QUEUE, decoder=raw_body, include_in_schema=False)
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


async def resume_reports(js: JetStreamContext) -> None:
    """Before `register`: what a killed dispatcher held comes back now, first."""
    await resume_in_order(
        js, REPORTS_STREAM, REPORTS_DURABLE, REPORTS_MAX_ACK_PENDING, REPORTS_ACK_WAIT_S
    )


def register(broker: NatsBroker, writer: Writer, js: JetStreamContext) -> None:
    def refused(problem: Problem) -> ExecutionReply:
        return ExecutionReply(problem=problem)

    request_reply(broker, SUBMIT_SUBJECT, SubmitCommand, writer.submit, refused)
    request_reply(broker, CANCEL_SUBJECT, CancelCommand, writer.cancel, refused)
    request_reply(broker, RETRY_SUBJECT, RetryCommand, writer.retry, refused)
    request_reply(broker, DELETE_SUBJECT, DeleteCommand, writer.delete, refused)
    request_reply(
        broker, PURGE_SUBJECT, PurgeCommand, writer.purge, lambda p: PurgeReply(problem=p)
    )
    request_reply(
        broker,
        CATALOG_CHANGE_SUBJECT,
        CatalogChange,
        writer.change_catalog,
        lambda p: CatalogReply(problem=p),
    )
    request_reply(
        broker,
        CATALOG_GET_SUBJECT,
        CatalogQuery,
        writer.get_catalog,
        lambda p: CatalogReply(problem=p),
    )

    @broker.subscriber(
        DEADLINE_SUBJECT, queue=DISPATCHER_QUEUE, decoder=raw_body, include_in_schema=False
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

    @durable_subscriber(
        broker,
        REPORTS_WILDCARD,
        REPORTS_STREAM,
        REPORTS_DURABLE,
        max_ack_pending=REPORTS_MAX_ACK_PENDING,
        ack_wait=REPORTS_ACK_WAIT_S,
    )
    async def on_report(message: NatsMessage) -> None:
        body = message.body
        try:
            report = REPORT_ADAPTER.validate_json(body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-report").inc()
            await dead_letter(
                js, SERVICE, message.raw_message.subject, body, f"malformed report: {exc}"
            )
            await message.ack()
            return
        try:
            if isinstance(report, PresenceReport):
                result = await writer.apply_presence(report)
            elif isinstance(report, StateReport):
                result = await writer.apply_state(report)
            else:
                result = await writer.apply_report(report)
        except Exception as exc:
            deliveries = message.raw_message.metadata.num_delivered
            if deliveries >= MAX_DELIVERIES:
                log.exception("giving up on report %s", report.report_id)
                await dead_letter(
                    js, SERVICE, message.raw_message.subject, body, f"failed {deliveries}x: {exc}"
                )
                await message.ack()
            else:
                log.warning("report %s failed (%s); redelivering", report.report_id, exc)
                await message.nack(delay=min(0.2 * deliveries, 5.0))
            return
        if result.refused:
            REJECTED_MESSAGES.labels(service=SERVICE, reason=result.refused).inc()
            log.warning(
                "dropped report %s from %s: %s", report.report_id, report.device_id, result.refused
            )
            rejected = ReportRejected(report=report, reason=result.refused)
            await broker.publish(rejected.model_dump_json().encode(), REJECTIONS_SUBJECT)
        await message.ack()
