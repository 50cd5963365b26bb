"""The dispatcher's NATS edges: decode, one call on the Writer, encode.

Request/reply subjects (submit, cancel, deadline) are core NATS in a queue group; device
reports come from the durable JetStream stream BATON_REPORTS and are acknowledged only after
their effect is stored. A report that cannot be decoded, or still fails after many
deliveries, is dead-lettered with a reason instead of looping.
"""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from pydantic import ValidationError

from baton_contracts.nats import (
    CANCEL_SUBJECT,
    DEADLINE_SUBJECT,
    DISPATCHER_QUEUE,
    REJECTIONS_SUBJECT,
    REPORTS_STREAM,
    REPORTS_WILDCARD,
    SUBMIT_SUBJECT,
    CancelCommand,
    DeadlineDue,
    DeadlineReply,
    DeviceReport,
    ExecutionReply,
    FieldProblem,
    Problem,
    ReportRejected,
    SubmitCommand,
)
from baton_dispatcher.writer import Writer
from baton_platform.consumers import durable_subscriber
from baton_platform.deadletters import dead_letter
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
REPORTS_DURABLE = "baton-dispatcher-reports"
MAX_DELIVERIES = 20


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


def register(broker: NatsBroker, writer: Writer, js: JetStreamContext) -> None:
    @broker.subscriber(SUBMIT_SUBJECT, queue=DISPATCHER_QUEUE, include_in_schema=False)
    async def on_submit(message: NatsMessage) -> bytes:
        body = message.body
        try:
            command = SubmitCommand.model_validate_json(body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="invalid-submit").inc()
            return ExecutionReply(problem=invalid_message(exc)).model_dump_json().encode()
        return (await writer.submit(command)).model_dump_json().encode()

    @broker.subscriber(CANCEL_SUBJECT, queue=DISPATCHER_QUEUE, include_in_schema=False)
    async def on_cancel(message: NatsMessage) -> bytes:
        body = message.body
        try:
            command = CancelCommand.model_validate_json(body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="invalid-cancel").inc()
            return ExecutionReply(problem=invalid_message(exc)).model_dump_json().encode()
        return (await writer.cancel(command)).model_dump_json().encode()

    @broker.subscriber(DEADLINE_SUBJECT, queue=DISPATCHER_QUEUE, include_in_schema=False)
    async def on_deadline(message: NatsMessage) -> bytes:
        body = message.body
        try:
            due = DeadlineDue.model_validate_json(body)
        except ValidationError:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="invalid-deadline").inc()
            return DeadlineReply(outcome="unknown").model_dump_json().encode()
        return (await writer.deadline(due)).model_dump_json().encode()

    @durable_subscriber(broker, REPORTS_WILDCARD, REPORTS_STREAM, REPORTS_DURABLE)
    async def on_report(message: NatsMessage) -> None:
        body = message.body
        try:
            report = DeviceReport.model_validate_json(body)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-report").inc()
            await dead_letter(
                js, SERVICE, message.raw_message.subject, body, f"malformed report: {exc}"
            )
            await message.ack()
            return
        try:
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
                "dropped report %s from %s for %s: %s",
                report.report_id,
                report.device_id,
                report.execution_id,
                result.refused,
            )
            rejected = ReportRejected(report=report, reason=result.refused)
            await broker.publish(rejected.model_dump_json().encode(), REJECTIONS_SUBJECT)
        await message.ack()
