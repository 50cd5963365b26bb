"""The scheduler's JetStream edge: lifecycle events in, deadline rows out.

A durable consumer of BATON_EVENTS (`baton_platform.consumers.BatchingConsumer`, plain
nats-py), filtered on the server to the event types it acts on (`SUBJECTS`). `Requested`
stores the execution's deadline, a terminal event deletes it; `VerificationRequired` and
the verification's end do the same for the verification deadline. The events that arrived
while the last batch was stored are stored together, in stream order, in one transaction
(`BatchingConsumer`), and each is acknowledged only after it committed. A message that
cannot be decoded is logged, counted and acknowledged (a poison message must not loop); a
store error (database locked, disk full, ...) has the batch negatively acknowledged with
a delay so JetStream redelivers it.

Every message may arrive twice or out of order: a repeated `Requested` rewrites the same row;
a `Requested` seen after its terminal event leaves a row that fires once and is answered
"ignored" by the dispatcher, which then deletes it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.aio.msg import Msg
from pydantic import TypeAdapter, ValidationError

from baton_contracts.nats import EVENTS_STREAM, LifecycleEvent, events_of_type
from baton_platform.consumers import BatchingConsumer
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats_access import SCHEDULER_DURABLE
from baton_timeout_scheduler.store import Change, Deadlines

log = logging.getLogger(__name__)

SERVICE = "timeout-scheduler"
DURABLE = SCHEDULER_DURABLE  # its NATS permissions name it (baton_platform.nats_access)
TERMINAL_EVENTS = frozenset({"Succeeded", "Failed", "Rejected", "TimedOut", "Expired", "Canceled"})
VERIFICATION_ENDS = frozenset({"Verified", "VerificationFailed", "VerificationCanceled"})
DEADLINE_STARTS = frozenset({"Requested", "VerificationRequired"})
# What the server delivers: every type `apply` acts on, nothing else (most of the stream is
# Dispatched, Published, answers and the device queues' events).
SUBJECTS = tuple(
    sorted(events_of_type(t) for t in DEADLINE_STARTS | TERMINAL_EVENTS | VERIFICATION_ENDS)
)
MAX_REDELIVERY_DELAY = 10.0
# Events stored in one transaction at most (and unacknowledged at once).
BATCH = 256
# How long a delivered event may go unacknowledged before nats-server sends it again. A
# delivery lost in flight (seen when a cluster node died and the consumer's leader moved:
# 21 `Requested` came back together only after the default 30 s, their deadlines 30 s late)
# costs this much; a batch is stored in milliseconds, a failed one is negatively
# acknowledged at once, and one delivered twice only repeats idempotent writes.
EVENTS_ACK_WAIT_S = 5.0

_deadline = TypeAdapter(datetime)


class MalformedEventError(ValueError):
    pass


def decode(body: bytes) -> LifecycleEvent:
    try:
        event = LifecycleEvent.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedEventError(f"not a lifecycle event: {exc.error_count()} error(s)") from exc
    return event


def deadline_of(event: LifecycleEvent) -> datetime:
    """The event's deadline in UTC, as the store will give it back.

    One that UTC cannot hold (year 1 east of Greenwich, year 9999 west of it) is malformed:
    stored, it failed every tick of the ticker, and no deadline fired again (NATS fuzzing)."""
    try:
        deadline = _deadline.validate_python(event.data["deadline"])
        if deadline.tzinfo is None:  # the contract says UTC; lenient, as the store is
            deadline = deadline.replace(tzinfo=UTC)
        return datetime.fromtimestamp(deadline.timestamp(), UTC)
    except (KeyError, ValueError, OverflowError, OSError) as exc:  # ValidationError too
        raise MalformedEventError(
            f"{event.type} {event.execution_id} has no valid deadline"
        ) from exc


def change_of(event: LifecycleEvent) -> Change | None:
    """The one thing an event does to the deadlines (None: nothing)."""
    if event.type == "Requested":
        return Change(event.execution_id, "execution", deadline_of(event))
    if event.type == "VerificationRequired":
        return Change(event.execution_id, "verification", deadline_of(event))
    if event.type in TERMINAL_EVENTS:
        return Change(event.execution_id, "execution")
    if event.type in VERIFICATION_ENDS:
        return Change(event.execution_id, "verification")
    return None


def events_consumer(deadlines: Deadlines) -> BatchingConsumer:
    async def on_batch(batch: list[Msg]) -> None:
        changes: list[Change] = []
        applied: list[Msg] = []
        for msg in batch:
            try:
                change = change_of(decode(msg.data))
            except MalformedEventError as exc:
                REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-event").inc()
                log.warning("dropped a malformed message on %s: %s", msg.subject, exc)
                await msg.ack()
                continue
            if change is not None:
                changes.append(change)
            applied.append(msg)
        if not applied:
            return
        try:
            await deadlines.apply(changes)
        except Exception as exc:  # the store failed: transient, have them redelivered
            deliveries = max((m.metadata.num_delivered or 1) for m in applied)
            delay = min(0.2 * deliveries, MAX_REDELIVERY_DELAY)
            log.warning(
                "could not apply %d event(s) (delivery %d): %s; redelivering in %.1fs",
                len(applied),
                deliveries,
                exc,
                delay,
            )
            for msg in applied:
                await msg.nak(delay=delay)
            return
        for msg in applied:
            await msg.ack()

    return BatchingConsumer(
        EVENTS_STREAM, DURABLE, SUBJECTS, on_batch, batch=BATCH, ack_wait=EVENTS_ACK_WAIT_S
    )
