"""A request lost on its way is sent again, when the caller says it may be.

In a NATS cluster a request sent while its subject moves between two dispatchers on
different nodes can be lost without a word (seen in the rolling restart: routed to the node
of the one that had just unsubscribed; the api answered `outcome-unknown` after 5 s). A
submit names its execution, so the dispatcher applies it once however often it comes: the
api's gateway sends it again after `RESEND_S`. Here a responder that drops the first
request it receives stands for the lost one, against a real nats-server.
"""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from baton_platform.requests import request_patiently

pytestmark = pytest.mark.integration

SUBJECT = "baton.v1.partitions.3.submit"


async def drops_the_first(nc: Client) -> list[bytes]:
    """A responder on SUBJECT that receives every request, answers all but the first, and
    returns what it received."""
    received: list[bytes] = []

    async def handle(msg: Msg) -> None:
        received.append(msg.data)
        if len(received) > 1:
            await msg.respond(b"stored once: " + msg.data)

    await nc.subscribe(SUBJECT, cb=handle)
    await nc.flush()
    return received


async def test_a_lost_request_is_sent_again_when_it_may_be(nc: Client) -> None:
    received = await drops_the_first(nc)
    started = time.monotonic()
    answer = await request_patiently(nc, SUBJECT, b"submit e1", within=5.0, resend_after=0.5)
    assert answer.data == b"stored once: submit e1"
    assert received == [b"submit e1", b"submit e1"]  # the same request, twice
    assert 0.5 <= time.monotonic() - started < 2.0  # after resend_after, not the whole wait


async def test_a_lost_request_is_not_sent_again_unless_it_may_be(nc: Client) -> None:
    received = await drops_the_first(nc)
    with pytest.raises(NatsTimeoutError):
        await request_patiently(nc, SUBJECT, b"cancel e1", within=1.5)
    assert received == [b"cancel e1"]


async def test_the_last_try_waits_for_all_the_time_left(nc: Client) -> None:
    """Sent again after 1.5 s of 3, the second try waits the 1.5 s left (no third, with
    less than a second after it); with no answer at all the caller hears so once its time
    is up, not later."""

    async def silent(msg: Msg) -> None:
        received.append(msg.data)

    received: list[bytes] = []
    await nc.subscribe(SUBJECT, cb=silent)
    await nc.flush()
    started = time.monotonic()
    with pytest.raises(NatsTimeoutError):
        await request_patiently(nc, SUBJECT, b"submit e2", within=3.0, resend_after=1.5)
    assert 2.9 <= time.monotonic() - started < 3.5
    assert received == [b"submit e2", b"submit e2"]
