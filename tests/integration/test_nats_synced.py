"""`baton_platform.nats.synced`: once it returns, the server has what the client sent
before. nats-py's own `flush()` does not promise that (its PING overtakes the commands its
flusher task has not written yet): a subscription flushed that way sometimes missed the
message published right after, about one time in fifteen on a fresh connection."""

from __future__ import annotations

from uuid import uuid4

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from baton_cli.localstack import Server
from baton_contracts.nats import EVENTS_WILDCARD, event_subject
from baton_platform.nats import synced
from baton_platform.nats_access import API
from tests.conftest import eventually

ROUNDS = 40


async def test_a_subscription_synced_gets_the_next_message(nats_server: Server, nc: Client) -> None:
    for _ in range(ROUNDS):
        got: list[Msg] = []

        async def take(msg: Msg, got: list[Msg] = got) -> None:
            got.append(msg)

        client = await nats.connect(nats_server.url_as(API))
        try:
            await client.subscribe(EVENTS_WILDCARD, cb=take)
            await synced(client)
            await nc.publish(event_subject(uuid4(), "Requested"), b"{}")
            await synced(nc)

            async def arrived(got: list[Msg] = got) -> bool:
                return len(got) == 1

            await eventually(arrived, timeout=5, what="the message published after the SUB")
        finally:
            await client.close()
