"""Prometheus metrics; each service serves them on BATON_METRICS_PORT if set.

Every metric is documented in docs/operations.md ("Metrics"), and the Grafana dashboard
(deploy/grafana/baton-dashboard.json) queries only these. No label takes a device's or an
execution's id: every label's values are few (services, reasons, statuses, stages, the
catalog's command names and device types, the streams' durable consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from baton_domain.execution import CommandExecution
from baton_platform.lifecycle import cancel_and_wait

log = logging.getLogger(__name__)

REJECTED_MESSAGES = Counter(
    "baton_rejected_messages_total",
    "Messages refused and dropped (malformed, unknown execution, wrong device, ...)",
    ["service", "reason"],
)
DEAD_LETTERS = Counter(
    "baton_dead_letters_total",
    "Messages given up on after repeated failures",
    ["service", "subject"],
)
DEADLINES_UNCONFIRMED = Counter(
    "baton_deadlines_unconfirmed_total",
    "Deadlines decided without a device-bridge's confirmation that the answers before them "
    "are stored (the bridge silent for BATON_DEADLINE_MAX_HOLD)",
    ["bridge"],
)

WAITING_REQUESTS = Gauge(
    "baton_api_waiting_requests",
    "Requests waiting for their execution to end (?wait=, Enapter's execute_command)",
)

LEASE_HELD = Gauge(
    "baton_lease_held",
    "1 while this process holds the lease and does its job (docs/operations.md, Replicas)",
    ["lease"],
)


# --- an execution's way, from the record (`observe_recorded`) ------------------------------

EXECUTIONS = Counter(
    "baton_executions_total",
    "Executions ended, by command and final status (counted when the terminal event is stored)",
    ["command", "status"],
)
# The seconds of each stage: a few milliseconds for the store and the broker, up to a
# command's TTL (minutes, an hour) for a device that takes its time or a queue that waits.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
STAGE_SECONDS = Histogram(
    "baton_execution_stage_seconds",
    "Seconds each stage of an execution took: stored (submit taken -> stored), sent (stored "
    "-> the broker took it), acknowledged (sent -> the device's first answer), terminal "
    "(first answer -> final status)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
EXECUTION_SECONDS = Histogram(
    "baton_execution_duration_seconds",
    "Seconds from an execution's Requested to its terminal event, by final status",
    ["status"],
    buckets=LATENCY_BUCKETS,
)

_C = CommandExecution
# The events that end a stage (the classes the library makes of them: their types exactly).
_ANSWERS = frozenset({_C.Acknowledged, _C.Progressed, _C.Succeeded, _C.Failed, _C.Rejected})
_TERMINAL = frozenset({_C.Succeeded, _C.Failed, _C.Rejected, _C.TimedOut, _C.Expired, _C.Canceled})
_WATCHED = _ANSWERS | _TERMINAL | {_C.Published}


def stages_ended(event: Any, execution: CommandExecution) -> Iterator[tuple[str, float]]:
    """The stages `event` (just stored) ends, with their seconds, from the timestamps in the
    record: `execution` is the aggregate as the same commit left it. Each stage ends at
    one event of the stream, stored once, so it is counted once whoever stores it."""
    kind = type(event)
    at: datetime = event.timestamp
    if kind is _C.Published:
        yield "sent", _seconds(execution.created_on, at)
    if kind in _ANSWERS and execution.answered_at == at:  # the device's first answer
        yield "acknowledged", _seconds(execution.published_at or execution.created_on, at)
    if kind in _TERMINAL and execution.answered_at is not None:
        yield "terminal", _seconds(execution.answered_at, at)


def _seconds(start: datetime, end: datetime) -> float:
    # Events of one stream may come from dispatchers on machines whose clocks differ.
    return max((end - start).total_seconds(), 0.0)


def observe_recorded(events: Sequence[Any], aggregates: Mapping[Any, Any]) -> None:
    """`Executions(on_recorded=...)` in the dispatcher: count and time what one commit
    stored. A repeat (a redelivered report, a submit sent again) stores nothing, so it is
    not counted again; nor is a replay, which stores nothing either."""
    for event in events:
        if type(event) not in _WATCHED:
            continue  # most events: Requested, Dispatched, the device queues'
        execution = aggregates.get(event.originator_id)
        if execution is None:
            continue
        for stage, seconds in stages_ended(event, execution):
            _stage(stage).observe(seconds)
        if type(event) in _TERMINAL:
            status = execution.status.value
            _ended(execution.name, status).inc()
            _duration(status).observe(_seconds(execution.created_on, event.timestamp))


# `labels()` costs a lock and a few dictionaries each time (~6 us, three times a stage's
# observation): the children are looked up once. Their number is bounded by the catalog's
# command names times the statuses.
@functools.cache
def _stage(stage: str) -> Any:
    return STAGE_SECONDS.labels(stage=stage)


@functools.cache
def _ended(command: str, status: str) -> Any:
    return EXECUTIONS.labels(command=command, status=status)


@functools.cache
def _duration(status: str) -> Any:
    return EXECUTION_SECONDS.labels(status=status)


def observe_stored(started: float) -> None:
    """A new execution is stored: the `stored` stage since its submit was taken at
    `started` (time.monotonic)."""
    _stage("stored").observe(time.monotonic() - started)


# --- sampled, not counted per message ------------------------------------------------------

# How often consumer lag and the executions per device type are read.
SAMPLE_INTERVAL_S = 5.0

CONSUMER_PENDING = Gauge(
    "baton_consumer_pending_messages",
    "Messages of the stream not yet delivered to the durable consumer (num_pending), "
    "sampled every few seconds by a process that runs it",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "baton_consumer_ack_pending_messages",
    "Messages delivered to the durable consumer and not yet acknowledged (num_ack_pending)",
    ["stream", "consumer"],
)
RELAY_BEHIND = Gauge(
    "baton_relay_behind_events",
    "Stored events the outbox relay has not yet published to BATON_EVENTS (the store's last "
    "notification id minus the relay's position), sampled every few seconds by the "
    "dispatcher that relays; 0 on the others",
)
VIEWS_BEHIND = Gauge(
    "baton_views_behind_events",
    "Stored events the views' projection has not yet applied (the store's last notification "
    "id minus the views' position), sampled every few seconds by the api replica that "
    "writes the views; 0 on the others",
)


@contextlib.asynccontextmanager
async def lag_sampled(
    gauge: Gauge, stored: Callable[[], int | None], position: Callable[[], int | None]
) -> AsyncIterator[None]:
    """While the body runs and metrics are served, every `SAMPLE_INTERVAL_S`: `gauge` =
    the store's last notification id (`stored`, a blocking read, run in a worker thread)
    minus `position` (None: not this process's job now, 0). A failed read leaves the last
    value; 0 once the body ends."""
    if not serving():
        yield
        return
    sampler = asyncio.create_task(_sample_lag(gauge, stored, position))
    try:
        yield
    finally:
        await cancel_and_wait(sampler)
        gauge.set(0)


async def _sample_lag(
    gauge: Gauge, stored: Callable[[], int | None], position: Callable[[], int | None]
) -> None:
    while True:
        at = position()
        if at is None:
            gauge.set(0)
        else:
            try:
                last = await asyncio.to_thread(stored)
            except Exception as exc:  # the store is away: the next sample
                log.debug("a lag not sampled: %r", exc)
            else:
                gauge.set(max(0, (last or 0) - at))
        await asyncio.sleep(SAMPLE_INTERVAL_S)


EXECUTIONS_WAITING = Gauge(
    "baton_executions_waiting",
    "Executions stored and not yet taken by the broker (PENDING: queued behind a delivery "
    "policy, the device offline, cooling down), by device type; from the views",
    ["device_type"],
)
EXECUTIONS_IN_FLIGHT = Gauge(
    "baton_executions_in_flight",
    "Executions sent and not ended (SENT, ACKNOWLEDGED, IN_PROGRESS), by device type; "
    "from the views",
    ["device_type"],
)


# Statuses counted as waiting; the other ones not ended are in flight.
_WAITING = "PENDING"
# The device type of executions whose device the catalog no longer has.
UNKNOWN_TYPE = "unknown"


def unfinished_per_type(
    rows: Sequence[tuple[str, str, int]], device_types: Mapping[str, str]
) -> dict[str, tuple[int, int]]:
    """(waiting, in flight) per device type, from (device id, status, how many) rows of the
    executions not ended and each device's type. Every type of `device_types` is there,
    with (0, 0) when none of its devices has any."""
    totals = dict.fromkeys(device_types.values(), (0, 0))
    for device_id, status, n in rows:
        device_type = device_types.get(device_id, UNKNOWN_TYPE)
        waiting, in_flight = totals.get(device_type, (0, 0))
        if status == _WAITING:
            totals[device_type] = (waiting + n, in_flight)
        else:
            totals[device_type] = (waiting, in_flight + n)
    return totals


def set_unfinished(totals: Mapping[str, tuple[int, int]]) -> None:
    """The gauges say `totals`; a type they said before and `totals` lacks goes."""
    for gauge, index in ((EXECUTIONS_WAITING, 0), (EXECUTIONS_IN_FLIGHT, 1)):
        for (device_type,) in _labelled(gauge) - {(t,) for t in totals}:
            gauge.remove(device_type)
        for device_type, values in totals.items():
            gauge.labels(device_type=device_type).set(values[index])


def clear_unfinished() -> None:
    """This process no longer reads the views for them (another replica does)."""
    EXECUTIONS_WAITING.clear()
    EXECUTIONS_IN_FLIGHT.clear()


def _labelled(gauge: Gauge) -> set[tuple[str, ...]]:
    """The label values `gauge` has children for (prometheus_client has no public way)."""
    return {tuple(labels) for labels in gauge._metrics}


_serving = False


def serving() -> bool:
    """Whether this process serves its metrics (what is only sampled for them then is)."""
    return _serving


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host:port` (port 0: not at all), from a background thread.

    A port that cannot be bound (usually: taken) ends the process with one line naming the
    setting, not a traceback: it is the operator's setting to change, not a bug."""
    global _serving
    if not port:
        return
    try:
        start_http_server(port, addr=host)
        _serving = True
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SystemExit(
            f"BATON_METRICS_PORT={port}: cannot serve metrics on {host}:{port} ({reason}); "
            "choose a free port, or 0 to turn metrics off"
        ) from None
