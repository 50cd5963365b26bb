"""Composition root of the timeout-scheduler: builds everything from Settings."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client
from pydantic import ValidationError

from baton_contracts.nats import DEADLINE_SUBJECT, EVENTS_STREAM, DeadlineDue, DeadlineReply
from baton_platform.consumers import BatchingConsumer
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import connect, identity, wait_for_streams
from baton_platform.nats_access import TIMEOUT_SCHEDULER
from baton_platform.settings import Settings
from baton_timeout_scheduler.edges import events_consumer
from baton_timeout_scheduler.store import Deadlines, DeadlineStore
from baton_timeout_scheduler.ticker import DispatcherUnavailableError, Requester, Ticker

log = logging.getLogger(__name__)


def nats_requester(connection: Client, timeout: float) -> Requester:
    """DeadlineDue as a core NATS request to the dispatcher's queue group."""

    async def request(due: DeadlineDue) -> DeadlineReply:
        try:
            reply = await connection.request(
                DEADLINE_SUBJECT, due.model_dump_json().encode(), timeout=timeout
            )
        except nats.errors.NoRespondersError:
            raise DispatcherUnavailableError("no responders") from None
        except nats.errors.TimeoutError:
            raise DispatcherUnavailableError(f"no reply within {timeout}s") from None
        except nats.errors.Error as exc:  # closed, reconnecting, ...
            raise DispatcherUnavailableError(type(exc).__name__) from exc
        try:
            return DeadlineReply.model_validate_json(reply.data)
        except ValidationError as exc:
            raise DispatcherUnavailableError(f"unreadable reply: {reply.data[:200]!r}") from exc

    return request


class TimeoutScheduler:
    """The service: the events consumer filling the store, and the ticker emptying it."""

    def __init__(self, settings: Settings, retry_cap: float = 5.0) -> None:
        self.settings = settings
        self.retry_cap = retry_cap
        self.deadlines: Deadlines | None = None
        self._nc: Client | None = None
        self._events: BatchingConsumer | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        store = await asyncio.to_thread(DeadlineStore, settings.scheduler_database)
        self.deadlines = Deadlines(store)
        # Backoff from an earlier run is stale: whatever is past due may fire right away.
        await self.deadlines.reset_backoff()
        self._nc = await connect(
            settings.nats_url,
            f"baton-timeout-scheduler-{settings.instance}",
            identity(settings, TIMEOUT_SCHEDULER),
        )
        js = self._nc.jetstream()
        await wait_for_streams(js, (EVENTS_STREAM,))  # the dispatcher creates it
        self._events = events_consumer(self.deadlines)
        await self._events.start(js)
        self._events_task = asyncio.create_task(self._events.run(), name="deadline-events")
        ticker = Ticker(
            self.deadlines,
            nats_requester(self._nc, settings.request_timeout),
            tick=settings.scheduler_tick,
            retry_cap=self.retry_cap,
        )
        self._ticker_task = asyncio.create_task(ticker.run(), name="deadline-ticker")
        log.info(
            "timeout-scheduler ready: %d deadline(s) waiting in %s",
            await self.deadlines.count(),
            settings.scheduler_database,
        )

    async def stop(self) -> None:
        if self._ticker_task is not None:
            await cancel_and_wait(self._ticker_task)
            self._ticker_task = None
        if self._events is not None:
            await self._events.stop()
            self._events = None
        if self._events_task is not None:
            # A batch cut short is not acknowledged: it comes back at the next start, and
            # its changes are idempotent.
            await cancel_and_wait(self._events_task)
            self._events_task = None
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        if self.deadlines is not None:
            await self.deadlines.close()
            self.deadlines = None


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or the task is cancelled), then shut down cleanly."""
    scheduler = TimeoutScheduler(settings)
    await scheduler.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await scheduler.stop()
