"""Device answers in: an MQTT message on a response topic -> an `answer` DeviceReport.

The device id comes from the topic, never from the payload: the broker's ACL decides who may
publish on a device's topics, and the dispatcher checks that the execution belongs to that
device (a device speaks only for itself). Anything that cannot be read is dropped and counted,
never allowed to stop the bridge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import UTC, datetime
from uuid import UUID

from pydantic import ValidationError

from baton_contracts.mqtt import DeviceAnswer, parse_execution_topic
from baton_contracts.nats import DeviceReport
from baton_device_bridge.reports import ReportNotStoredError, ReportRefusedError, ReportSink
from baton_domain.catalog import DEVICE_ID_PATTERN
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "device-bridge"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class MalformedAnswerError(ValueError):
    """Not a readable answer. `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def answer_report_id(execution_id: UUID, answer_id: str | None, raw: bytes) -> str:
    """Stable per answer: the device's own id, else a digest of the exact bytes it sent."""
    suffix = answer_id if answer_id is not None else hashlib.sha256(raw).hexdigest()[:32]
    return f"answer:{execution_id}:{suffix}"


def decode_answer(topic: str, raw: bytes, received_at: datetime) -> DeviceReport:
    parsed = parse_execution_topic(topic)
    if parsed is None or parsed[2] != "response":
        raise MalformedAnswerError("malformed-topic", f"not a response topic: {topic!r}")
    device_id, execution, _ = parsed
    # A device id outside the catalog's pattern names no device (and could not be a NATS
    # subject token): nothing can be for it.
    if not _DEVICE_ID.match(device_id):
        raise MalformedAnswerError("malformed-topic", f"not a device id: {device_id!r}")
    try:
        execution_id = UUID(execution)
    except ValueError:
        detail = f"not an execution id: {execution!r}"
        raise MalformedAnswerError("malformed-topic", detail) from None
    try:
        answer = DeviceAnswer.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise MalformedAnswerError("malformed-answer", f"{where}: {first['msg']}") from None
    return DeviceReport(
        kind="answer",
        report_id=answer_report_id(execution_id, answer.answer_id, raw),
        device_id=device_id,
        execution_id=execution_id,
        status=answer.status,
        payload=answer.payload,
        received_at=received_at,
    )


class AnswerForwarder:
    """Turns each answer into a stored report; returns only when the answer may be acked.

    While JetStream is unavailable it retries (with capped backoff) rather than return: the
    MQTT acknowledgement is withheld until then, so the answer is never lost, and answers
    are handled in the order they came (MQTT wants its PUBACKs in that order too).
    """

    def __init__(self, sink: ReportSink, retry_cap: float = 5.0) -> None:
        self._sink = sink
        self._retry_cap = retry_cap
        self.failed_attempts = 0  # how often a store had to be retried (for tests and logs)

    async def handle(self, topic: str, raw: bytes) -> None:
        try:
            report = decode_answer(topic, raw, datetime.now(UTC))
        except MalformedAnswerError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason=exc.reason).inc()
            log.warning("dropped a message on %s (%s): %s", topic, exc.reason, exc)
            return
        await self._store(report)

    async def _store(self, report: DeviceReport) -> None:
        attempt = 0
        while True:
            try:
                await self._sink.store(report)
            except ReportRefusedError as exc:
                REJECTED_MESSAGES.labels(service=SERVICE, reason="report-refused").inc()
                log.error("JetStream refused report %s: %s; dropped", report.report_id, exc)
                return
            except ReportNotStoredError as exc:
                attempt += 1
                self.failed_attempts += 1
                delay = min(0.1 * 2 ** (attempt - 1), self._retry_cap)
                # The first failure is worth a warning; the retries of a long outage are not.
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "report %s not stored (%s); retrying", report.report_id, exc)
                await asyncio.sleep(delay)
                continue
            log.debug("answer %s stored", report.report_id)
            return
