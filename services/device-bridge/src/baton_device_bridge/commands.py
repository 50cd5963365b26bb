"""What a lifecycle event asks the bridge to send to a device. Pure: no I/O, no clock.

`plan` turns a `Dispatched` into a `CommandRequest` on the device's request topic, and a
`Canceled` that must reach the device into a `CancelRequest` on its cancel topic. Every other
event, and a `Dispatched` whose deadline already passed (the timeout-scheduler expires it;
a device must not start work nobody waits for), is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baton_contracts.mqtt import CancelRequest, CommandRequest, cancel_topic, request_topic
from baton_contracts.nats import DeviceReport, LifecycleEvent
from baton_domain.catalog import DEVICE_ID_PATTERN

M = TypeVar("M", bound=BaseModel)


class MalformedEventError(ValueError):
    pass


class _DispatchedData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # The catalog's pattern also keeps MQTT wildcards and separators out of the topic.
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str
    params: dict[str, Any]
    deadline: datetime


class _CanceledData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    reason: str
    notify_device: bool


@dataclass(frozen=True)
class Outgoing:
    """One MQTT message to publish (QoS 1) for one execution."""

    device_id: str
    execution_id: UUID
    topic: str
    payload: bytes
    # MQTT 5 message expiry, whole seconds: the broker drops it once nobody waits for it.
    expiry: int | None
    # Whether the dispatcher hears about it: only a request moves the execution to SENT.
    report_published: bool


@dataclass(frozen=True)
class Skipped:
    why: str
    # False for the events the bridge never acts on: not worth a log line each.
    notable: bool = True


def decode(body: bytes) -> LifecycleEvent:
    try:
        return LifecycleEvent.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedEventError(f"not a lifecycle event: {exc.error_count()} error(s)") from exc


def remaining_ttl(deadline: datetime, now: datetime) -> int | None:
    """Whole seconds left before `deadline` (rounded up, at least 1); None once it passed."""
    if deadline.tzinfo is None:  # the contract says UTC; be lenient with a naive timestamp
        deadline = deadline.replace(tzinfo=UTC)
    left = (deadline - now).total_seconds()
    if left <= 0:
        return None
    return max(1, math.ceil(left))


def plan(event: LifecycleEvent, now: datetime) -> Outgoing | Skipped:
    if event.type == "Dispatched":
        return _request(event, now)
    if event.type == "Canceled":
        return _cancel(event)
    return Skipped("not for the bridge", notable=False)


def _request(event: LifecycleEvent, now: datetime) -> Outgoing | Skipped:
    data = _data(_DispatchedData, event)
    ttl = remaining_ttl(data.deadline, now)
    if ttl is None:
        return Skipped(f"deadline {data.deadline.isoformat()} already passed")
    request = CommandRequest(
        execution_id=event.execution_id, name=data.name, params=data.params, deadline=data.deadline
    )
    return Outgoing(
        device_id=data.device_id,
        execution_id=event.execution_id,
        topic=request_topic(data.device_id, event.execution_id),
        payload=request.model_dump_json().encode(),
        expiry=ttl,
        report_published=True,
    )


def _cancel(event: LifecycleEvent) -> Outgoing | Skipped:
    data = _data(_CanceledData, event)
    if not data.notify_device:
        return Skipped("canceled before it was dispatched: the device never saw it")
    cancel = CancelRequest(execution_id=event.execution_id, reason=data.reason)
    return Outgoing(
        device_id=data.device_id,
        execution_id=event.execution_id,
        topic=cancel_topic(data.device_id, event.execution_id),
        payload=cancel.model_dump_json().encode(),
        expiry=None,
        report_published=False,
    )


def _data(model: type[M], event: LifecycleEvent) -> M:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise MalformedEventError(
            f"{event.type} {event.execution_id} has invalid data: {exc.error_count()} error(s)"
        ) from exc


def published_report(outgoing: Outgoing, now: datetime) -> DeviceReport:
    """The broker took the request: one report per execution, whatever the retries."""
    return DeviceReport(
        kind="published",
        report_id=f"published:{outgoing.execution_id}",
        device_id=outgoing.device_id,
        execution_id=outgoing.execution_id,
        received_at=now,
    )
