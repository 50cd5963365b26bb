"""What FastStream costs per JetStream message: `python -m tests.benchmarks.consumers`.

One nats-server (fsyncing every write, as Baton runs it) and a stream of lifecycle events;
the same durable push consumer in a queue group, handled one message at a time, each one
decoded as a `LifecycleEvent` and acknowledged, three ways:

- `nats-py`: `baton_platform.consumers.DurableConsumer`, a plain nats-py subscription
  callback, as the device-bridge and the timeout-scheduler consume;
- `nats-py-one-out`: the same with one message out at a time (`max_ack_pending=1`), as the
  device-bridge consumes its events: each message waits for the acknowledgement of the one
  before it;
- `faststream`: `baton_platform.consumers.durable_subscriber`, as the services subscribe,
  with FastStream's per-message log lines ("Received", "Processed") written at INFO to a
  file, as the services run;
- `faststream-quiet`: the same with the broker's logger above INFO;
- `faststream-bare`: quiet and without dependency injection (`apply_types=False`: the
  handler gets the body and takes the message from the broker's context), which otherwise
  resolves the handler's arguments in a thread pool, four hops per message.

For each: messages/s and the client process's CPU time per message. Nothing asserts a
speed; compare the lines of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import nats
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from baton_cli.localstack import start_nats
from baton_contracts.nats import EVENTS_STREAM, EVENTS_WILDCARD, LifecycleEvent, event_subject
from baton_platform.consumers import ACK_WAIT_S, MAX_ACK_PENDING, DurableConsumer, raw_body
from baton_platform.nats import ensure_streams

Run = Callable[[str, int], Awaitable[None]]


async def fill(url: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    body = LifecycleEvent(
        notification_id=1,
        execution_id=uuid4(),
        version=1,
        type="Dispatched",
        occurred_at=datetime.now(UTC),
        data={"device_id": "demo-thermostat-1", "name": "reboot", "params": {}},
    ).model_dump_json()
    pending = [
        await js.publish_async(event_subject(uuid4(), "Dispatched"), body.encode())
        for _ in range(count)
    ]
    await asyncio.gather(*pending)
    await nc.close()


class Tally:
    """Each message decoded as a `LifecycleEvent`, as the services do; done after `count`."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()

    def take(self, body: bytes) -> None:
        LifecycleEvent.model_validate_json(body)
        self.left -= 1
        if not self.left:
            self.done.set()


def with_nats_py(max_ack_pending: int = MAX_ACK_PENDING) -> Run:
    async def run(url: str, count: int) -> None:
        nc = await nats.connect(url)
        tally = Tally(count)

        async def on_message(msg: Msg) -> None:
            tally.take(msg.data)
            await msg.ack()

        consumer = DurableConsumer(
            EVENTS_STREAM,
            f"bench-nats-py-{uuid4().hex[:6]}",
            [EVENTS_WILDCARD],
            on_message,
            max_ack_pending=max_ack_pending,
        )
        await consumer.start(nc.jetstream())
        await tally.done.wait()
        await consumer.stop()
        await nc.close()

    return run


def durable_subscriber(
    broker: NatsBroker,
    subject: str,
    stream: str,
    name: str,
    max_ack_pending: int = MAX_ACK_PENDING,
    ack_wait: float = ACK_WAIT_S,
) -> Callable[[Callable[[NatsMessage], Awaitable[None]]], object]:
    """FastStream's durable subscriber, as the bridge and the scheduler used it before they
    moved to `DurableConsumer`: the alternative this benchmark measures."""
    subscribe: Callable[[Callable[[NatsMessage], Awaitable[None]]], object] = broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        queue=name,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(ack_wait=ack_wait, max_ack_pending=max_ack_pending),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
        include_in_schema=False,
    )
    return subscribe


def with_faststream(log_path: Path | None, apply_types: bool = True) -> Run:
    async def run(url: str, count: int) -> None:
        logger = logging.getLogger(f"bench.faststream.{uuid4().hex[:6]}")
        logger.propagate = False
        if log_path is None:
            logger.setLevel(logging.WARNING)
        else:
            logger.setLevel(logging.INFO)
            logger.addHandler(logging.FileHandler(log_path))
        broker = NatsBroker(url, logger=logger, apply_types=apply_types)
        tally = Tally(count)

        async def handle(message: NatsMessage) -> None:
            tally.take(message.body)
            await message.ack()

        subscribe = durable_subscriber(
            broker, EVENTS_WILDCARD, EVENTS_STREAM, f"bench-fs-{uuid4().hex[:6]}"
        )
        if apply_types:
            subscribe(handle)
        else:

            async def bare(_body: bytes) -> None:
                await handle(broker.context.get_local("message"))

            subscribe(bare)  # type: ignore[arg-type]

        await broker.start()
        await tally.done.wait()
        await broker.stop()

    return run


async def measure(name: str, run: Run, url: str, count: int) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    await run(url, count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{name:17} {count / wall:8,.0f} messages/s   {cpu / count * 1e6:6.0f} µs CPU per message",
        flush=True,
    )


async def main(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="baton-consumers-") as scratch:
        server = start_nats(Path(scratch) / "nats")
        try:
            await fill(server.url, count)
            print(f"{count:,} lifecycle events, each consumer from the start of the stream:")
            ways: dict[str, Run] = {
                "nats-py": with_nats_py(),
                "nats-py-one-out": with_nats_py(max_ack_pending=1),
                "faststream": with_faststream(Path(scratch) / "faststream.log"),
                "faststream-quiet": with_faststream(None),
                "faststream-bare": with_faststream(None, apply_types=False),
            }
            for _ in range(rounds):
                for name, run in ways.items():
                    await measure(name, run, server.url, count)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
