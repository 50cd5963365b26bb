"""The one way Baton's services consume a JetStream stream: a durable consumer, in order.

A push consumer delivered to a queue group (nats-py names the durable consumer after the
queue): messages arrive in stream order and are handled one at a time, each acknowledged
by the handler only once its effect is durable. Not FastStream's pull consumer: it handles
a fetched batch concurrently, and nats-py 2.16 raises a TimeoutError inside its fetch that
FastStream 0.7 does not expect, which leaves a pull request orphaned on the server that
holds the next messages back until their ack_wait (seen as 30 s stalls in the tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js.api import DeliverPolicy

Handler = Callable[[NatsMessage], Awaitable[None]]

ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 1000


def durable_subscriber(
    broker: NatsBroker, subject: str, stream: str, name: str
) -> Callable[[Handler], object]:
    """The decorator for a handler of `subject` on `stream`, as durable consumer `name`.

    A new consumer starts at the beginning of the stream, so nothing relayed before the
    service first ran is missed; after that it resumes where it left off.
    """
    subscribe: Callable[[Handler], object] = broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        queue=name,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(ack_wait=ACK_WAIT_S, max_ack_pending=MAX_ACK_PENDING),
        ack_policy=AckPolicy.MANUAL,
        include_in_schema=False,
    )
    return subscribe
