"""Reports across a dispatcher crash: applied in stream order, at once (issue 6, defect 14).

A dispatcher killed while it held a device's STARTED report (delivered, never acknowledged)
used to leave it to come back only after the consumer's 30 s ack wait, while its successor
went on with the newer reports: the execution ended SUCCEEDED with a log of ['SUCCEEDED'],
and STARTED turned up 30 s later, after it. The killed instance is played here by a bare
subscriber of the consumer's delivery subject that takes the report and disconnects.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy

from baton_cli.localstack import Server
from baton_contracts.nats import (
    LEGACY_REPORTS,
    REPORTS_STREAM,
    WATERMARKS_STREAM,
    BridgeWatermark,
    DeadlineDue,
    DeviceReport,
    partition_of,
    partition_reports,
    report_subject,
    watermark_subject,
)
from baton_dispatcher.app import Dispatcher
from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.reports import (
    REPORTS_ACK_WAIT_S,
    REPORTS_BATCH,
)
from baton_dispatcher.writer import Writer
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_platform.nats_access import OPS, REPORTS_DURABLE, reports_durable
from baton_platform.settings import Settings
from tests.conftest import DEMO, eventually, service_settings
from tests.integration.test_dispatcher import report, submit, types_of

pytestmark = pytest.mark.integration

# The consumer of demo-thermostat-1's reports (`submit`'s device): its partition's.
DURABLE = reports_durable(partition_of("demo-thermostat-1"))


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
    info = await js.consumer_info(REPORTS_STREAM, DURABLE)
    doomed = await nats.connect(nats_server.url_as(OPS))
    held: asyncio.Queue[Msg] = asyncio.Queue()
    await doomed.subscribe(info.config.deliver_subject or "", queue=DURABLE, cb=held.put)
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
        info = await js.consumer_info(REPORTS_STREAM, DURABLE)
        assert info.config.max_ack_pending == REPORTS_BATCH
    finally:
        await second.stop()


async def _has(js: nats.js.JetStreamContext, execution_id: object, kind: str) -> bool:
    return kind in await types_of(js, execution_id)  # type: ignore[arg-type]


async def test_a_reports_consumer_made_by_a_release_without_partitions_is_narrowed_and_kept(
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
        # It takes only the old subjects now (its filter would overlap every partition's
        # on a work-queue stream), with today's limits once the holder of partition 0 runs
        # it (its consumers start in the background).
        info = await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)
        assert info.config.filter_subjects == [LEGACY_REPORTS]

        async def todays_limits() -> bool:
            config = (await js.consumer_info(REPORTS_STREAM, REPORTS_DURABLE)).config
            return (config.max_ack_pending, config.ack_wait) == (REPORTS_BATCH, REPORTS_ACK_WAIT_S)

        await eventually(todays_limits, timeout=10, what="today's limits")
    finally:
        await dispatcher.stop()


async def test_a_deadline_waits_for_the_device_reports_still_in_the_stream(nc: Client) -> None:
    """Issue 7's 247 wrong statuses: a dispatcher killed while it held the device's SUCCEEDED
    (delivered, never acknowledged) left it in BATON_REPORTS while the deadline, decided from
    the store alone, fired first: TIMED_OUT for a command the device carried out. A deadline
    now waits while a report of the execution's device is stored and not yet applied (the
    stream has work-queue retention: applied reports leave it); other devices' do not hold it.
    """
    js = nc.jetstream()
    now = [datetime.now(UTC)]
    executions = Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )
    writer = Writer(executions, on_stored=lambda: None, backlog=ReportsBacklog(js, max_hold=60.0))
    try:
        requested = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=1))
        execution_id = requested.execution.id
        other = executions.request(RequestCommand("demo-thermostat-2", "reboot", {}, ttl=1))
        await report(js, execution_id, status="SUCCEEDED", report_id="in-time")
        await report(js, other.execution.id, device="demo-thermostat-2", status="STARTED")
        now[0] += timedelta(seconds=2)  # both deadlines have passed

        due = DeadlineDue(execution_id=execution_id)
        assert (await writer.deadline(due)).outcome == "reports-pending"
        assert not executions.get(execution_id).is_terminal

        # Each device's deadlines wait for its own reports only: thermostat-2's is applied once
        # its report is gone, while thermostat-1's still waits in the stream.
        assert (await writer.deadline(DeadlineDue(execution_id=other.execution.id))).outcome == (
            "reports-pending"
        )
        await js.purge_stream(REPORTS_STREAM, subject=report_subject("demo-thermostat-2"))
        assert (await writer.deadline(DeadlineDue(execution_id=other.execution.id))).outcome == (
            "applied"
        )

        # The held answer is applied (and so leaves the stream): the deadline changes nothing.
        stored = await js.get_msg(
            REPORTS_STREAM, seq=1, subject=report_subject("demo-thermostat-1"), next=True
        )
        assert stored.data is not None
        assert (await writer.apply_report(DeviceReport.model_validate_json(stored.data))).applied
        await js.purge_stream(REPORTS_STREAM, subject=report_subject("demo-thermostat-1"))
        assert (await writer.deadline(due)).outcome == "ignored"
        assert executions.get(execution_id).status.value == "SUCCEEDED"
    finally:
        writer.close()


async def test_only_reports_received_before_the_deadline_hold_it(nc: Client) -> None:
    """A device's unapplied reports hold its deadlines only if the bridge received them
    before the deadline: a reconnect's presence or an answer that came after it must not
    carry the deadline past its time (chaos runs saw deadlines 0.3-38 s late), nor let an
    answer the device sent too late win over it."""
    js = nc.jetstream()
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    backlog = ReportsBacklog(js, max_hold=60.0)
    requested = executions.request(RequestCommand("demo-thermostat-3", "reboot", {}, ttl=1))
    deadline = requested.execution.deadline
    device = "demo-thermostat-3"

    async def store(received_at: datetime, report_id: str) -> None:
        await store_answer(js, requested.execution.id, device, report_id, received_at)

    await store(deadline + timedelta(seconds=1), "late")
    assert not await backlog.holds(device, deadline)
    # One from before the deadline behind it in the stream does hold it.
    await store(deadline - timedelta(milliseconds=1), "in-time")
    assert await backlog.holds(device, deadline)
    # What holds it is said (logged when a deadline is held long): that report, where it is.
    held_by = await backlog.held_by(device, deadline)
    assert held_by is not None and held_by.startswith("a report taken from ")
    assert f"({REPORTS_STREAM} seq " in held_by


async def store_answer(
    js: JetStreamContext,
    execution_id: UUID,
    device: str,
    report_id: str,
    received_at: datetime,
    taken_after: datetime | None = None,
) -> None:
    body = DeviceReport(
        kind="answer",
        report_id=report_id,
        device_id=device,
        execution_id=execution_id,
        status="SUCCEEDED",
        received_at=received_at,
        taken_after=taken_after,
    )
    await js.publish(
        report_subject(device), body.model_dump_json().encode(), headers={"Nats-Msg-Id": report_id}
    )


async def test_an_answer_read_after_the_deadline_but_taken_before_it_holds_it(
    nc: Client,
) -> None:
    """Between broker and bridge an answer can wait (a loaded machine): a chaos run recorded
    TIMED_OUT for an answer the device sent 0.1 s before the deadline, which the bridge read
    0.2 s after it. What holds a deadline is when the broker may have taken the report: after
    `taken_after` (the bridge's watermark when it arrived), not when the bridge read it."""
    js = nc.jetstream()
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    backlog = ReportsBacklog(js, max_hold=60.0)
    requested = executions.request(RequestCommand("demo-thermostat-4", "reboot", {}, ttl=1))
    execution_id, deadline = requested.execution.id, requested.execution.deadline
    late = deadline + timedelta(seconds=0.2)
    after = deadline + timedelta(seconds=0.1)
    await store_answer(js, execution_id, "demo-thermostat-4", "taken-late", late, after)
    assert not await backlog.holds("demo-thermostat-4", deadline)  # taken after the deadline
    before = deadline - timedelta(seconds=0.3)
    await store_answer(js, execution_id, "demo-thermostat-4", "read-late", late, before)
    assert await backlog.holds("demo-thermostat-4", deadline)


async def test_a_report_read_long_after_its_watermark_does_not_hold_past_the_max_hold(
    nc: Client,
) -> None:
    """A bridge whose watermark stands still (not written: its stream unavailable, a round
    that never completes, a request held) while it goes on reading stamps every report with
    that old watermark as `taken_after`. The watermark check gives up on the bridge after
    `BATON_DEADLINE_MAX_HOLD`; the reports must not then hold its devices' deadlines on their
    own, for ever for a device that keeps reporting. A report read `max_hold` or more after
    its watermark came from a bridge deadlines had given up on: its read time decides."""
    js = nc.jetstream()
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    backlog = ReportsBacklog(js, max_hold=60.0)
    device = "demo-thermostat-5"
    requested = executions.request(RequestCommand(device, "reboot", {}, ttl=1))
    execution_id, deadline = requested.execution.id, requested.execution.deadline
    stale = deadline - timedelta(seconds=120)  # the bridge's watermark, long past the max hold
    mark = BridgeWatermark(bridge="stuck", drained_to=stale)
    await js.publish(
        watermark_subject("stuck"), mark.model_dump_json().encode(), stream=WATERMARKS_STREAM
    )
    assert not await backlog.watermarks.hold(deadline)  # given up on
    # The device reports on, read after the deadline: each stamped with the stale watermark.
    for n in range(3):
        read = deadline + timedelta(seconds=1 + n)
        await store_answer(js, execution_id, device, f"live-{n}", read, stale)
        assert not await backlog.holds(device, deadline)
    # Read within the max hold of its watermark, a report still holds a deadline after it:
    # the bridge came back in time.
    other = "demo-thermostat-2"
    requested = executions.request(RequestCommand(other, "reboot", {}, ttl=1))
    deadline = requested.execution.deadline
    back = deadline - timedelta(seconds=10)
    await store_answer(
        js, requested.execution.id, other, "back", deadline + timedelta(seconds=30), back
    )
    assert await backlog.holds(other, deadline)


async def test_a_report_acknowledged_but_still_stored_holds_no_deadline(nc: Client) -> None:
    """A chaos run left an answer in BATON_REPORTS that had been applied and acknowledged:
    the stream lost its removal over a nats-server restart, the consumer's ack floor went on
    past it, and every later deadline of its device was held for ever. The same shape here:
    the stream made to keep what is acknowledged (limits, not work-queue, retention), the
    report taken and acknowledged by its partition's consumer, and so stored behind its
    floor."""
    js = nc.jetstream()
    info = await js.stream_info(REPORTS_STREAM)
    await js.delete_stream(REPORTS_STREAM)
    await js.add_stream(info.config.evolve(retention=RetentionPolicy.LIMITS))
    device = "demo-thermostat-5"
    deadline = datetime.now(UTC)
    execution = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    ).request(RequestCommand(device, "reboot", {}, ttl=1))
    await store_answer(
        js, execution.execution.id, device, "applied", deadline - timedelta(seconds=1)
    )
    backlog = ReportsBacklog(js, max_hold=60.0)
    held_by = await backlog.held_by(device, deadline)  # not acknowledged yet: unapplied
    assert held_by is not None and held_by.startswith("a report taken from ")

    consumer = await js.pull_subscribe(
        partition_reports(partition_of(device)),
        durable=reports_durable(partition_of(device)),
        stream=REPORTS_STREAM,
    )
    [taken] = await consumer.fetch(1, timeout=5)
    await taken.ack_sync()
    assert (await js.stream_info(REPORTS_STREAM)).state.messages == 1  # still stored
    assert await backlog.held_by(device, deadline) is None
