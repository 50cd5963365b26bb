"""Webhook deliveries: the body Baton POSTs to a subscriber, and how it is signed.

A delivery carries `Baton-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 with the webhook's secret over `"<t>.<body>"` (the body's exact bytes), and
`Baton-Delivery: <id>`: the same id on every attempt of one delivery, so a receiver that
got it before can answer 2xx and do nothing (deliveries are at least once). docs/api.md,
"Webhooks", has a receiver's check in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict

SIGNATURE_HEADER = "Baton-Signature"
DELIVERY_HEADER = "Baton-Delivery"
EVENT_HEADER = "Baton-Event"
# A signature older than this is refused by `verify` (a replayed request).
DEFAULT_TOLERANCE_SECONDS = 300


class ExecutionChange(BaseModel):
    """One change of an execution: the `data:` of a live feed's event (`GET /v1/events`),
    and, with its delivery's ids, the body POSTed to a webhook (`WebhookPayload`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position: int  # the change's position: the same as the SSE feed's event id
    execution_id: UUID
    device_id: str
    name: str
    status: str  # the execution's status after the change
    event: str  # the lifecycle event: Requested, Published, Succeeded...
    seq: int  # the event's number in its execution's stream, from 1
    # When it happened. Rendered by pydantic, as the API renders every time of an execution
    # (`2026-12-03T14:02:11.331207Z`), not as the views store it (`+00:00`).
    at: AwareDatetime


class WebhookPayload(ExecutionChange):
    """One change of an execution, as POSTed to a webhook (JSON): the change, then the ids
    of its delivery and its webhook."""

    delivery_id: UUID
    webhook_id: UUID


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Baton-Signature` header of `body` sent at `timestamp`."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance` seconds of now."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body)
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
