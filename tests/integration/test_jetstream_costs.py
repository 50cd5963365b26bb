"""The JetStream costs benchmark (`python -m tests.benchmarks.jetstream_costs`) times only
what was stored, on a real nats-server: its atomic batches are committed, a refused one
stops it, and the consumer acknowledges everything. Its figures are not asserted
(docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from baton_cli.localstack import start_nats
from tests.benchmarks.jetstream_costs import (
    EVENTS_PER_COMMAND,
    IN_FLIGHT,
    STREAM,
    consume_and_ack,
    create_stream,
    publish_batches,
    publish_each,
)
from tests.conftest import eventually

BATCH = EVENTS_PER_COMMAND
# Larger than the window of answers awaited: one batch in flight at a time.
LARGE = 2 * IN_FLIGHT


async def test_what_each_step_times_is_stored_and_acknowledged(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        await create_stream(nc)
        await publish_each(IN_FLIGHT)(nc, 3 * BATCH)
        await publish_each(1)(nc, 3 * BATCH)  # one at a time: each answered before the next
        await publish_batches(BATCH)(nc, 3 * BATCH)
        # Whole batches only: the 5 over two batches are not sent.
        await publish_batches(LARGE)(nc, 2 * LARGE + 5)
        js = nc.jetstream()
        stored = 9 * BATCH + 2 * LARGE
        assert (await js.stream_info(STREAM)).state.messages == stored
        await consume_and_ack(nc, stored)

        async def all_acknowledged() -> bool:
            # The server applies acknowledgements on the consumer's own queue, after it
            # has read them: the floor follows shortly.
            (consumer,) = await js.consumers_info(STREAM)
            return consumer.ack_floor is not None and consumer.ack_floor.stream_seq == stored

        await eventually(all_acknowledged, timeout=5, what="every message acknowledged")
        await nc.close()
    finally:
        server.stop()


async def test_a_batch_the_stream_refuses_stops_the_run(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        await create_stream(nc, atomic=False)
        with pytest.raises(RuntimeError, match="refused"):
            await publish_batches(BATCH)(nc, BATCH)
        await nc.close()
    finally:
        server.stop()
