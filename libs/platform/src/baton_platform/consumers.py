"""The one way Baton's services consume a JetStream stream: a durable consumer, in order.

A push consumer delivered to a queue group (nats-py names the durable consumer after the
queue): messages arrive in stream order and are handled one at a time, each acknowledged
by the handler only once its effect is durable. Not FastStream's pull consumer: it handles
a fetched batch concurrently, and nats-py 2.16 raises a TimeoutError inside its fetch that
FastStream 0.7 does not expect, which leaves a pull request orphaned on the server that
holds the next messages back until their ack_wait (seen as 30 s stalls in the tests).

"In order" holds only while nothing is redelivered: with many messages unacknowledged, one
that a killed instance held comes back after its ack_wait, behind the newer ones its
successor already handled (a device's STARTED recorded after its SUCCEEDED, 30 s late). A
consumer that needs the order across crashes takes `max_ack_pending=1` (the next message
goes out only once the previous one is acknowledged). Every consumer calls
`resume_in_order` before it subscribes, so what a dead instance held comes back at once,
first, rather than after ack_wait (a deadline's `Requested` or a device's `Dispatched`
30 s late), and a consumer made by an older version takes today's settings.

A consumer given `filter_subjects` receives only the messages it acts on: the server skips
the rest, where the consumer used to receive, decode and acknowledge each one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

log = logging.getLogger(__name__)

Handler = Callable[[NatsMessage], Awaitable[None]]

ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 1000


async def raw_body(message: NatsMessage) -> bytes:
    """FastStream's decoder for Baton's subscribers: the bytes as they came.

    Every handler reads `message.body` with its own typed model; FastStream's default decoder
    would first run `json.loads` on it, outside the handler, and a deep array (RecursionError)
    or a JSON content type over bad JSON would escape every handler: a request left without
    an answer, a stream message never acknowledged."""
    return message.body


def durable_subscriber(
    broker: NatsBroker,
    subject: str,
    stream: str,
    name: str,
    max_ack_pending: int = MAX_ACK_PENDING,
    ack_wait: float = ACK_WAIT_S,
    filter_subjects: Iterable[str] = (),
) -> Callable[[Handler], object]:
    """The decorator for a handler of `subject` on `stream`, as durable consumer `name`.

    A new consumer starts at the beginning of the stream, so nothing relayed before the
    service first ran is missed; after that it resumes where it left off. With
    `filter_subjects` the server delivers only the messages on those subjects (nats-server
    2.10 or later) rather than all of `subject`; an existing consumer takes them from
    `resume_in_order`, called before the broker starts.
    """
    filters = sorted(filter_subjects) or None
    subscribe: Callable[[Handler], object] = broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        queue=name,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(
            ack_wait=ack_wait, max_ack_pending=max_ack_pending, filter_subjects=filters
        ),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
        include_in_schema=False,
    )
    return subscribe


async def resume_in_order(
    js: JetStreamContext,
    stream: str,
    name: str,
    max_ack_pending: int,
    ack_wait: float,
    filter_subjects: Iterable[str] | None = None,
) -> None:
    """Before subscribing as durable consumer `name`: give it these limits and, when given,
    these filter subjects (the subscription takes an existing consumer as it finds it, so
    one made by an older version would keep its own), updated in place: its position stays.
    Then have what it delivered but never saw acknowledged (an instance killed mid-message)
    come back now, in stream order, rather than after ack_wait. A live instance may then see
    a message twice: handlers are idempotent."""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        return  # the first start: the subscription creates it with these settings
    config = info.config
    wanted: dict[str, object] = {"max_ack_pending": max_ack_pending, "ack_wait": ack_wait}
    if filter_subjects is not None:
        # One or the other: the server refuses a consumer with both.
        wanted |= {"filter_subject": None, "filter_subjects": sorted(filter_subjects)}
    if any(getattr(config, key) != value for key, value in wanted.items()):
        await js.add_consumer(stream, config.evolve(**wanted))
        log.info("consumer %s of %s updated: %s", name, stream, wanted)
    if info.num_ack_pending:
        log.info("%s: %d message(s) unacknowledged come back now", name, info.num_ack_pending)
        try:
            await js.reset_consumer(stream, name)
        except APIError as exc:  # a server older than 2.14: they come back after ack_wait
            log.warning("could not resume %s at its ack floor: %s", name, exc)
