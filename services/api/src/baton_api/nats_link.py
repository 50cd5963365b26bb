"""The api's NATS connection, kept in the background so the api starts (and serves reads)
while NATS is down.

While this replica writes the views (`follow_events`), it subscribes to every lifecycle
event (core NATS, no consumer state): a message only means "the event store moved", so the
projection wakes up early. A replica that only reads the views is woken by the projecting
one's announcements instead, and takes no lifecycle event: seven messages a command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from baton_contracts.nats import EVENTS_WILDCARD
from baton_platform.nats import (
    NatsIdentity,
    is_refusal,
    log_nats_error,
    redacted,
    server_urls,
    synced,
)

log = logging.getLogger(__name__)

CLIENT_NAME = "baton-api"


class NatsLink:
    def __init__(
        self, url: str, who: NatsIdentity | None = None, *, on_event: Callable[[], None]
    ) -> None:
        self._url = url
        self._who = who or NatsIdentity(None)
        self._on_event = on_event
        self.client: Client | None = None
        self._reported_down = False
        self._up = asyncio.Event()
        self._on_connected: list[Callable[[Client], Awaitable[object]]] = []
        self._events_wanted = False
        self._events: Subscription | None = None
        self._subscribing = asyncio.Lock()

    def on_connected(self, setup: Callable[[Client], Awaitable[object]]) -> None:
        """Run `setup` once connected (its subscriptions survive reconnects: nats-py's)."""
        self._on_connected.append(setup)

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def run(self) -> None:
        """Connect (retrying for ever), then subscribe; nats-py reconnects by itself."""
        client = await nats.connect(
            server_urls(self._url),
            name=CLIENT_NAME,
            max_reconnect_attempts=-1,  # also makes the first connect retry until it works
            reconnect_time_wait=1,
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **self._who.options(),
        )
        self.client = client
        self._reported_down = False
        self._up.set()
        log.info("connected to NATS at %s as %s", redacted(self._url), self._who.user or "no one")
        await self._follow_as_wanted()
        for setup in self._on_connected:
            await setup(client)

    async def follow_events(self, wanted: bool) -> None:
        """Receive every lifecycle event (`on_event` for each) or none, from now on; before
        the connection, once it is made."""
        self._events_wanted = wanted
        await self._follow_as_wanted()

    @property
    def following_events(self) -> bool:
        return self._events is not None

    async def _follow_as_wanted(self) -> None:
        """Never raises: the wake-ups only hurry the projection, which also polls (tried
        again on the next reconnect)."""
        async with self._subscribing:  # `run` and the lease may both get here at once
            if self.client is None:
                return
            try:
                if self._events_wanted and self._events is None:
                    cb = self._on_message
                    self._events = await self.client.subscribe(EVENTS_WILDCARD, cb=cb)
                    await synced(self.client)  # the server has it: every event from now on
                elif not self._events_wanted and self._events is not None:
                    events, self._events = self._events, None
                    await events.unsubscribe()
                    await synced(self.client)  # the server has it: no event from now on
            except nats.errors.Error as exc:
                log.warning("lifecycle events not (un)subscribed: %r; the projection polls", exc)

    async def connected_client(self) -> Client:
        """The connection, once there is one (nats-py then reconnects it by itself)."""
        await self._up.wait()
        assert self.client is not None
        return self.client

    async def close(self) -> None:
        if self.client is not None and not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.close(), timeout=2)
            except (TimeoutError, nats.errors.Error):
                log.warning("NATS connection did not close cleanly")

    async def _on_message(self, _msg: Msg) -> None:
        self._on_event()

    # Connection problems are logged once per outage, not on every retry.
    async def _on_error(self, exc: Exception) -> None:
        if is_refusal(exc):
            await log_nats_error(exc)
            return
        if not self._reported_down:
            self._reported_down = True
            log.warning(
                "NATS at %s not reachable (%s); retrying in the background",
                redacted(self._url),
                exc,
            )

    async def _on_disconnected(self) -> None:
        log.warning("disconnected from NATS")

    async def _on_reconnected(self) -> None:
        self._reported_down = False
        log.info("reconnected to NATS")
        await self._follow_as_wanted()
