"""Delivering webhooks: runs on the api replica holding lease `projection` only (one sender
across replicas; another takes over with the lease), from the webhook database, so a restart
loses nothing (docs/architecture.md, "Webhooks").

Each round: enqueue what the change feed has after the position reached (store.enqueue),
then POST every due delivery (a few at once), and record each attempt. A 2xx is delivered;
anything else (another status, a refused target, a network error, a time-out) is retried
after `backoff`, and after `max_attempts` the delivery is dead (kept, with every attempt).
At least once: a sender that dies between the POST and its record sends it again, with the
same `Baton-Delivery` id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING
from uuid import UUID

from prometheus_client import Counter

from baton_api.live import change_out, first_of
from baton_api.projector import ProjectionRunner
from baton_api.webhooks.store import (
    DEAD,
    DELIVERED,
    PENDING,
    Attempt,
    Delivery,
    Webhook,
    WebhookStore,
)
from baton_api.webhooks.targets import TargetRefused, Targets, check_target
from baton_contracts.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookPayload,
    sign,
)
from baton_platform.lifecycle import rest_of
from baton_views import CHANGES_PAGE, Change, ChangeFilter, ExecutionViews

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "baton_webhook_attempts_total",
    "Webhook delivery attempts, by what followed: delivered, retry (pending), dead",
    ["outcome"],
)
USER_AGENT = "Baton-Webhooks/1"
MAX_ERROR_LENGTH = 500  # of an attempt's error, as kept
ROUND_GAP_S = 0.05  # the least time between the starts of two rounds


def backoff(
    attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before the attempt after `attempt` (1, 2, ...): doubling from `initial` up to
    `maximum`, then a random half of it taken off ("equal jitter"), so receivers that failed
    together are not all retried together, and no wait is under half its step."""
    step: float = min(maximum, initial * 2.0 ** (attempt - 1))
    return step / 2 + step / 2 * float(rand())


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int
    backoff_initial: float
    backoff_max: float
    timeout: float
    targets: Targets
    concurrency: int = 8


def payload_body(hook: Webhook, change: Change, delivery_id: UUID) -> str:
    shown = change_out(change).model_dump()
    return WebhookPayload(**shown, delivery_id=delivery_id, webhook_id=hook.id).model_dump_json()


class WebhookSender:
    def __init__(
        self,
        store: WebhookStore,
        views: ExecutionViews,
        runner: ProjectionRunner,
        policy: DeliveryPolicy,
        stored_position: Callable[[], int | None],
        poll_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._views = views
        self._runner = runner
        self._policy = policy
        self._stored_position = stored_position  # the event store's last notification id
        self._poll = poll_interval
        self._in_flight: set[UUID] = set()
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = False  # the last round found no webhook
        self._skipped_to: int | None = None  # the position its idle rounds last wrote
        self._http: ModuleType  # httpx, imported by `run`

    async def run(self) -> None:
        # Imported here, in a worker thread: a quarter of the api's start otherwise (it
        # brings its command line's rich along), for the one replica that sends.
        self._http = await asyncio.to_thread(importlib.import_module, "httpx")
        async with self._http.AsyncClient(
            follow_redirects=False, timeout=self._policy.timeout, trust_env=False
        ) as client:
            try:
                while True:
                    signal = self._runner.advance_signal()
                    # Every read of the store is inside: an error (the database restarting)
                    # is a round lost, never the end of the sender.
                    try:
                        started = time.monotonic()
                        if self._runner.projecting:
                            await self.round(client)
                        await self._sleep(signal)
                        # Under load the views advance every few ms: a round's reads are
                        # then shared by the changes of ROUND_GAP_S rather than made per batch.
                        await rest_of(ROUND_GAP_S, started)
                    except Exception:
                        log.exception("webhook round failed; trying again")
                        await asyncio.sleep(self._poll)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def round(self, client: httpx.AsyncClient) -> None:
        # Read before the check: every event stored by then came before any webhook the
        # check misses, so none of their changes is owed to it.
        end = await asyncio.to_thread(self._stored_position)
        self._idle = not await asyncio.to_thread(self._store.any_webhooks)
        if self._idle:
            # No one to deliver to (and so no deliveries): the feed's position moves on
            # without the feed being read, and a webhook created later starts from there.
            # Written only when the store moved: an idle stack writes nothing each poll.
            if end is not None and end != self._skipped_to:
                await asyncio.to_thread(self._store.skip_to, end)
                self._skipped_to = end
            return
        self._skipped_to = None  # the feed's reads move the position from here on
        await self._enqueue()
        # In flight when the read starts: its row may be read before its attempt is recorded
        # and the attempt over by the time it is seen, so it is not started again this round.
        busy = set(self._in_flight)
        now_ms = int(time.time() * 1000)
        due = await asyncio.to_thread(self._store.due, now_ms, 100)
        for delivery, hook in due:
            if delivery.id in busy or delivery.id in self._in_flight:
                continue
            self._in_flight.add(delivery.id)
            task = asyncio.create_task(self._attempt(client, delivery, hook))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _enqueue(self) -> None:
        """Everything the feed has after the position reached. The first start begins at the
        event store's end: from now, even while the views are still being projected."""
        position = await asyncio.to_thread(self._store.position)
        if position is None:
            position = await asyncio.to_thread(self._stored_position) or 0
            await asyncio.to_thread(self._store.enqueue, [], position, payload_body)
        while True:
            page = await asyncio.to_thread(
                self._views.changes, ChangeFilter(tenant=None), position, CHANGES_PAGE
            )
            if not page:
                return
            position = page[-1].position
            await asyncio.to_thread(self._store.enqueue, page, position, payload_body)

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery, hook: Webhook) -> None:
        try:
            async with self._slots:
                attempt = await self._post(client, delivery, hook)
            number = attempt.attempt
            if attempt.status_code is not None and 200 <= attempt.status_code < 300:
                state, next_at = DELIVERED, 0
            elif number >= self._policy.max_attempts:
                state, next_at = DEAD, 0
                log.warning("webhook %s: delivery %s is dead", hook.id, delivery.id)
            else:
                wait = backoff(number, self._policy.backoff_initial, self._policy.backoff_max)
                state, next_at = PENDING, int((time.time() + wait) * 1000)
            await asyncio.to_thread(self._store.attempted, delivery, attempt, state, next_at)
            ATTEMPTS.labels("retry" if state == PENDING else state).inc()
        except Exception:
            log.exception("webhook %s: attempt at %s not recorded", hook.id, delivery.id)
        finally:
            self._in_flight.discard(delivery.id)
            self._wake.set()

    async def _post(self, client: httpx.AsyncClient, delivery: Delivery, hook: Webhook) -> Attempt:
        number = delivery.attempts + 1
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        body = delivery.body.encode()
        try:
            await check_target(hook.url, self._policy.targets)
            response = await client.post(
                hook.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body),
                    DELIVERY_HEADER: str(delivery.id),
                    EVENT_HEADER: delivery.event,
                },
            )
            status = response.status_code
            if not response.is_success:
                error = f"answered {status}"
        except TargetRefused as exc:
            error = f"target refused: {exc}"
        except self._http.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        duration = int((time.monotonic() - started) * 1000)
        return Attempt(number, at, status, error, duration)

    async def _sleep(self, signal: asyncio.Event) -> None:
        """Until the views advance, an attempt ends, the next retry is due, or a poll."""
        timeout = self._poll
        next_due = None if self._idle else await asyncio.to_thread(self._store.next_due)
        if next_due is not None:
            # (those in flight are due already: no faster than a tenth of a second)
            timeout = max(0.1, min(timeout, next_due / 1000 - time.time()))
        await first_of((signal, self._wake), timeout)
        self._wake.clear()
