"""Translate domain objects to wire models, once, for every service that needs it."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from eventsourcing.domain import DomainEvent, DomainEventProtocol
from eventsourcing.persistence import Notification
from pydantic_core import to_jsonable_python

from baton_contracts.nats import ExecutionState, LifecycleEvent
from baton_domain.application import Executions
from baton_domain.execution import CommandExecution

_ENVELOPE = {"originator_id", "originator_version", "timestamp", "originator_topic"}


def execution_state(execution: CommandExecution) -> ExecutionState:
    return ExecutionState(
        id=execution.id,
        device_id=execution.device_id,
        name=execution.name,
        params=execution.params,
        status=execution.status.value,
        created_at=execution.created_on,
        updated_at=execution.modified_on,
        ttl=execution.ttl,
        deadline=execution.deadline,
        result=execution.result,
        error=execution.error,
        requested_name=execution.requested_name,
        requested_by=execution.requested_by,
        ephemeral=execution.ephemeral,
        retry_of=execution.retry_of,
        retries=list(execution.retries),
        verification=execution.verification,
    )


def event_data(event: Any) -> dict[str, Any]:
    """A stored event's own fields (not the library's envelope), as JSON values."""
    fields = {
        f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name not in _ENVELOPE
    }
    data: dict[str, Any] = to_jsonable_python(fields)
    return data


def read_events(executions: Executions, after: int, limit: int) -> list[LifecycleEvent]:
    """Up to `limit` stored events with a notification id above `after`, in order: what the
    outbox relay publishes and the projection applies. Synchronous (eventsourcing)."""
    notifications = executions.recorder.select_notifications(start=after + 1, limit=limit)
    return [lifecycle_event(n, executions.mapper.to_domain_event(n)) for n in notifications]


def lifecycle_event(notification: Notification, event: DomainEventProtocol[Any]) -> LifecycleEvent:
    """A stored event as the outbox relay publishes it and the projection consumes it."""
    assert notification.id is not None
    return LifecycleEvent(
        notification_id=notification.id,
        execution_id=event.originator_id,
        version=event.originator_version,
        type=type(event).__name__,
        occurred_at=cast(DomainEvent, event).timestamp,
        data=event_data(event),
    )
