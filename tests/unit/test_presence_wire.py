"""Presence and state on the wire without MQTT: what a device writes (the simulator's side) is
what the bridge reads, in every profile that has them; report ids are stable per message and
distinct per change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from baton_contracts.mqtt import CommandRequest
from baton_contracts.nats import PresenceReport, StateReport
from baton_contracts.profiles import MalformedWireError, codec_for
from baton_contracts.profiles.presence import DeviceTopic
from baton_device_bridge.answers import MalformedAnswerError, decode_message
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog
from baton_simulator.behaviours import CHARGER, STUBBORN_CHARGER, plan

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, 0, 250_000, tzinfo=UTC)
POLICIES = Wiring(Catalog.from_yaml(ROOT / "deploy/catalog/policies.yaml"))
PROFILES = Wiring(Catalog.from_yaml(ROOT / "deploy/catalog/profiles.yaml"))
IOTEE_WITH_STATUS = {
    "topic": "iotee/dev/{hardware_id}/rls",
    "status_topic": "iotee/dev/{hardware_id}/status",
}


def _matches(topic_filter: str, topic: str) -> bool:
    want, have = topic_filter.split("/"), topic.split("/")
    return len(want) == len(have) and all(w in ("+", h) for w, h in zip(want, have, strict=True))


def decode(topic: str, raw: bytes, wiring: Wiring = POLICIES, at: datetime = NOW) -> Any:
    return decode_message(topic, raw, at, wiring, lambda _: None)


@pytest.mark.parametrize(
    ("profile", "type_wire", "topic"),
    [
        ("baton", {}, "baton/v1/devices/T1/status"),
        ("emqx-fleets", {}, "$emqx/commands/things/T1/status"),
        ("aws-iot-commands", {}, "$aws/commands/things/T1/status"),
        ("raw-mapped", IOTEE_WITH_STATUS, "iotee/dev/T1/status"),
    ],
)
@pytest.mark.parametrize("online", [True, False])
def test_a_status_written_by_a_device_is_read_by_the_bridge(
    profile: str, type_wire: dict[str, Any], topic: str, online: bool
) -> None:
    codec = codec_for(profile)
    message = codec.encode_status("T1", online, "c-7", type_wire)
    assert message is not None and message.topic == topic
    assert any(_matches(f, topic) for f in codec.status_filters(type_wire))
    said = codec.decode_status(message.topic, message.payload, type_wire)
    assert said is not None
    assert (said.wire_id, said.online, said.connection) == ("T1", online, "c-7")


def test_raw_mapped_without_a_status_topic_has_no_presence() -> None:
    codec = codec_for("raw-mapped")
    wire = {"topic": "iotee/dev/{hardware_id}/rls"}
    assert codec.status_filters(wire) == []
    assert codec.encode_status("T1", True, "c", wire) is None
    assert codec.decode_status("iotee/dev/T1/status", b"online", wire) is None


def test_only_baton_has_a_state_topic() -> None:
    message = codec_for("baton").encode_state("T1", {"charging": True}, {})
    assert message is not None and message.topic == "baton/v1/devices/T1/state"
    said = codec_for("baton").decode_state(message.topic, message.payload, {})
    assert said is not None and said.state == {"charging": True}
    for profile in ("emqx-fleets", "aws-iot-commands"):
        assert codec_for(profile).state_filters({}) == []
        assert codec_for(profile).encode_state("T1", {}, {}) is None


@pytest.mark.parametrize(
    "raw", [b"maybe", b'{"online": "yes"}', b'{"connection": "c"}', b"[true]", b"x" * 2000]
)
def test_a_bad_status_body_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedWireError) as caught:
        codec_for("baton").decode_status("baton/v1/devices/T1/status", raw, {})
    assert caught.value.reason == "malformed-presence"


@pytest.mark.parametrize("raw", [b"[1]", b"{bad", b'"text"', b"\xff"])
def test_a_bad_state_body_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedWireError) as caught:
        codec_for("baton").decode_state("baton/v1/devices/T1/state", raw, {})
    assert caught.value.reason == "malformed-state"


def test_a_device_topic_template_is_checked() -> None:
    for bad in ("a/b", "a/{wire_id}/{wire_id}", "a/+/{wire_id}", "a/x{wire_id}"):
        with pytest.raises(ValueError, match=r"wire_id|wildcards"):
            DeviceTopic(bad)
    topic = DeviceTopic("a/{wire_id}/status")
    assert topic.wire_id("a/T-1/status") == "T-1"
    assert topic.wire_id("a/T 1/status") is None
    assert topic.wire_id("a/T1/state") is None


# --- the bridge's reports ---------------------------------------------------------------------


def test_the_bridge_subscribes_to_status_and_state_of_every_profile_in_use() -> None:
    assert set(POLICIES.device_filters()) == {
        "baton/v1/devices/+/executions/+/response",
        "baton/v1/devices/+/status",
        "baton/v1/devices/+/state",
    }
    assert {
        "$emqx/commands/things/+/status",
        "$aws/commands/things/+/status",
    } <= set(PROFILES.device_filters())


def test_a_status_becomes_a_presence_report_whose_id_is_stable_per_message() -> None:
    topic = "baton/v1/devices/charger-1/status"
    online = decode(topic, b'{"online": true, "connection": "1"}')
    again = decode(topic, b'{"online": true, "connection": "1"}', at=NOW + timedelta(seconds=3))
    offline = decode(topic, b'{"online": false, "connection": "1"}')
    online_2 = decode(topic, b'{"online": true, "connection": "2"}')
    assert isinstance(online, PresenceReport) and online.online is True
    assert online.device_id == "charger-1" and online.received_at == NOW
    assert online.report_id == again.report_id  # a QoS 1 repeat: stored once
    assert len({online.report_id, offline.report_id, online_2.report_id}) == 3


def test_a_bare_word_status_gets_a_new_id_each_time_it_is_received() -> None:
    topic = "baton/v1/devices/charger-1/status"
    first = decode(topic, b"offline")
    later = decode(topic, b"offline", at=NOW + timedelta(milliseconds=1))
    assert isinstance(first, PresenceReport) and first.online is False
    assert first.report_id != later.report_id


def test_the_wire_id_of_a_status_maps_back_to_the_device_id() -> None:
    report = decode("$emqx/commands/things/FLEETS-T1/status", b"online", PROFILES)
    assert isinstance(report, PresenceReport) and report.device_id == "fleets-thermo-1"


def test_a_state_becomes_a_state_report_each_time() -> None:
    topic = "baton/v1/devices/charger-2/state"
    first = decode(topic, b'{"charging": true}')
    later = decode(topic, b'{"charging": true}', at=NOW + timedelta(milliseconds=1))
    assert isinstance(first, StateReport)
    assert (first.device_id, first.state) == ("charger-2", {"charging": True})
    assert first.report_id != later.report_id


@pytest.mark.parametrize(
    ("topic", "raw", "reason"),
    [
        ("baton/v1/devices/nobody/status", b"online", "unknown-device"),
        ("baton/v1/devices/nobody/state", b"{}", "unknown-device"),
        ("baton/v1/devices/charger-1/status", b"perhaps", "malformed-presence"),
        ("baton/v1/devices/charger-1/state", b"[]", "malformed-state"),
        ("baton/v1/devices/charger-1/other", b"{}", "malformed-topic"),
    ],
)
def test_bad_status_and_state_messages_are_refused_with_a_reason(
    topic: str, raw: bytes, reason: str
) -> None:
    with pytest.raises(MalformedAnswerError) as caught:
        decode(topic, raw)
    assert caught.value.reason == reason


# --- the simulator's chargers -----------------------------------------------------------------


def _request(name: str) -> CommandRequest:
    return CommandRequest(
        execution_id=uuid4(), name=name, params={}, deadline=NOW + timedelta(seconds=30)
    )


def test_a_charger_answers_then_reports_the_state_it_was_asked_for() -> None:
    start = plan(CHARGER, _request("StartCharging"))
    assert [a.answer.status for a in start if a.answer] == ["STARTED", "SUCCEEDED"]
    assert [a.state for a in start if a.state is not None] == [{"charging": True}]
    stop = plan(CHARGER, _request("StopCharging"))
    assert [a.state for a in stop if a.state is not None] == [{"charging": False}]


def test_a_stubborn_charger_reports_a_state_that_does_not_match() -> None:
    start = plan(STUBBORN_CHARGER, _request("StartCharging"))
    assert [a.answer.status for a in start if a.answer] == ["STARTED", "SUCCEEDED"]
    assert [a.state for a in start if a.state is not None] == [{"charging": False}]
