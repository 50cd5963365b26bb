"""Composition root of the timeout-scheduler: builds everything from Settings."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client
from pydantic import ValidationError

from baton_contracts.nats import (
    DEADLINE_SUBJECT,
    EVENTS_STREAM,
    SCHEDULER_LEASE,
    DeadlineDue,
    DeadlineReply,
)
from baton_platform.consumers import BatchingConsumer
from baton_platform.leases import hold, holder_name
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import connect, identity, wait_for_streams
from baton_platform.nats_access import TIMEOUT_SCHEDULER
from baton_platform.settings import Settings
from baton_timeout_scheduler.edges import SERVICE, events_consumer
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
    """The service: the events consumer filling the store, and the ticker emptying it.

    Every replica connects and opens the store; only the holder of lease
    `timeout-scheduler` consumes the events and fires deadlines (docs/architecture.md,
    "Replicas"): the others stand by, ready to take over within the lease's TTL."""

    def __init__(self, settings: Settings, retry_cap: float = 5.0) -> None:
        self.settings = settings
        self.retry_cap = retry_cap
        self.deadlines: Deadlines | None = None
        self._nc: Client | None = None
        self._events: BatchingConsumer | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def leading(self) -> bool:
        """Whether this replica keeps and fires the deadlines now (holds the lease)."""
        return self._ticker_task is not None

    async def start(self) -> None:
        settings = self.settings
        store = await asyncio.to_thread(DeadlineStore, settings.scheduler_database)
        self.deadlines = Deadlines(store)
        self._nc = await connect(
            settings.nats_url,
            f"baton-timeout-scheduler-{settings.instance}",
            identity(settings, TIMEOUT_SCHEDULER),
        )
        js = self._nc.jetstream()
        await wait_for_streams(js, (EVENTS_STREAM,))  # the dispatcher creates it
        self._stopping = asyncio.Event()
        self._lease_task = asyncio.create_task(
            hold(
                js,
                SCHEDULER_LEASE,
                holder_name(SERVICE, settings.instance),
                self._lead,
                self._stand_by,
                self._stopping,
                settings.nats_replicas,
                alive=self._leading,
            ),
            name="scheduler-lease",
        )
        log.info(
            "timeout-scheduler started; the holder of lease %s fires deadlines", SCHEDULER_LEASE
        )

    async def _lead(self) -> None:
        """Lease taken: consume the deadlines and fire them."""
        assert self._nc is not None
        assert self.deadlines is not None
        settings = self.settings
        # Backoff from an earlier run or leader is stale: what is past due may fire at once.
        await self.deadlines.reset_backoff()
        self._events = events_consumer(self.deadlines)
        # Starting the consumer has what another replica held unacknowledged come back at
        # once (`resume_in_order`), not after the ack wait.
        await self._events.start(self._nc.jetstream())
        self._events_task = asyncio.create_task(self._events.run(), name="deadline-events")
        ticker = Ticker(
            self.deadlines,
            nats_requester(self._nc, settings.request_timeout),
            tick=settings.scheduler_tick,
            retry_cap=self.retry_cap,
        )
        self._ticker_task = asyncio.create_task(ticker.run(), name="deadline-ticker")
        log.info(
            "timeout-scheduler leading: %d deadline(s) waiting in %s",
            await self.deadlines.count(),
            settings.scheduler_database,
        )

    def _leading(self) -> bool:
        """Whether both of the leader's tasks still run (one that died gives the lease up)."""
        tasks = (self._ticker_task, self._events_task)
        return all(task is not None and not task.done() for task in tasks)

    async def _stand_by(self) -> None:
        """Lease lost or given up: stop firing and consuming; the store stays open."""
        if self._ticker_task is not None:
            await cancel_and_wait(self._ticker_task)
            self._ticker_task = None
        if self._events is not None:
            await self._events.stop()
            self._events = None
        if self._events_task is not None:
            # A batch cut short is not acknowledged: it comes back to the next leader, and
            # its changes are idempotent.
            await cancel_and_wait(self._events_task)
            self._events_task = None

    async def stop(self) -> None:
        self._stopping.set()
        if self._lease_task is not None:
            # Stands by and releases the lease, so another replica leads at once.
            await self._lease_task
            self._lease_task = None
        await self._stand_by()
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
