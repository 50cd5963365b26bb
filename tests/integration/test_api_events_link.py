"""The api's NATS link takes lifecycle events only while its replica writes the views
(`NatsLink.follow_events`): a replica that only reads them is woken by announcements, and
each event it took would be a message handled for nothing (seven a command)."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from nats.aio.client import Client
from nats.aio.msg import Msg

from baton_api.nats_link import NatsLink
from baton_cli.localstack import Server
from baton_contracts.nats import VIEWS_ADVANCED_SUBJECT, event_subject
from baton_platform.nats import NatsIdentity, synced
from baton_platform.nats_access import API
from tests.conftest import eventually


class Probe:
    """A subscription of the link's own connection, on a subject the api may read. The
    server writes one publisher's messages to one connection in the order it received
    them, so once a probe published after an event has arrived, so has the event, if the
    link was to receive it."""

    def __init__(self) -> None:
        self.arrived = 0

    async def on_message(self, _msg: Msg) -> None:
        self.arrived += 1

    async def events_delivered(self, nc: Client, link: NatsLink) -> int:
        """Lifecycle events the link's connection has received, once one published now
        would be among them."""
        await nc.publish(event_subject(uuid4(), "Requested"), b"{}")
        await nc.publish(VIEWS_ADVANCED_SUBJECT, b"probe")
        wanted = self.arrived + 1

        async def arrived() -> bool:
            return self.arrived >= wanted

        await eventually(arrived, what="the probe after the event")
        client = await link.connected_client()
        return int(client.stats["in_msgs"]) - self.arrived


async def test_lifecycle_events_reach_the_api_only_while_it_follows_them(
    nats_server: Server, nc: Client
) -> None:
    woken = 0

    def on_event() -> None:
        nonlocal woken
        woken += 1

    who = NatsIdentity(API, nats_server.passwords[API])
    link = NatsLink(nats_server.url, who, on_event=on_event)
    running = asyncio.create_task(link.run())
    probe = Probe()
    try:
        client = await link.connected_client()
        await client.subscribe(VIEWS_ADVANCED_SUBJECT, cb=probe.on_message)
        await synced(client)

        assert await probe.events_delivered(nc, link) == 0
        assert not link.following_events

        await link.follow_events(True)
        assert link.following_events
        assert await probe.events_delivered(nc, link) == 1

        async def woke() -> bool:
            return woken == 1

        await eventually(woke, what="the projection woken by the event")

        await link.follow_events(False)
        assert not link.following_events
        assert await probe.events_delivered(nc, link) == 1
    finally:
        running.cancel()
        await link.close()
    assert woken == 1
