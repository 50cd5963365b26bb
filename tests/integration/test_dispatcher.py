"""The dispatcher in-process against a real nats-server and a real SQLite event store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from baton_cli.localstack import Server
from baton_contracts.nats import (
    CANCEL_SUBJECT,
    DEAD_LETTERS_STREAM,
    DEADLINE_SUBJECT,
    EVENTS_STREAM,
    REJECTIONS_SUBJECT,
    SUBMIT_SUBJECT,
    CancelCommand,
    DeadlineDue,
    DeadlineReply,
    DeviceReport,
    ExecutionReply,
    LifecycleEvent,
    ReportRejected,
    SubmitCommand,
    report_subject,
)
from baton_dispatcher.app import Dispatcher
from baton_domain import execution as execution_module
from baton_domain.catalog_document import CATALOG_ID
from baton_domain.delivery import queue_id
from baton_platform.settings import Settings
from tests.conftest import eventually, service_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path) -> Settings:
    return service_settings(nats_server, tmp_path)


@pytest.fixture
async def dispatcher(settings: Settings) -> AsyncIterator[Dispatcher]:
    service = Dispatcher(settings)
    await service.start()
    yield service
    await service.stop()


async def submit(nc: Client, **fields: object) -> ExecutionReply:
    command = SubmitCommand.model_validate(
        {"device_id": "demo-thermostat-1", "name": "reboot", **fields}
    )
    msg = await nc.request(SUBMIT_SUBJECT, command.model_dump_json().encode(), timeout=5)
    return ExecutionReply.model_validate_json(msg.data)


async def stream_events(js: JetStreamContext) -> list[LifecycleEvent]:
    info = await js.stream_info(EVENTS_STREAM)
    events: list[LifecycleEvent] = []
    if info.state.messages == 0:
        return events
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq=seq)
        assert msg.data is not None
        events.append(LifecycleEvent.model_validate_json(msg.data))
    return events


async def report(
    js: JetStreamContext,
    execution_id: UUID,
    kind: str = "answer",
    status: str | None = None,
    device: str = "demo-thermostat-1",
    report_id: str | None = None,
    payload: dict[str, object] | None = None,
) -> None:
    body = DeviceReport(
        kind=kind,
        report_id=report_id or f"r-{uuid4()}",
        device_id=device,
        execution_id=execution_id,
        status=status,
        payload=payload or {},
        received_at=datetime.now(UTC),
    )
    await js.publish(
        report_subject(device),
        body.model_dump_json().encode(),
        headers={"Nats-Msg-Id": body.report_id},
    )


async def refused_reports(nc: Client) -> asyncio.Queue[ReportRejected]:
    """Every report the dispatcher refuses from now on, as it says on REJECTIONS_SUBJECT."""
    rejections: asyncio.Queue[ReportRejected] = asyncio.Queue()

    async def on_rejection(msg: Msg) -> None:
        await rejections.put(ReportRejected.model_validate_json(msg.data))

    await nc.subscribe(REJECTIONS_SUBJECT, cb=on_rejection)
    return rejections


async def types_of(js: JetStreamContext, execution_id: UUID) -> list[str]:
    return [e.type for e in await stream_events(js) if e.execution_id == execution_id]


async def test_submit_relays_events_and_applies_reports(dispatcher: Dispatcher, nc: Client) -> None:
    js = nc.jetstream()
    reply = await submit(nc, name="set_temperature", params={"value": 22})
    assert reply.problem is None and reply.execution is not None and reply.created
    execution_id = reply.execution.id
    assert reply.execution.status == "PENDING"

    async def relayed(*expected: str) -> bool:
        return await types_of(js, execution_id) == list(expected)

    await eventually(lambda: relayed("Requested", "Dispatched"), what="relay")
    await report(js, execution_id, kind="published")
    await report(js, execution_id, status="STARTED")
    await report(js, execution_id, status="SUCCEEDED", payload={"current_temperature": 22})
    await eventually(
        lambda: relayed("Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"),
        what="answers applied",
    )
    events = await stream_events(js)
    assert [e.notification_id for e in events] == sorted(e.notification_id for e in events)
    mine = [e for e in events if e.execution_id == execution_id]
    assert mine[-1].data["answer"]["payload"] == {"current_temperature": 22}
    # The device's queue let go of it in the same transaction (its own stream).
    assert "Finished" in [e.type for e in events if e.execution_id != execution_id]


async def test_bad_submissions_are_problems(dispatcher: Dispatcher, nc: Client) -> None:
    unknown = await submit(nc, device_id="ghost")
    assert unknown.problem is not None and unknown.problem.status == 404
    invalid = await submit(nc, name="set_temperature", params={"value": "hot"})
    assert invalid.problem is not None and invalid.problem.status == 422
    assert [e.field for e in invalid.problem.errors] == ["params.value"]
    garbage = await nc.request(SUBMIT_SUBJECT, b"{not json", timeout=5)
    problem = ExecutionReply.model_validate_json(garbage.data).problem
    assert problem is not None and problem.status == 422
    # Nothing was stored for any of them: once the relay has published everything the store
    # holds, the stream has only the catalog's first event. (Read before that, it was once
    # empty in CI: the relay had not yet published the catalog seeded at the start.)
    await eventually(lambda: relayed_all(dispatcher), what="the relay caught up with the store")
    events = await stream_events(nc.jetstream())
    assert [e.type for e in events] == ["Started"]


async def relayed_all(dispatcher: Dispatcher) -> bool:
    relay = dispatcher._relay
    assert relay is not None
    stored = await asyncio.to_thread(relay._executions.recorder.max_notification_id)
    return relay.position == stored


async def test_cancel_and_deadline(dispatcher: Dispatcher, nc: Client) -> None:
    reply = await submit(nc, ttl=60)
    assert reply.execution is not None
    execution_id = reply.execution.id
    msg = await nc.request(
        CANCEL_SUBJECT,
        CancelCommand(execution_id=execution_id).model_dump_json().encode(),
        timeout=5,
    )
    canceled = ExecutionReply.model_validate_json(msg.data)
    assert canceled.execution is not None and canceled.execution.status == "CANCELED"
    again = ExecutionReply.model_validate_json(
        (
            await nc.request(
                CANCEL_SUBJECT,
                CancelCommand(execution_id=execution_id).model_dump_json().encode(),
                timeout=5,
            )
        ).data
    )
    assert again.problem is not None and again.problem.status == 409

    early = await submit(nc, ttl=60)
    assert early.execution is not None
    due = DeadlineDue(execution_id=early.execution.id).model_dump_json().encode()
    assert (
        DeadlineReply.model_validate_json(
            (await nc.request(DEADLINE_SUBJECT, due, timeout=5)).data
        ).outcome
        == "not-yet"
    )
    ended = DeadlineDue(execution_id=execution_id).model_dump_json().encode()
    assert (
        DeadlineReply.model_validate_json(
            (await nc.request(DEADLINE_SUBJECT, ended, timeout=5)).data
        ).outcome
        == "ignored"
    )
    ghost = DeadlineDue(execution_id=uuid4()).model_dump_json().encode()
    assert (
        DeadlineReply.model_validate_json(
            (await nc.request(DEADLINE_SUBJECT, ghost, timeout=5)).data
        ).outcome
        == "unknown"
    )


async def test_deadline_expires_a_pending_execution(dispatcher: Dispatcher, nc: Client) -> None:
    reply = await submit(nc, ttl=1)
    assert reply.execution is not None
    execution_id = reply.execution.id
    due = DeadlineDue(execution_id=execution_id).model_dump_json().encode()

    async def applied() -> bool:
        answer = await nc.request(DEADLINE_SUBJECT, due, timeout=5)
        return DeadlineReply.model_validate_json(answer.data).outcome == "applied"

    await eventually(applied, timeout=5, interval=0.2, what="deadline applied")
    await eventually(lambda: _has(nc.jetstream(), execution_id, "Expired"), what="Expired relayed")


async def _has(js: JetStreamContext, execution_id: UUID, event_type: str) -> bool:
    return event_type in await types_of(js, execution_id)


async def test_reports_from_another_device_or_for_unknown_executions_are_dropped(
    dispatcher: Dispatcher,
    nc: Client,
) -> None:
    js = nc.jetstream()
    rejections = await refused_reports(nc)
    reply = await submit(nc)
    assert reply.execution is not None
    execution_id = reply.execution.id
    await report(js, execution_id, status="SUCCEEDED", device="demo-thermostat-2")
    assert (await asyncio.wait_for(rejections.get(), 5)).reason == "wrong-device"
    await report(js, uuid4(), status="SUCCEEDED")
    assert (await asyncio.wait_for(rejections.get(), 5)).reason == "unknown-execution"
    assert "Succeeded" not in await types_of(js, execution_id)


async def test_answers_past_a_full_log_are_refused_and_the_ending_one_recorded(
    dispatcher: Dispatcher, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution_module, "MAX_LOG_ENTRIES", 2)
    js = nc.jetstream()
    rejections = await refused_reports(nc)
    reply = await submit(nc)
    assert reply.execution is not None
    execution_id = reply.execution.id
    for n in range(3):
        await report(js, execution_id, status="IN_PROGRESS", report_id=f"progress-{n}")
    refused = await asyncio.wait_for(rejections.get(), 5)
    assert (refused.reason, refused.report.report_id) == ("answer-log-full", "progress-2")
    await report(js, execution_id, status="SUCCEEDED", report_id="done")
    await eventually(lambda: _has(js, execution_id, "Succeeded"), what="the ending answer")
    assert (await types_of(js, execution_id)).count("Progressed") == 2  # not progress-2
    assert rejections.empty()


async def test_malformed_reports_are_dead_lettered(dispatcher: Dispatcher, nc: Client) -> None:
    js = nc.jetstream()
    await js.publish(report_subject("demo-thermostat-1"), b'{"kind": "nonsense"}')

    async def dead_lettered() -> bool:
        return (await js.stream_info(DEAD_LETTERS_STREAM)).state.messages == 1

    await eventually(dead_lettered, what="dead letter")
    # The dispatcher carries on.
    reply = await submit(nc)
    assert reply.execution is not None


async def test_relay_resumes_after_restart_without_duplicates(
    settings: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    first = Dispatcher(settings)
    await first.start()
    ids = [(await submit(nc)).execution.id for _ in range(3)]  # type: ignore[union-attr]
    # The catalog's Started; per execution: Requested, Dispatched, and its device queue's
    # Admitted; the queue's Opened once.
    await eventually(lambda: _count(js, 11), what="11 events relayed")
    await first.stop()
    second = Dispatcher(settings)
    await second.start()
    try:
        more = (await submit(nc)).execution
        assert more is not None
        await eventually(lambda: _count(js, 14), what="14 events relayed")
        events = await stream_events(js)
        assert len({e.notification_id for e in events}) == len(events) == 14
        assert {e.execution_id for e in events} == {
            *ids, more.id, queue_id("demo-thermostat-1"), CATALOG_ID,
        }  # fmt: skip
    finally:
        await second.stop()


async def _count(js: JetStreamContext, n: int) -> bool:
    return (await js.stream_info(EVENTS_STREAM)).state.messages == n
