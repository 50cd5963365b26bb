"""The outbox relay: every stored event, in notification order, onto JetStream.

Publishing is driven from the store (invariant 2): an event is published only once it is
stored, and after a crash the relay resumes from the last event the stream holds, read back
from the `Baton-Notification-Id` header. `Nats-Msg-Id` = notification id lets JetStream drop
an event published twice around a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from baton_contracts.nats import (
    EVENTS_STREAM,
    NOTIFICATION_ID_HEADER,
    LifecycleEvent,
    event_subject,
)
from baton_domain.application import Executions
from baton_platform.mapping import read_events

log = logging.getLogger(__name__)

BATCH = 500


class OutboxRelay:
    def __init__(self, executions: Executions, js: JetStreamContext, poll_interval: float) -> None:
        self._executions = executions
        self._js = js
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.position = 0

    def wake(self) -> None:
        """Called after each write so events go out at once rather than at the next poll."""
        self._wake.set()

    async def published_position(self) -> int:
        info = await self._js.stream_info(EVENTS_STREAM)
        if not info.state.last_seq:
            return 0
        try:
            last = await self._js.get_msg(EVENTS_STREAM, seq=info.state.last_seq)
        except NotFoundError:
            return 0
        return int((last.headers or {}).get(NOTIFICATION_ID_HEADER, 0))

    async def publish(self, event: LifecycleEvent) -> None:
        notification_id = str(event.notification_id)
        await self._js.publish(
            event_subject(event.execution_id, event.type),
            event.model_dump_json().encode(),
            stream=EVENTS_STREAM,
            headers={"Nats-Msg-Id": notification_id, NOTIFICATION_ID_HEADER: notification_id},
        )

    async def run(self) -> None:
        self.position = await self.published_position()
        log.info("relay resuming after notification %d", self.position)
        while True:
            # Cleared before reading, so a write that lands while we read still wakes us.
            self._wake.clear()
            try:
                events = await asyncio.to_thread(
                    read_events, self._executions, self.position, BATCH
                )
                for event in events:
                    await self.publish(event)
                    self.position = event.notification_id
            except asyncio.CancelledError:
                raise
            except Exception:
                # NATS or the store is unavailable: keep the position, try again shortly.
                log.exception("relay could not publish; retrying")
                await asyncio.sleep(1.0)
                continue
            if len(events) < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
