"""Reports across a dispatcher crash: applied in stream order, at once (issue 6, defect 14).

A dispatcher killed while it held a device's STARTED report (delivered, never acknowledged)
used to leave it to come back only after the consumer's 30 s ack wait, while its successor
went on with the newer reports: the execution ended SUCCEEDED with a log of ['SUCCEEDED'],
and STARTED turned up 30 s later, after it. The killed instance is played here by a bare
subscriber of the consumer's delivery subject that takes the report and disconnects.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from baton_cli.localstack import Server
from baton_contracts.nats import REPORTS_STREAM
from baton_dispatcher.app import Dispatcher
from baton_dispatcher.edges import REPORTS_ACK_WAIT_S, REPORTS_DURABLE
from baton_platform.settings import Settings
from tests.conftest import eventually, service_settings
from tests.integration.test_dispatcher import report, submit, types_of

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path) -> Settings:
    return service_settings(nats_server, tmp_path)


async def test_a_report_a_killed_dispatcher_held_comes_back_first_and_at_once(
    settings: Settings, nats_server: Server, nc: Client
) -> None:
    js = nc.jetstream()
    first = Dispatcher(settings)
    await first.start()
    reply = await submit(nc)
    assert reply.execution is not None
    execution_id = reply.execution.id
    await eventually(lambda: _has(js, execution_id, "Dispatched"), what="relayed")
    await first.stop()

    # The instance that dies holding STARTED.
    info = await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)
    doomed = await nats.connect(nats_server.url)
    held: asyncio.Queue[Msg] = asyncio.Queue()
    await doomed.subscribe(info.config.deliver_subject or "", queue=REPORTS_DURABLE, cb=held.put)
    await doomed.flush()
    await report(js, execution_id, status="STARTED", report_id="started")
    taken = await asyncio.wait_for(held.get(), 5)
    assert b'"started"' in taken.data
    await doomed.close()  # never acknowledged it
    await report(js, execution_id, status="SUCCEEDED", report_id="succeeded")

    second = Dispatcher(settings)
    await second.start()
    try:
        expected = ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"]

        async def in_order() -> list[str] | None:
            found = await types_of(js, execution_id)
            return found if found == expected else None

        # Well inside the ack wait the old consumer had (30 s), and inside this one's too:
        # the held report comes back at the restart, not when its ack wait runs out.
        await eventually(in_order, timeout=REPORTS_ACK_WAIT_S - 1, what="both answers, in order")
        info = await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)
        assert info.config.max_ack_pending == 1
    finally:
        await second.stop()


async def _has(js: nats.js.JetStreamContext, execution_id: object, kind: str) -> bool:
    return kind in await types_of(js, execution_id)  # type: ignore[arg-type]


async def test_a_reports_consumer_made_by_an_older_version_gets_the_new_limits(
    settings: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    await js.add_consumer(
        REPORTS_STREAM,
        durable_name=REPORTS_DURABLE,
        deliver_group=REPORTS_DURABLE,
        deliver_subject=nc.new_inbox(),
        ack_wait=30.0,
        max_ack_pending=1000,
    )
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    try:
        info = await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)
        assert (info.config.max_ack_pending, info.config.ack_wait) == (1, REPORTS_ACK_WAIT_S)
    finally:
        await dispatcher.stop()
