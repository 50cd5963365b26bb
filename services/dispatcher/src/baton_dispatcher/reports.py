"""The dispatcher's consumer of device reports (BATON_REPORTS), in batches.

Reports are pushed to one durable consumer (many unacknowledged at once, in stream order)
and taken off in batches: every report of a batch is handed to the Writer at once, in
stream order, so they land in the same group commit in that order, and each is acknowledged
once its effect is stored. A plain nats-py subscription, not FastStream's: its per-message
dependency injection, middleware and decoding cost more than the report's own work, and a
batch is not something its subscriber API hands out.

Order across a crash: what a killed dispatcher held unacknowledged comes back first, at the
restart (`resume_in_order`). Within a live dispatcher, a batch takes well under the ack wait.
Each partition of devices has its own durable consumer, run by the dispatcher that holds the
partition (partitions.py), so a device's reports are applied by the one writer of its
streams, in order.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from baton_contracts.nats import (
    LEGACY_REPORTS,
    REJECTIONS_SUBJECT,
    REPORT_ADAPTER,
    REPORTS_STREAM,
    PresenceReport,
    ReportRejected,
    StateReport,
    partition_reports,
)
from baton_dispatcher.writer import ReportResult, Writer
from baton_platform import tracing
from baton_platform.consumers import BatchingConsumer
from baton_platform.deadletters import dead_letter
from baton_platform.logs import about
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats_access import REPORTS_DURABLE, reports_durable

log = logging.getLogger(__name__)

SERVICE = "dispatcher"
CONSUMER = tracing.SpanKind.CONSUMER
MAX_DELIVERIES = 20
# The most reports handed to the Writer at once (and unacknowledged).
REPORTS_BATCH = 256
# Short, since a stuck report holds back every report of its batch behind it.
REPORTS_ACK_WAIT_S = 5.0


async def narrow_legacy_consumer(js: JetStreamContext) -> bool:
    """A release without partitions had one consumer for every report. It now takes only the
    reports on that release's subjects (a bridge not yet upgraded), or the partitions'
    consumers could not be made: a work-queue stream's consumers may not overlap. Returns
    whether it exists (only then is it consumed, by the holder of partition 0)."""
    try:
        info = await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)
    except NotFoundError:
        return False
    if (info.config.filter_subjects or [info.config.filter_subject]) != [LEGACY_REPORTS]:
        config = info.config.evolve(filter_subject=None, filter_subjects=[LEGACY_REPORTS])
        await js.add_consumer(REPORTS_STREAM, config)
        log.info("consumer %s now takes %s only", REPORTS_DURABLE, LEGACY_REPORTS)
    return True


class ReportsConsumer:
    """The reports of one partition's devices (None: those on the legacy subjects)."""

    def __init__(self, nc: Client, writer: Writer, partition: int | None) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._writer = writer
        self._consumer = BatchingConsumer(
            REPORTS_STREAM,
            REPORTS_DURABLE if partition is None else reports_durable(partition),
            [LEGACY_REPORTS if partition is None else partition_reports(partition)],
            self._handle_batch,
            batch=REPORTS_BATCH,
            ack_wait=REPORTS_ACK_WAIT_S,
        )

    async def start(self) -> None:
        """Subscribe; what a killed dispatcher held comes back now, first. Tried until it
        succeeds: it runs in the background while the partition is held."""
        await self._consumer.start(self._js, patient=True)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self) -> None:
        await self._consumer.run()

    async def _handle_batch(self, batch: list[Msg]) -> None:
        # Each handler hands its report to the Writer before its first wait, so they
        # queue there in stream order and land in the same transaction.
        await asyncio.gather(*(self._handle(msg) for msg in batch))

    async def _handle(self, msg: Msg) -> None:
        try:
            report = REPORT_ADAPTER.validate_json(msg.data)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-report").inc()
            await dead_letter(self._js, SERVICE, msg.subject, msg.data, f"malformed report: {exc}")
            await msg.ack()
            return
        try:
            result: ReportResult
            if isinstance(report, PresenceReport):
                result = await self._writer.apply_presence(report)
            elif isinstance(report, StateReport):
                result = await self._writer.apply_state(report)
            else:
                name = f"report {report.status or report.kind}"
                parent = tracing.extract(msg.headers)
                with (
                    tracing.continued(name, CONSUMER, parent, report.execution_id),
                    about(report.execution_id),
                ):
                    result = await self._writer.apply_report(report)
        except Exception as exc:
            deliveries = msg.metadata.num_delivered
            if deliveries >= MAX_DELIVERIES:
                log.exception("giving up on report %s", report.report_id)
                await dead_letter(
                    self._js, SERVICE, msg.subject, msg.data, f"failed {deliveries}x: {exc}"
                )
                await msg.ack()
            else:
                log.warning("report %s failed (%s); redelivering", report.report_id, exc)
                await msg.nak(delay=min(0.2 * deliveries, 5.0))
            return
        if result.refused:
            REJECTED_MESSAGES.labels(service=SERVICE, reason=result.refused).inc()
            log.warning(
                "dropped report %s from %s: %s", report.report_id, report.device_id, result.refused
            )
            rejected = ReportRejected(report=report, reason=result.refused)
            await self._nc.publish(REJECTIONS_SUBJECT, rejected.model_dump_json().encode())
        await msg.ack()
