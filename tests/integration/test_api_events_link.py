"""The api's NATS link takes lifecycle events only while its replica writes the views
(`NatsLink.follow_events`): a replica that only reads them is woken by announcements, and
each event it took would be a message handled for nothing (seven a command)."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from nats.aio.client import Client

from baton_api.nats_link import NatsLink
from baton_cli.localstack import Server
from baton_contracts.nats import event_subject
from baton_platform.nats import NatsIdentity
from baton_platform.nats_access import API
from tests.conftest import eventually


async def delivered(nc: Client, link: NatsLink) -> int:
    """Messages the link's connection has received, once one event published now would be
    among them: the publisher's flush has the server route it, and the server writes it
    to the link's connection before the PONG of the link's own flush."""
    await nc.publish(event_subject(uuid4(), "Requested"), b"{}")
    await nc.flush()
    client = await link.connected_client()
    await client.flush()
    return int(client.stats["in_msgs"])


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
    try:
        before = await delivered(nc, link)
        assert await delivered(nc, link) == before  # the second event was not delivered
        assert not link.following_events

        await link.follow_events(True)
        assert link.following_events
        assert await delivered(nc, link) == before + 1

        async def woke() -> bool:
            return woken == 1

        await eventually(woke, what="the projection woken by the event")

        await link.follow_events(False)
        assert not link.following_events
        assert await delivered(nc, link) == before + 1
    finally:
        running.cancel()
        await link.close()
    assert woken == 1
