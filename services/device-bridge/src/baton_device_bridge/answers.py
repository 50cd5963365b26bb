"""Device answers in: an MQTT message on an answer topic -> an `answer` DeviceReport.
(Status and state messages take the same way in: baton_device_bridge.presence.)

The catalog's wiring finds the profile whose answer topic it is and decodes it with that
profile's codec. The device is the one the **topic** names (its wire id, mapped back to
Baton's device id), never the payload: the broker's ACL decides who may publish on a
device's topics, and the dispatcher checks that the execution belongs to that device (a
device speaks only for itself). A profile whose answers carry no execution id (raw-mapped)
has them attributed to the device's execution in flight. Anything that cannot be read is
dropped and counted, never allowed to stop the bridge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from baton_contracts.nats import DeviceReport, PresenceReport, StateReport
from baton_contracts.profiles import MalformedWireError
from baton_device_bridge.limits import DeviceLimits
from baton_device_bridge.presence import decode_presence_or_state
from baton_device_bridge.reports import ReportNotStoredError, ReportRefusedError, ReportSink
from baton_device_bridge.wiring import UnknownWireDeviceError, Wiring
from baton_platform import tracing
from baton_platform.logs import about
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

SERVICE = "device-bridge"
CONSUMER = tracing.SpanKind.CONSUMER

InFlightLookup = Callable[[str], UUID | None]


class MalformedAnswerError(ValueError):
    """Not an answer Baton can use. `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def answer_report_id(execution_id: UUID, answer_id: str | None, raw: bytes) -> str:
    """Stable per answer: the device's own id, else a digest of the exact bytes it sent
    (for raw-mapped, with the execution id in front: a repeat of the same answer keeps its
    id, two different answers to one execution differ)."""
    suffix = answer_id if answer_id is not None else hashlib.sha256(raw).hexdigest()[:32]
    return f"answer:{execution_id}:{suffix}"


def decode_answer(
    topic: str, raw: bytes, received_at: datetime, wiring: Wiring, in_flight: InFlightLookup
) -> DeviceReport:
    try:
        device_id, codec, answer = wiring.decode_answer(topic, raw)
    except MalformedWireError as exc:
        raise MalformedAnswerError(exc.reason, str(exc)) from None
    except UnknownWireDeviceError as exc:
        raise MalformedAnswerError("unknown-device", str(exc)) from None
    execution_id = answer.execution_id
    if execution_id is None:
        execution_id = in_flight(device_id)
        if execution_id is None:
            detail = f"{codec.name} answer from {device_id} with no execution in flight"
            raise MalformedAnswerError("no-execution-in-flight", detail)
    return DeviceReport(
        kind="answer",
        report_id=answer_report_id(execution_id, answer.answer_id, raw),
        device_id=device_id,
        execution_id=execution_id,
        status=answer.status,
        payload=answer.payload,
        received_at=received_at,
    )


def decode_message(
    topic: str, raw: bytes, received_at: datetime, wiring: Wiring, in_flight: InFlightLookup
) -> DeviceReport | PresenceReport | StateReport:
    """Any message on the bridge's subscriptions: a status, a state, else an answer."""
    try:
        found = decode_presence_or_state(topic, raw, received_at, wiring)
    except MalformedWireError as exc:
        raise MalformedAnswerError(exc.reason, str(exc)) from None
    except UnknownWireDeviceError as exc:
        raise MalformedAnswerError("unknown-device", str(exc)) from None
    return found or decode_answer(topic, raw, received_at, wiring, in_flight)


class AnswerForwarder:
    """Turns each device message (an answer, a status, a state) into a stored report;
    returns only when the message may be acked.

    While JetStream is unavailable it retries (with capped backoff) rather than return: the
    MQTT acknowledgement is withheld until then, so the answer is never lost, and answers
    are handled in the order they came (MQTT wants its PUBACKs in that order too).
    """

    def __init__(
        self,
        sink: ReportSink,
        wiring: Wiring,
        in_flight: InFlightLookup,
        retry_cap: float = 5.0,
        traces: tracing.Remembered | None = None,
        limits: DeviceLimits | None = None,
    ) -> None:
        self._sink = sink
        self._limits = limits or DeviceLimits(0, 1, SERVICE)
        # The trace context of each request sent: its answers continue that trace.
        self._traces = traces or tracing.Remembered()
        self._wiring = wiring
        self._in_flight = in_flight
        self._retry_cap = retry_cap
        self.failed_attempts = 0  # how often a store had to be retried (for tests and logs)

    async def handle(
        self,
        topic: str,
        raw: bytes,
        taken_since: datetime | None = None,
        taken_after: datetime | None = None,
    ) -> None:
        """`taken_since`: the earliest time the broker may have taken the message (the
        watermark's `taken_since`), when that is before now (None: a live message, taken
        now): an answer carries it as its `received_at`, so that a deadline after it waits
        for the answer. Presence and state keep the time they arrived (when the device was
        last seen, what it reported when); a live message counts against its device's rate.
        `taken_after`: a time the broker took it after (the watermark's `taken_after`),
        carried by every report: what the deadlines of its device are weighed against."""
        now = datetime.now(UTC)
        try:
            report = decode_message(topic, raw, now, self._wiring, self._in_flight)
        except MalformedAnswerError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason=exc.reason).inc()
            log.warning("dropped a message on %s (%s): %s", topic, exc.reason, exc)
            return
        # Only live traffic counts against a device's rate: a backlog that waited in the
        # broker while the bridge was away arrives at once (baton_device_bridge.limits).
        if taken_since is None and not self._limits.admit(report.device_id):
            return
        if taken_after is not None:
            report = report.model_copy(update={"taken_after": min(taken_after, now)})
        if not isinstance(report, DeviceReport):
            await self._store(report)
            return
        if taken_since is not None and taken_since < now:  # it waited in the broker
            report = report.model_copy(update={"received_at": taken_since})
        parent = self._traces.parent(report.execution_id)
        name = f"answer {report.status}"
        with (
            tracing.continued(name, CONSUMER, parent, report.execution_id),
            about(report.execution_id),
        ):
            await self._store(report)

    async def _store(self, report: DeviceReport | PresenceReport | StateReport) -> None:
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
            log.debug("report %s stored", report.report_id)
            return
