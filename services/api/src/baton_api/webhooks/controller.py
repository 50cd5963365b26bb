"""`/v1/webhooks`: operators and admins manage their tenant's webhooks and read their
delivery logs. Each handler decodes, makes one store call (in a worker thread), encodes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, operator
from baton_api.problems import ProblemError, invalid, problem
from baton_api.schemas import RequestSchema
from baton_api.webhooks.store import Attempt, Delivery, Webhook, WebhookStore
from baton_api.webhooks.targets import MAX_URL_LENGTH, TargetRefused, Targets, check_target
from baton_domain.catalog import DEVICE_ID_PATTERN
from baton_domain.statuses import ExecutionStatus
from baton_views.projection import PROJECTED_TYPES

KNOWN_EVENTS = frozenset({"*", *(s.value for s in ExecutionStatus), *PROJECTED_TYPES})


class WebhookRequest(RequestSchema):
    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) URL Baton POSTs to")
    events: list[str] = Field(
        min_length=1,
        max_length=64,
        description="statuses (SUCCEEDED...) and/or event kinds (Requested...) to deliver; *: all",
    )
    # One that can be no device's id (blank, say) would make a webhook that never fires.
    device_id: str | None = Field(
        default=None,
        pattern=DEVICE_ID_PATTERN,
        description="only this device's executions; leave it out for every device",
    )


class WebhookOut(BaseModel):
    id: UUID
    url: str
    events: list[str]
    device_id: str | None
    created_at: datetime
    created_by: str
    deliveries: dict[str, int] = Field(description="how many are pending, delivered, dead")
    secret: str | None = Field(
        default=None, description="only in the answer to its creation: keep it to verify"
    )

    @classmethod
    def of(cls, hook: Webhook, counts: dict[str, int], with_secret: bool = False) -> WebhookOut:
        return cls(
            id=hook.id,
            url=hook.url,
            events=list(hook.events),
            device_id=hook.device_id,
            created_at=datetime.fromisoformat(hook.created_at),
            created_by=hook.created_by,
            deliveries=counts,
            secret=hook.secret if with_secret else None,
        )


class AttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        return cls(
            attempt=attempt.attempt,
            at=datetime.fromisoformat(attempt.at),
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
        )


class DeliveryOut(BaseModel):
    id: UUID
    position: int
    event: str
    execution_id: UUID
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    log: list[AttemptOut]

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        next_at = None
        if delivery.state == "pending":  # to the millisecond, as stored
            seconds, millis = divmod(delivery.next_at, 1000)
            next_at = datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)
        return cls(
            id=delivery.id,
            position=delivery.position,
            event=delivery.event,
            execution_id=delivery.execution_id,
            state=delivery.state,
            attempts=delivery.attempts,
            next_attempt_at=next_at,
            created_at=datetime.fromisoformat(delivery.created_at),
            updated_at=datetime.fromisoformat(delivery.updated_at),
            log=[AttemptOut.of(a) for a in delivery.log],
        )


class WebhookPageOut(BaseModel):
    items: list[WebhookOut]


class DeliveryPageOut(BaseModel):
    items: list[DeliveryOut]


def _not_found(webhook_id: UUID) -> ProblemError:
    return ProblemError(
        problem(
            404,
            "webhook-not-found",
            f"webhook {webhook_id} does not exist",
            title="Webhook not found",
        )
    )


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]
    guards = [operator]

    @post("/", status_code=201)
    async def create_webhook(
        self,
        caller: NamedDependency[Identity],
        webhooks: NamedDependency[WebhookStore],
        webhook_targets: NamedDependency[Targets],
        data: JSONBody[WebhookRequest],
    ) -> WebhookOut:
        """A webhook for the caller's tenant; the answer has its signing secret, once."""
        unknown = sorted(set(data.events) - KNOWN_EVENTS)
        if unknown:
            raise invalid("events", f"unknown {', '.join(unknown)}; statuses, event kinds or *")
        try:
            await check_target(data.url, webhook_targets)
        except TargetRefused as exc:
            raise invalid("url", str(exc)) from None
        hook = await asyncio.to_thread(
            webhooks.create,
            caller.tenant,
            data.url,
            sorted(set(data.events)),
            data.device_id,
            caller.principal,
        )
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        return WebhookOut.of(hook, counts, with_secret=True)

    @get("/")
    async def list_webhooks(
        self, caller: NamedDependency[Identity], webhooks: NamedDependency[WebhookStore]
    ) -> WebhookPageOut:
        """The caller's tenant's webhooks (without their secrets)."""
        hooks = await asyncio.to_thread(webhooks.list, caller.tenant)
        items = [WebhookOut.of(h, await asyncio.to_thread(webhooks.counts, h.id)) for h in hooks]
        return WebhookPageOut(items=items)

    @get("/{webhook_id:str}")
    async def get_webhook(
        self,
        caller: NamedDependency[Identity],
        webhooks: NamedDependency[WebhookStore],
        webhook_id: FromPath[UUID],
    ) -> WebhookOut:
        hook = await asyncio.to_thread(webhooks.get, webhook_id, caller.tenant)
        if hook is None:
            raise _not_found(webhook_id)
        return WebhookOut.of(hook, await asyncio.to_thread(webhooks.counts, hook.id))

    @delete("/{webhook_id:str}", status_code=204)
    async def delete_webhook(
        self,
        caller: NamedDependency[Identity],
        webhooks: NamedDependency[WebhookStore],
        webhook_id: FromPath[UUID],
    ) -> None:
        """The webhook and its delivery log; nothing more is sent to it."""
        if not await asyncio.to_thread(webhooks.delete, webhook_id, caller.tenant):
            raise _not_found(webhook_id)

    @get("/{webhook_id:str}/deliveries")
    async def list_deliveries(
        self,
        caller: NamedDependency[Identity],
        webhooks: NamedDependency[WebhookStore],
        webhook_id: FromPath[UUID],
        delivery_state: Annotated[
            Literal["pending", "delivered", "dead"] | None,
            QueryParameter(name="state", description="only these: `dead` is the dead letters"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> DeliveryPageOut:
        """The webhook's deliveries, newest first, each with its attempts (time, status code,
        error); `state=dead` is its dead letters."""
        hook = await asyncio.to_thread(webhooks.get, webhook_id, caller.tenant)
        if hook is None:
            raise _not_found(webhook_id)
        found = await asyncio.to_thread(webhooks.deliveries, webhook_id, delivery_state, limit)
        return DeliveryPageOut(items=[DeliveryOut.of(d) for d in found])
