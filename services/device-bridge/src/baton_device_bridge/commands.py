"""What a lifecycle event asks the bridge to send to a device. Pure: no I/O, no clock.

`plan` turns a `Dispatched` into a request in the wire profile of the device's type (the
codec writes topic and body), and a `Canceled` that must reach the device into its profile's
cancel message, where it has one. A `Dispatched` whose deadline already passed is `Late`:
it is not sent (a device must not start work nobody waits for; the timeout-scheduler ends
it), but an earlier attempt may have reached the broker (baton_device_bridge.handover).
Every other event is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baton_contracts.nats import DeviceReport, LifecycleEvent
from baton_contracts.profiles import OutgoingCommand, ProfileSettingsError
from baton_device_bridge.wiring import Target, Wiring
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
    # Whether the bridge must remember it as the device's execution in flight before it
    # goes out: the profile's answers do not say which execution they are for.
    remember: bool = False


@dataclass(frozen=True)
class Late:
    """A request whose deadline passed before it could go out: it is not sent now."""

    device_id: str
    execution_id: UUID
    deadline: datetime


@dataclass(frozen=True)
class Skipped:
    why: str
    # False for the events the bridge never acts on: not worth a log line each.
    notable: bool = True
    # The metric label when it is counted as rejected (nothing the device could be told).
    reason: str | None = None


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


def plan(event: LifecycleEvent, now: datetime, wiring: Wiring) -> Outgoing | Late | Skipped:
    if event.type == "Dispatched":
        return _request(event, now, wiring)
    if event.type == "Canceled":
        return _cancel(event, wiring)
    return Skipped("not for the bridge", notable=False)


def _target(wiring: Wiring, device_id: str) -> Target | Skipped:
    target = wiring.target(device_id)
    if target is None:
        return Skipped(
            f"device {device_id!r} is not in the bridge's catalog", reason="unknown-device"
        )
    return target


def _request(event: LifecycleEvent, now: datetime, wiring: Wiring) -> Outgoing | Late | Skipped:
    data = _data(_DispatchedData, event)
    ttl = remaining_ttl(data.deadline, now)
    if ttl is None:
        return Late(data.device_id, event.execution_id, data.deadline)
    target = _target(wiring, data.device_id)
    if isinstance(target, Skipped):
        return target
    command = OutgoingCommand(
        wire_id=target.wire_id,
        execution_id=event.execution_id,
        name=data.name,
        params=data.params,
        deadline=data.deadline,
        ttl=ttl,
        now=now,
        command_wire=target.command_wire(data.name),
        type_wire=target.type_wire,
    )
    try:
        message = target.codec.encode_request(command)
    except ProfileSettingsError as exc:
        return Skipped(
            f"cannot write it in {target.codec.name}: {exc}", reason="unencodable-command"
        )
    return Outgoing(
        device_id=data.device_id,
        execution_id=event.execution_id,
        topic=message.topic,
        payload=message.payload,
        expiry=ttl,
        report_published=True,
        remember=not target.codec.carries_execution_id,
    )


def _cancel(event: LifecycleEvent, wiring: Wiring) -> Outgoing | Skipped:
    data = _data(_CanceledData, event)
    if not data.notify_device:
        return Skipped("canceled before it was dispatched: the device never saw it")
    target = _target(wiring, data.device_id)
    if isinstance(target, Skipped):
        return target
    message = target.codec.encode_cancel(
        target.wire_id, event.execution_id, data.reason, target.type_wire
    )
    if message is None:
        return Skipped(f"wire profile {target.codec.name} has no cancel message", notable=False)
    return Outgoing(
        device_id=data.device_id,
        execution_id=event.execution_id,
        topic=message.topic,
        payload=message.payload,
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


def published_report(device_id: str, execution_id: UUID, taken_at: datetime) -> DeviceReport:
    """The broker took the request (or may have, `taken_at` the earliest it could have): one
    report per execution, whatever the retries."""
    return DeviceReport(
        kind="published",
        report_id=f"published:{execution_id}",
        device_id=device_id,
        execution_id=execution_id,
        received_at=taken_at,
    )
