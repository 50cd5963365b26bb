"""The device-bridge's pure translations: events to MQTT messages, answers to reports."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from baton_contracts.mqtt import CancelRequest, CommandRequest, response_topic
from baton_contracts.nats import LifecycleEvent
from baton_device_bridge.answers import MalformedAnswerError, answer_report_id, decode_answer
from baton_device_bridge.commands import (
    Late,
    MalformedEventError,
    Outgoing,
    Skipped,
    decode,
    plan,
    published_report,
    remaining_ttl,
)
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
DEVICE = "demo-thermostat-1"
WIRING = Wiring(Catalog.from_yaml(Path(__file__).parents[2] / "deploy/catalog/demo.yaml"))


def event(type_: str, data: dict[str, Any]) -> LifecycleEvent:
    return LifecycleEvent(
        notification_id=1,
        execution_id=uuid4(),
        version=2,
        type=type_,
        occurred_at=NOW,
        data=data,
    )


def dispatched(deadline: datetime, device_id: str = DEVICE) -> LifecycleEvent:
    return event(
        "Dispatched",
        {
            "device_id": device_id,
            "device_type": "thermostat",
            "name": "set_temperature",
            "params": {"value": 22},
            "deadline": deadline.isoformat(),
        },
    )


# --- commands out ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "expected"),
    [(30.0, 30), (0.2, 1), (1.5, 2), (0.0, None), (-3.0, None)],
)
def test_remaining_ttl_rounds_up_and_is_none_once_passed(left: float, expected: int | None) -> None:
    assert remaining_ttl(NOW + timedelta(seconds=left), NOW) == expected


def test_a_dispatched_becomes_a_request_on_the_device_topic() -> None:
    deadline = NOW + timedelta(seconds=29.5)
    ev = dispatched(deadline)
    out = plan(ev, NOW, WIRING)
    assert isinstance(out, Outgoing)
    assert out.topic == f"baton/v1/devices/{DEVICE}/executions/{ev.execution_id}/request"
    assert out.expiry == 30
    assert out.report_published
    assert CommandRequest.model_validate_json(out.payload) == CommandRequest(
        execution_id=ev.execution_id,
        name="set_temperature",
        params={"value": 22},
        deadline=deadline,
    )
    report = published_report(out.device_id, out.execution_id, NOW)
    assert report.kind == "published"
    assert report.report_id == f"published:{ev.execution_id}"
    assert (report.device_id, report.execution_id) == (DEVICE, ev.execution_id)


def test_a_dispatched_past_its_deadline_is_late_not_sent() -> None:
    deadline = NOW - timedelta(seconds=1)
    event = dispatched(deadline)
    assert plan(event, NOW, WIRING) == Late(DEVICE, event.execution_id, deadline)


def test_a_cancel_reaches_the_device_only_when_it_was_told_about_the_command() -> None:
    told = event("Canceled", {"reason": "operator", "device_id": DEVICE, "notify_device": True})
    out = plan(told, NOW, WIRING)
    assert isinstance(out, Outgoing)
    assert out.topic.endswith(f"/{told.execution_id}/cancel")
    assert out.expiry is None and not out.report_published
    assert CancelRequest.model_validate_json(out.payload).reason == "operator"
    quiet = event("Canceled", {"reason": "early", "device_id": DEVICE, "notify_device": False})
    assert isinstance(plan(quiet, NOW, WIRING), Skipped)


def test_other_events_are_skipped_quietly() -> None:
    skipped = plan(event("Succeeded", {"answer": {}}), NOW, WIRING)
    assert isinstance(skipped, Skipped) and not skipped.notable


@pytest.mark.parametrize(
    "data",
    [
        {"device_id": DEVICE, "name": "x", "params": {}},  # no deadline
        {"device_id": "a/+/b", "name": "x", "params": {}, "deadline": NOW.isoformat()},
        {"device_id": DEVICE, "name": "x", "params": [], "deadline": NOW.isoformat()},
    ],
)
def test_a_dispatched_with_bad_data_is_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(MalformedEventError):
        plan(event("Dispatched", data), NOW, WIRING)


def test_bytes_that_are_no_lifecycle_event_are_malformed() -> None:
    with pytest.raises(MalformedEventError):
        decode(b"{not json")
    with pytest.raises(MalformedEventError):
        decode(b'{"type": "Dispatched"}')


# --- answers in ------------------------------------------------------------------------------


def test_the_report_id_is_the_answer_id_or_a_digest_of_the_bytes() -> None:
    execution_id = uuid4()
    raw = b'{"status": "STARTED"}'
    assert answer_report_id(execution_id, "a-7", raw) == f"answer:{execution_id}:a-7"
    digest = hashlib.sha256(raw).hexdigest()[:32]
    assert answer_report_id(execution_id, None, raw) == f"answer:{execution_id}:{digest}"


def test_an_answer_takes_its_device_from_the_topic() -> None:
    execution_id = uuid4()
    raw = json.dumps(
        {"status": "SUCCEEDED", "payload": {"t": 22}, "device_id": "intruder", "answer_id": "x"}
    ).encode()
    report = decode_answer(response_topic(DEVICE, execution_id), raw, NOW, WIRING, lambda _: None)
    assert report.kind == "answer"
    assert report.device_id == DEVICE
    assert report.execution_id == execution_id
    assert report.status == "SUCCEEDED"
    assert report.payload == {"t": 22}
    assert report.report_id == f"answer:{execution_id}:x"
    assert report.received_at == NOW


# A fixed id: pytest-xdist's workers must collect the same test ids.
ANY_EXECUTION = UUID("5b0c1a52-3f5e-4a4b-9d5e-2f0c9a7e6d11")


@pytest.mark.parametrize(
    ("topic", "raw", "reason"),
    [
        (response_topic(DEVICE, "not-a-uuid"), b'{"status": "STARTED"}', "malformed-topic"),
        (response_topic("-bad", ANY_EXECUTION), b'{"status": "STARTED"}', "malformed-topic"),
        (response_topic("has space", ANY_EXECUTION), b'{"status": "STARTED"}', "malformed-topic"),
        (f"baton/v1/devices/{DEVICE}/executions/{ANY_EXECUTION}/request", b"{}", "malformed-topic"),
        ("somewhere/else", b'{"status": "STARTED"}', "malformed-topic"),
        (response_topic(DEVICE, ANY_EXECUTION), b"{not json", "malformed-answer"),
        (response_topic(DEVICE, ANY_EXECUTION), b'{"status": "EXPLODED"}', "malformed-answer"),
        (
            response_topic(DEVICE, ANY_EXECUTION),
            b'{"status": "STARTED", "payload": 3}',
            "malformed-answer",
        ),
        (
            response_topic(DEVICE, ANY_EXECUTION),
            b'{"status": "STARTED", "answer_id": ""}',
            "malformed-answer",
        ),
        (response_topic(DEVICE, ANY_EXECUTION), b"\xff\xfe", "malformed-answer"),
    ],
)
def test_unreadable_answers_are_malformed(topic: str, raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedAnswerError) as caught:
        decode_answer(topic, raw, NOW, WIRING, lambda _: None)
    assert caught.value.reason == reason
