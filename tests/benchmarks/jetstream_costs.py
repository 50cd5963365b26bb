"""What JetStream costs nats-server per message: `python -m tests.benchmarks.jetstream_costs`.

A command makes about ten stored JetStream messages (seven lifecycle events, three device
reports) and six consumer acknowledgements. This measures, on one nats-server, the
server's CPU time (user and system, so its fsyncs too) for:

- a stored message, published with 32 in flight (and as many as each `--in-flight` says),
  fsyncing each write (`sync_interval: always`, as Baton runs it) and with nats-server's
  default sync (every 2 minutes; for the comparison only);
- a message consumed and acknowledged one by one (a durable pull consumer, explicit acks);
- a stored message when they go as atomic batches (`Nats-Batch-Id`, nats-server 2.12 and
  later: one commit per batch) of seven, the events of one command, and of each size
  `--batch` names (a relay round of several commands' events).

Nothing asserts a speed: compare the lines of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from baton_cli.localstack import start_nats
from baton_platform.nats import synced
from tests.benchmarks.procs import cpu_seconds

STREAM, SUBJECTS = "COSTS", "costs.>"
BODY = b"x" * 600  # about a lifecycle event's JSON
IN_FLIGHT = 32
EVENTS_PER_COMMAND = 7  # the lifecycle events of one command: the first batch size

# A step handles up to its count of messages and returns how many it did.
Step = Callable[[Client, int], Awaitable[int]]


async def accepted(answer: Awaitable[Msg], field: str = "seq") -> None:
    """Raises unless the server's answer has `field`: by default, the sequence of the
    message (or batch) it stored, and not as a duplicate."""
    reply = json.loads((await answer).data)
    if "error" in reply or field not in reply or reply.get("duplicate"):
        raise RuntimeError(f"refused: {reply}")


async def create_stream(nc: Client, atomic: bool = True) -> None:
    """The stream, taking atomic batches when `atomic` (nats-py's StreamConfig does not
    know `allow_atomic`: the API request as nats-server takes it)."""
    config = {"name": STREAM, "subjects": [SUBJECTS], "allow_atomic": atomic}
    await accepted(
        nc.request(f"$JS.API.STREAM.CREATE.{STREAM}", json.dumps(config).encode(), 5), "config"
    )


def publish_each(in_flight: int) -> Step:
    """Messages one by one, each answered, `in_flight` of them unanswered at most: the
    relay keeps 32 in flight; a device report goes alone, as devices answer."""

    async def step(nc: Client, count: int) -> int:
        window: list[asyncio.Future[None]] = []
        # Ids of this step only: a message id seen in the last two minutes is not stored
        # again but answered as a duplicate, which costs the server far less.
        step_id = uuid4().hex
        for n in range(count):
            headers = {"Nats-Msg-Id": f"{step_id}-{n}"}
            answer = nc.request(f"costs.{n % 7}", BODY, 5, headers=headers)
            window.append(asyncio.ensure_future(accepted(answer)))
            if len(window) >= in_flight:
                await window.pop(0)
        await asyncio.gather(*window)
        return count

    return step


def publish_batches(size: int) -> Step:
    """Messages as atomic batches of `size` (the count rounded down to whole batches): the
    last of each commits it and is the only one answered."""

    async def step(nc: Client, count: int) -> int:
        window: list[asyncio.Future[None]] = []
        whole = count - count % size
        for first in range(0, whole, size):
            batch = uuid4().hex
            for n in range(first, first + size):
                headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(n - first + 1)}
                if n < first + size - 1:
                    await nc.publish(f"costs.{n % 7}", BODY, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    answer = nc.request(f"costs.{n % 7}", BODY, 5, headers=headers)
                    window.append(asyncio.ensure_future(accepted(answer)))
            if len(window) >= max(1, IN_FLIGHT // size):
                await window.pop(0)
        await asyncio.gather(*window)
        return whole

    return step


async def consume_and_ack(nc: Client, count: int) -> int:
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1
    )
    sub = await nc.jetstream().pull_subscribe(SUBJECTS, f"c{uuid4().hex[:8]}", config=config)
    got = 0
    while got < count:
        for msg in await sub.fetch(50, timeout=5):
            await msg.ack()
            got += 1
    await synced(nc)  # every acknowledgement on the server (a bare flush() may overtake them)
    return got


async def server_cost(pid: int, nc: Client, step: Step, count: int) -> tuple[float, float]:
    """(messages/s, nats-server CPU µs per message) of `step` given `count`."""
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    done = await step(nc, count)
    wall = time.perf_counter() - wall
    await asyncio.sleep(0.2)  # what the server does right after the last answer
    return done / wall, (cpu_seconds(pid) - cpu) / done * 1e6


async def one_server(
    scratch: Path, fsync: bool, count: int, sizes: list[int], in_flight: list[int]
) -> dict[str, tuple[float, float]]:
    server = start_nats(scratch / f"nats-{fsync}", fsync_each_write=fsync)
    try:
        nc = await nats.connect(server.url)
        await create_stream(nc)
        pid = server.proc.pid
        found = {}
        for window in in_flight:
            found[f"stored, {window} in flight"] = await server_cost(
                pid, nc, publish_each(window), count
            )
        found["consumed and acked"] = await server_cost(pid, nc, consume_and_ack, count)
        for size in sizes:
            found[f"stored, atomic batches of {size}"] = await server_cost(
                pid, nc, publish_batches(size), count
            )
        await nc.close()
        return found
    finally:
        server.stop()


async def main(count: int, sizes: list[int], in_flight: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="baton-jetstream-") as scratch:
        print(f"{count:,} messages of {len(BODY)} bytes each; nats-server's own CPU per message")
        print(f"{'':34} {'fsync each write':>24} {'default sync':>24}")
        runs = [
            await one_server(Path(scratch), fsync, count, sizes, in_flight)
            for fsync in (True, False)
        ]
        for what in runs[0]:
            cells = [f"{rate:8,.0f}/s {micros:6.0f} µs" for rate, micros in (r[what] for r in runs)]
            print(f"{what:34} {cells[0]:>24} {cells[1]:>24}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4200)
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        default=[],
        help="an atomic batch size to measure besides seven (repeatable)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        action="append",
        default=[],
        help=f"messages published unanswered at most, besides {IN_FLIGHT} (repeatable)",
    )
    args = parser.parse_args()
    windows = [IN_FLIGHT, *args.in_flight]
    asyncio.run(main(args.messages, [EVENTS_PER_COMMAND, *args.batch], windows))
