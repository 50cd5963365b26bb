"""Live updates over Server-Sent Events: `GET /v1/events` (a tenant's feed of execution
changes, filtered) and `GET /v1/executions/{id}/events` (one execution's, whole, until it
ends). docs/api.md, "Live updates".

Every event's `id:` is its position in the change feed (`execution_changes`, the event's
notification id), the same on every api replica: a client that reconnects with
`Last-Event-ID` (or `?last_event_id=`) gets every change after it, once.

A subscriber holds no queue: it reads the feed after its last position, a page at a time,
and between pages waits for the views to advance (`ProjectionRunner.advance_signal`, woken
by this replica's projection or by another's announcement on NATS). A slow client only
slows its own reads (uvicorn waits for the socket to drain before the next page is read),
so what it costs is one page, however far behind it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from prometheus_client import Gauge

from baton_api.auth import Identity, viewer
from baton_api.controllers import DeviceId, Name, Statuses, statuses_of
from baton_api.problems import ProblemError, invalid, problem
from baton_api.projector import ProjectionRunner
from baton_api.service import ExecutionService
from baton_contracts.webhooks import ExecutionChange
from baton_domain.statuses import ExecutionStatus
from baton_views import CHANGES_PAGE, Change, ChangeFilter, ExecutionViews

LIVE_STREAMS = Gauge("baton_api_live_streams", "SSE streams open on this api (/v1/events...)")
EVENT_STREAM = "text/event-stream"
STREAM = "Server-Sent Events: `id:` a position, `event:` a kind, `data:` JSON (docs/api.md)"
TERMINAL = frozenset(s.value for s in ExecutionStatus if s.is_terminal)
# How long a browser's EventSource waits before it reconnects (the `retry:` field), ms.
RETRY_MS = 1000

LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="resume after this event's id (a reconnecting EventSource sends it)",
    ),
]
LastEventIdQuery = Annotated[
    str | None,
    QueryParameter(description="the same as the Last-Event-ID header, for clients without it"),
]


@dataclass
class LiveFeed:
    """What the streams read and wait on."""

    views: ExecutionViews
    runner: ProjectionRunner
    keepalive: float  # seconds between two keep-alive comments of an idle stream
    closing: asyncio.Event  # set when the api stops: every stream ends (clients resume)
    max_seconds: float = 3600.0  # then a stream ends too (its client resumes, maybe elsewhere)

    async def stream(
        self, where: ChangeFilter, after: int, until_end: bool = False
    ) -> AsyncIterator[ServerSentEventMessage]:
        """The changes matching `where` after position `after`, as they come; with
        `until_end`, ends once the last change read ended the execution (or it is gone)."""
        LIVE_STREAMS.inc()
        try:
            async for message in self._changes(where, after, until_end):
                yield message
        finally:  # its end, the api's stop, or its client gone (the stream is cancelled)
            LIVE_STREAMS.dec()

    async def _changes(
        self, where: ChangeFilter, after: int, until_end: bool
    ) -> AsyncIterator[ServerSentEventMessage]:
        yield ServerSentEventMessage(data=None, retry=RETRY_MS, comment="live")
        ends_at = time.monotonic() + self.max_seconds
        while not self.closing.is_set() and time.monotonic() < ends_at:
            signal = self.runner.advance_signal()  # before the reads: no advance is missed
            # Read before the changes: ended (or gone) then, it has no change after those.
            ended = until_end and await self._ended(where)
            page = await asyncio.to_thread(self.views.changes, where, after, CHANGES_PAGE)
            for change in page:
                after = change.position
                yield message_of(change)
            if len(page) == CHANGES_PAGE:
                continue  # more to read now
            if ended or (until_end and page and page[-1].status in TERMINAL):
                return
            if not await self._woken(signal, ends_at):
                yield ServerSentEventMessage(data=None, comment="keep-alive")

    async def _woken(self, signal: asyncio.Event, ends_at: float) -> bool:
        """Wait for the views to advance (True) or a keep-alive's time (False)."""
        within = max(0.0, min(self.keepalive, ends_at - time.monotonic()))
        return await first_of((self.closing, signal), within)

    async def _ended(self, where: ChangeFilter) -> bool:
        """Whether the execution has ended or is gone (deleted)."""
        assert where.execution_id is not None
        found = await asyncio.to_thread(self.views.get, where.execution_id, False, where.tenant)
        return found is None or found.is_terminal


async def first_of(events: Iterable[asyncio.Event], within: float) -> bool:
    """Wait until one of `events` is set (True) or `within` seconds pass (False)."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return bool(done)


def message_of(change: Change) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        id=change.position, event=change.kind, data=change_out(change).model_dump_json()
    )


def change_out(change: Change) -> ExecutionChange:
    """The change as the feed and the webhooks show it (docs/api.md)."""
    return ExecutionChange(
        position=change.position,
        execution_id=change.execution_id,
        device_id=change.device_id,
        name=change.name,
        status=change.status,
        event=change.kind,
        seq=change.seq,
        at=datetime.fromisoformat(change.at),
    )


def resume_position(header: str | None, query: str | None) -> int | None:
    """The position a client resumes after (None: it does not resume); 422 when it is not
    one of our ids."""
    field, value = ("Last-Event-ID", header) if header is not None else ("last_event_id", query)
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise invalid(field, "not an event id: a non-negative integer this api sent as `id:`")
    return int(text)


async def still_kept(live: LiveFeed, after: int) -> None:
    """410 `feed-expired` when changes after `after` were pruned (BATON_CHANGE_RETENTION_DAYS):
    resuming there would skip them unseen."""
    floor = await asyncio.to_thread(live.views.change_floor)
    if after < floor:
        raise ProblemError(
            problem(
                410,
                "feed-expired",
                f"changes up to position {floor} are no longer kept; read the executions"
                " (GET /v1/executions) and follow from now, without Last-Event-ID",
            )
        )


async def newest(live: LiveFeed) -> int:
    return await asyncio.to_thread(live.views.position)


async def beyond_newest(live: LiveFeed, after: int) -> bool:
    """Whether a client resumes after an id the feed has not reached: one from before the
    feed was built again (`baton replay`, a restore), whose positions start lower. Waiting
    for the positions to pass it would hide every change made until then, so such a stream
    starts afresh instead."""
    return after > await newest(live)


class LiveController(Controller):
    tags = ["live"]

    @get("/events", guards=[viewer], media_type=EVENT_STREAM, response_description=STREAM)
    async def follow_changes(
        self,
        caller: NamedDependency[Identity],
        live: NamedDependency[LiveFeed],
        status: Statuses = None,
        name: Name = None,
        device_id: DeviceId = None,
        last_event_id: LastEventIdQuery = None,
        last_event_id_header: LastEventIdHeader = None,
    ) -> ServerSentEvent:
        """Server-Sent Events: every change of the caller's tenant's executions from now on
        (or after `Last-Event-ID`), filtered by device, command name and status (after the
        change). Never ends by itself; keep-alive comments while idle."""
        where = ChangeFilter(
            tenant=caller.tenant,
            device_id=device_id,
            name=name,
            statuses=frozenset(s.value for s in statuses_of(status or [])),
        )
        after = resume_position(last_event_id_header, last_event_id)
        if after is None or await beyond_newest(live, after):
            after = await newest(live)  # from now on: fixed before the answer starts
        else:
            await still_kept(live, after)
        return ServerSentEvent(live.stream(where, after))

    @get(
        "/executions/{execution_id:str}/events",
        guards=[viewer],
        media_type=EVENT_STREAM,
        response_description=STREAM,
    )
    async def follow_execution(
        self,
        caller: NamedDependency[Identity],
        live: NamedDependency[LiveFeed],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[UUID],
        last_event_id: LastEventIdQuery = None,
        last_event_id_header: LastEventIdHeader = None,
    ) -> ServerSentEvent:
        """Server-Sent Events: the execution's every change from its first (or after
        `Last-Event-ID`), then each as it comes; the stream ends after the change that ends
        it. 404 for an execution that is not the caller's tenant's."""
        resumed = resume_position(last_event_id_header, last_event_id)
        await service.get(execution_id, False, caller.tenant)
        if resumed is not None and await beyond_newest(live, resumed):
            resumed = None  # the execution's changes from its first again: none missed
        if resumed is not None:
            await still_kept(live, resumed)
        after = resumed or 0
        where = ChangeFilter(tenant=caller.tenant, execution_id=execution_id)
        return ServerSentEvent(live.stream(where, after, until_end=True))
