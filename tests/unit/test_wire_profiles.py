"""Wire profiles without MQTT: each codec round-trips between Baton's side (the bridge) and
the device's side (the simulator), and refuses what it cannot read."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from baton_contracts.mqtt import AnswerStatusWord
from baton_contracts.nats import LifecycleEvent
from baton_contracts.profiles import (
    DeviceCancel,
    DeviceRequest,
    MalformedWireError,
    OutgoingCommand,
    ProfileSettingsError,
    codec_for,
    wire_id_of,
)
from baton_device_bridge.answers import MalformedAnswerError, decode_answer
from baton_device_bridge.commands import Outgoing, Skipped, plan
from baton_device_bridge.in_flight import InFlight
from baton_device_bridge.wiring import UnknownWireDeviceError, Wiring
from baton_domain.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, 0, 250_000, tzinfo=UTC)
CATALOG = Catalog.from_yaml(ROOT / "deploy/catalog/profiles.yaml")
WIRING = Wiring(CATALOG)
IOTEE_WIRE = CATALOG.device_types["iotee_device"].wire
IOTEE_COMMANDS = {n: s.wire for n, s in CATALOG.device_types["iotee_device"].commands.items()}


def command(
    wire_id: str = "T1",
    name: str = "set_temperature",
    params: dict[str, Any] | None = None,
    command_wire: dict[str, Any] | None = None,
    type_wire: dict[str, Any] | None = None,
) -> OutgoingCommand:
    return OutgoingCommand(
        wire_id=wire_id,
        execution_id=uuid4(),
        name=name,
        params={"value": 22} if params is None else params,
        deadline=NOW + timedelta(seconds=29.5),
        ttl=30,
        now=NOW,
        command_wire=command_wire or {},
        type_wire=type_wire or {},
    )


def device_side(profile: str, cmd: OutgoingCommand) -> DeviceRequest:
    """What the bridge sends, read as the simulator reads it."""
    codec = codec_for(profile)
    message = codec.encode_request(cmd)
    commands = IOTEE_COMMANDS if profile == "raw-mapped" else {}
    assert any(_matches(f, message.topic) for f in codec.device_filters(cmd.wire_id, cmd.type_wire))
    got = codec.decode_request(message.topic, message.payload, cmd.wire_id, cmd.type_wire, commands)
    assert isinstance(got, DeviceRequest)
    return got


def _matches(topic_filter: str, topic: str) -> bool:
    want, have = topic_filter.split("/"), topic.split("/")
    return len(want) == len(have) and all(w in ("+", h) for w, h in zip(want, have, strict=True))


def round_trip(
    profile: str, status: AnswerStatusWord, payload: dict[str, Any], type_wire: dict[str, Any]
) -> tuple[str, UUID | None, str, dict[str, Any]]:
    """A device answer, written as the simulator writes it, read as the bridge reads it."""
    codec = codec_for(profile)
    execution = str(uuid4())
    message = codec.encode_answer("T1", execution, status, payload, "a-1", type_wire)
    assert message is not None
    assert any(_matches(f, message.topic) for f in codec.answer_filters(type_wire))
    answer = codec.decode_answer(message.topic, message.payload, type_wire)
    assert answer is not None
    if answer.execution_id is not None:
        assert str(answer.execution_id) == execution
    return answer.wire_id, answer.execution_id, answer.status, answer.payload


# --- every profile ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["baton", "emqx-fleets", "aws-iot-commands"])
def test_a_request_reaches_the_device_as_sent(profile: str) -> None:
    cmd = command()
    got = device_side(profile, cmd)
    assert (got.execution_key, got.name, got.params) == (
        str(cmd.execution_id),
        "set_temperature",
        {"value": 22},
    )


@pytest.mark.parametrize("profile", ["baton", "emqx-fleets"])
@pytest.mark.parametrize("status", ["STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"])
def test_every_status_round_trips(profile: str, status: AnswerStatusWord) -> None:
    assert round_trip(profile, status, {"k": 1}, {})[2:] == (status, {"k": 1})


def test_unknown_profiles_are_refused() -> None:
    with pytest.raises(ProfileSettingsError):
        codec_for("carrier-pigeon")


def test_baton_keeps_the_catalog_id_and_the_others_the_hardware_id() -> None:
    assert wire_id_of("baton", "dev-1", "HW1") == "dev-1"
    for profile in ("emqx-fleets", "aws-iot-commands", "raw-mapped"):
        assert wire_id_of(profile, "dev-1", "HW1") == "HW1"
        assert wire_id_of(profile, "dev-1", None) == "dev-1"


# --- baton ----------------------------------------------------------------------------------


def test_baton_topics_and_bodies_are_unchanged() -> None:
    cmd = command(wire_id="demo-thermostat-1")
    message = codec_for("baton").encode_request(cmd)
    assert (
        message.topic == f"baton/v1/devices/demo-thermostat-1/executions/{cmd.execution_id}/request"
    )
    assert json.loads(message.payload) == {
        "execution_id": str(cmd.execution_id),
        "name": "set_temperature",
        "params": {"value": 22},
        "deadline": "2026-11-22T12:00:29.750000Z",
    }
    cancel = codec_for("baton").encode_cancel("d1", cmd.execution_id, "stop", {})
    assert cancel is not None and cancel.topic.endswith(f"/{cmd.execution_id}/cancel")
    got = codec_for("baton").decode_request(cancel.topic, cancel.payload, "d1", {}, {})
    assert got == DeviceCancel(str(cmd.execution_id), "stop")


# --- emqx-fleets ----------------------------------------------------------------------------


def test_fleets_request_is_seed_001s_shape() -> None:
    cmd = command(wire_id="FLEETS-T1")
    message = codec_for("emqx-fleets").encode_request(cmd)
    assert message.topic == f"$emqx/commands/things/FLEETS-T1/executions/{cmd.execution_id}/request"
    assert json.loads(message.payload) == {
        "commandId": str(cmd.execution_id),
        "action": "set_temperature",
        "params": {"value": 22},
        "timestamp": 1795348800,
        "ttl": 30,
    }
    assert codec_for("emqx-fleets").encode_cancel("T1", cmd.execution_id, "x", {}) is None
    # The device gets the deadline back from timestamp + ttl (whole seconds, one to spare).
    deadline = device_side("emqx-fleets", cmd).deadline
    assert deadline is not None and cmd.deadline <= deadline <= cmd.deadline + timedelta(seconds=2)


def test_fleets_answer_result_becomes_the_payload() -> None:
    execution = uuid4()
    topic = f"$emqx/commands/things/T1/executions/{execution}/response"
    raw = b'{"status": "SUCCEEDED", "result": {"currentTemperature": 24}}'
    answer = codec_for("emqx-fleets").decode_answer(topic, raw, {})
    assert answer is not None
    assert (answer.wire_id, answer.execution_id, answer.status, answer.payload) == (
        "T1",
        execution,
        "SUCCEEDED",
        {"currentTemperature": 24},
    )


# --- aws-iot-commands -----------------------------------------------------------------------


def test_aws_request_topic_and_body() -> None:
    cmd = command(wire_id="AWS-T1")
    message = codec_for("aws-iot-commands").encode_request(cmd)
    assert (
        message.topic == f"$aws/commands/things/AWS-T1/executions/{cmd.execution_id}/request/json"
    )
    assert json.loads(message.payload) == {"name": "set_temperature", "params": {"value": 22}}
    assert codec_for("aws-iot-commands").encode_cancel("T1", cmd.execution_id, "x", {}) is None


@pytest.mark.parametrize(
    ("body", "status", "payload"),
    [
        ({"status": "IN_PROGRESS"}, "IN_PROGRESS", {}),
        ({"status": "SUCCEEDED", "result": {"t": 24}}, "SUCCEEDED", {"t": 24}),
        (
            {
                "status": "FAILED",
                "statusReason": {"reasonCode": "SENSOR", "reasonDescription": "no sensor"},
            },
            "FAILED",
            {"code": "SENSOR", "message": "no sensor"},
        ),
        ({"status": "REJECTED"}, "REJECTED", {"code": "DEVICE_ERROR", "message": ""}),
        (
            {"status": "TIMED_OUT", "statusReason": {"reasonCode": "SLOW"}},
            "FAILED",
            {"code": "SLOW", "message": "", "device_status": "TIMED_OUT"},
        ),
    ],
)
def test_aws_statuses_map_to_batons(body: dict[str, Any], status: str, payload: Any) -> None:
    execution = uuid4()
    topic = f"$aws/commands/things/T1/executions/{execution}/response/json"
    answer = codec_for("aws-iot-commands").decode_answer(topic, json.dumps(body).encode(), {})
    assert answer is not None
    assert (answer.execution_id, answer.status, answer.payload) == (execution, status, payload)


def test_aws_device_side_round_trips() -> None:
    aws = "aws-iot-commands"
    assert round_trip(aws, "SUCCEEDED", {"t": 1}, {})[2:] == ("SUCCEEDED", {"t": 1})
    # AWS has no STARTED: a starting device says IN_PROGRESS.
    assert round_trip(aws, "STARTED", {}, {})[2:] == ("IN_PROGRESS", {})
    assert round_trip(aws, "FAILED", {"message": "broken"}, {})[2:] == (
        "FAILED",
        {"code": "DEVICE_ERROR", "message": "broken"},
    )
    assert round_trip(aws, "REJECTED", {"code": "NO", "message": "m"}, {})[2] == "REJECTED"


# --- raw-mapped -----------------------------------------------------------------------------


def test_raw_request_is_the_payload_table_on_the_fixed_topic() -> None:
    cmd = command("ABC123", "lock", {}, {"payload": "1"}, dict(IOTEE_WIRE))
    message = codec_for("raw-mapped").encode_request(cmd)
    assert (message.topic, message.payload) == ("iotee/dev/ABC123/rls", b"1")
    assert (
        codec_for("raw-mapped").encode_cancel("ABC123", cmd.execution_id, "x", IOTEE_WIRE) is None
    )


def test_raw_payload_shared_by_two_commands_runs_the_first_declared() -> None:
    cmd = command("ABC123", "reboot", {}, {"payload": "1"}, dict(IOTEE_WIRE))
    assert device_side("raw-mapped", cmd) == DeviceRequest(None, "lock", {}, None)
    unlock = command("ABC123", "unlock", {}, {"payload": "0"}, dict(IOTEE_WIRE))
    assert device_side("raw-mapped", unlock).name == "unlock"


def test_raw_answers_are_words_from_the_table() -> None:
    raw = "raw-mapped"
    wire = dict(IOTEE_WIRE)
    assert round_trip(raw, "STARTED", {}, wire) == ("T1", None, "STARTED", {"answer": "ack"})
    assert round_trip(raw, "SUCCEEDED", {"x": 1}, wire)[2:] == ("SUCCEEDED", {"answer": "done"})
    assert round_trip(raw, "FAILED", {}, wire)[2:] == ("FAILED", {"answer": "err"})
    # No word for it: the device says nothing.
    assert codec_for(raw).encode_answer("T1", None, "REJECTED", {}, None, wire) is None
    assert (
        codec_for(raw).encode_answer("T1", None, "STARTED", {}, None, {"topic": "a/{hardware_id}"})
        is None
    )


@pytest.mark.parametrize("raw", [b"exploded", b"\xff", b"x" * 300])
def test_raw_unknown_answers_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedWireError) as caught:
        codec_for("raw-mapped").decode_answer("iotee/dev/ABC123/rls/ack", raw, IOTEE_WIRE)
    assert caught.value.reason == "malformed-answer"


def test_raw_other_topics_are_not_its_answers() -> None:
    codec = codec_for("raw-mapped")
    assert codec.decode_answer("iotee/dev/ABC123/rls", b"done", IOTEE_WIRE) is None
    assert (
        codec.decode_answer("iotee/dev/ABC123/rls/ack", b"done", {"topic": "x/{hardware_id}"})
        is None
    )


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"topic": "iotee/dev/rls"},
        {"topic": "iotee/dev-{hardware_id}/rls"},
        {"topic": "iotee/+/{hardware_id}"},
        {"topic": "a/{hardware_id}", "answers": {"ok": "DONE"}},
        {"topic": "a/{hardware_id}", "surprise": 1},
    ],
)
def test_raw_settings_that_cannot_work_are_refused(wire: dict[str, Any]) -> None:
    with pytest.raises(ProfileSettingsError):
        codec_for("raw-mapped").check_settings(wire, {})


def test_a_raw_command_without_a_payload_is_refused() -> None:
    with pytest.raises(ProfileSettingsError):
        codec_for("raw-mapped").check_settings(IOTEE_WIRE, {"lock": {}})
    with pytest.raises(ProfileSettingsError):
        codec_for("raw-mapped").encode_request(command("ABC123", "x", {}, {}, dict(IOTEE_WIRE)))


def test_raw_requests_the_device_cannot_map_are_malformed() -> None:
    codec = codec_for("raw-mapped")
    with pytest.raises(MalformedWireError):
        codec.decode_request("iotee/dev/ABC123/rls", b"7", "ABC123", IOTEE_WIRE, IOTEE_COMMANDS)
    with pytest.raises(MalformedWireError):
        codec.decode_request("iotee/dev/OTHER/rls", b"1", "ABC123", IOTEE_WIRE, IOTEE_COMMANDS)


# --- malformed answers, every profile -------------------------------------------------------


EMQX = "$emqx/commands/things/T1/executions"
AWS = "$aws/commands/things/T1/executions"
FAILED = b'{"status": "FAILED"}'
BAD, TOPIC = "malformed-answer", "malformed-topic"


@pytest.mark.parametrize(
    ("profile", "topic", "raw", "reason"),
    [
        ("emqx-fleets", EMQX + "/{e}/response", b"{no", BAD),
        ("emqx-fleets", EMQX + "/{e}/response", b'{"status": "OK"}', BAD),
        ("emqx-fleets", EMQX + "/{e}/response", b'{"status": "FAILED", "result": 3}', BAD),
        ("emqx-fleets", EMQX + "/nope/response", FAILED, TOPIC),
        ("emqx-fleets", EMQX + "/{e}/request", FAILED, TOPIC),
        ("aws-iot-commands", AWS + "/{e}/response/json", b'{"status": "CREATED"}', BAD),
        ("aws-iot-commands", AWS + "/{e}/response/cbor", FAILED, TOPIC),
        ("aws-iot-commands", AWS.replace("T1", "-x") + "/{e}/response/json", FAILED, TOPIC),
        ("baton", "baton/v1/devices/d1/executions/{e}/response", b'{"status": "DONE"}', BAD),
    ],
)
def test_malformed_answers_are_refused(profile: str, topic: str, raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedWireError) as caught:
        codec_for(profile).decode_answer(topic.format(e=uuid4()), raw, {})
    assert caught.value.reason == reason


@pytest.mark.parametrize("profile", ["baton", "emqx-fleets", "aws-iot-commands"])
def test_topics_of_other_profiles_are_not_claimed(profile: str) -> None:
    assert codec_for(profile).decode_answer("iotee/dev/ABC123/rls/ack", b"done", {}) is None


# --- the bridge: the catalog's wiring -------------------------------------------------------


def dispatched(device_id: str, name: str, params: dict[str, Any] | None = None) -> LifecycleEvent:
    device = CATALOG.device(device_id)
    return LifecycleEvent(
        notification_id=1,
        execution_id=uuid4(),
        version=2,
        type="Dispatched",
        occurred_at=NOW,
        data={
            "device_id": device_id,
            "device_type": device.type,
            "name": name,
            "params": params or {},
            "deadline": (NOW + timedelta(seconds=10)).isoformat(),
        },
    )


def test_the_bridge_listens_to_every_profile_the_catalog_uses() -> None:
    assert sorted(WIRING.answer_filters()) == sorted(
        [
            "baton/v1/devices/+/executions/+/response",
            "$emqx/commands/things/+/executions/+/response",
            "$aws/commands/things/+/executions/+/response/json",
            "iotee/dev/+/rls/ack",
        ]
    )


@pytest.mark.parametrize(
    ("device_id", "topic", "remember"),
    [
        ("baton-thermo-1", "baton/v1/devices/baton-thermo-1/executions/{e}/request", False),
        ("fleets-thermo-1", "$emqx/commands/things/FLEETS-T1/executions/{e}/request", False),
        ("aws-thermo-1", "$aws/commands/things/AWS-T1/executions/{e}/request/json", False),
        ("iotee-1", "iotee/dev/ABC123/rls", True),
    ],
)
def test_a_dispatched_goes_out_in_the_profile_of_its_type(
    device_id: str, topic: str, remember: bool
) -> None:
    name = "lock" if device_id == "iotee-1" else "reboot"
    event = dispatched(device_id, name)
    out = plan(event, NOW, WIRING)
    assert isinstance(out, Outgoing)
    assert out.topic == topic.format(e=event.execution_id)
    assert out.device_id == device_id
    assert (out.expiry, out.report_published, out.remember) == (10, True, remember)


def test_a_dispatched_for_a_device_outside_the_catalog_is_skipped_and_counted() -> None:
    event = dispatched("iotee-1", "lock")
    stranger = event.model_copy(update={"data": {**event.data, "device_id": "stranger"}})
    out = plan(stranger, NOW, WIRING)
    assert isinstance(out, Skipped) and out.reason == "unknown-device"


def test_a_cancel_in_a_profile_without_one_is_skipped() -> None:
    event = LifecycleEvent(
        notification_id=2,
        execution_id=uuid4(),
        version=3,
        type="Canceled",
        occurred_at=NOW,
        data={"device_id": "fleets-thermo-1", "reason": "operator", "notify_device": True},
    )
    out = plan(event, NOW, WIRING)
    assert isinstance(out, Skipped) and out.reason is None


def test_answers_come_back_with_batons_device_id() -> None:
    execution = uuid4()
    topic = f"$emqx/commands/things/FLEETS-T1/executions/{execution}/response"
    report = decode_answer(topic, b'{"status": "SUCCEEDED"}', NOW, WIRING, lambda _: None)
    assert (report.device_id, report.execution_id, report.status) == (
        "fleets-thermo-1",
        execution,
        "SUCCEEDED",
    )


def test_an_answer_from_an_unknown_wire_id_is_dropped_as_unknown_device() -> None:
    topic = f"$aws/commands/things/NOBODY/executions/{uuid4()}/response/json"
    with pytest.raises(UnknownWireDeviceError):
        WIRING.decode_answer(topic, b'{"status": "SUCCEEDED"}')
    with pytest.raises(MalformedAnswerError) as caught:
        decode_answer(topic, b'{"status": "SUCCEEDED"}', NOW, WIRING, lambda _: None)
    assert caught.value.reason == "unknown-device"
    # Baton's own profile maps back by catalog id: a hardware id names nobody there.
    with pytest.raises(MalformedAnswerError) as caught:
        decode_answer(
            f"baton/v1/devices/FLEETS-T1/executions/{uuid4()}/response",
            b'{"status": "SUCCEEDED"}',
            NOW,
            WIRING,
            lambda _: None,
        )
    assert caught.value.reason == "unknown-device"


def test_raw_answers_go_to_the_execution_in_flight() -> None:
    execution = uuid4()
    in_flight = {"iotee-1": execution}.get
    topic = "iotee/dev/ABC123/rls/ack"
    ack = decode_answer(topic, b"ack", NOW, WIRING, in_flight)
    again = decode_answer(topic, b"ack", NOW, WIRING, in_flight)
    done = decode_answer(topic, b"done", NOW, WIRING, in_flight)
    assert (ack.device_id, ack.execution_id, ack.status) == ("iotee-1", execution, "STARTED")
    assert done.status == "SUCCEEDED" and done.payload == {"answer": "done"}
    # A QoS 1 repeat keeps its report id; a different answer gets another.
    assert ack.report_id == again.report_id != done.report_id
    assert ack.report_id.startswith(f"answer:{execution}:")
    other = decode_answer(topic, b"ack", NOW, WIRING, {"iotee-1": uuid4()}.get)
    assert other.report_id != ack.report_id
    with pytest.raises(MalformedAnswerError) as caught:
        decode_answer(topic, b"ack", NOW, WIRING, lambda _: None)
    assert caught.value.reason == "no-execution-in-flight"
    with pytest.raises(MalformedAnswerError) as caught:
        decode_answer(topic, b"boom", NOW, WIRING, in_flight)
    assert caught.value.reason == "malformed-answer"


def test_a_type_whose_wire_settings_cannot_work_is_left_out_the_rest_wired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stored before the catalog checked them: one tenant's type must not hold back the rest.
    raw = CATALOG.model_dump()
    raw["device_types"]["iotee_device"]["wire"] = {"topic": "no/placeholder"}
    catalog = Catalog.model_validate(raw)
    left_out = [d.id for d in catalog.devices if d.type == "iotee_device"]
    wired = [d.id for d in catalog.devices if d.type != "iotee_device"]
    assert left_out
    assert wired
    with caplog.at_level(logging.ERROR):
        wiring = Wiring(catalog)
    assert all(wiring.target(d) is None for d in left_out)
    assert all(wiring.target(d) is not None for d in wired)
    assert "device type 'iotee_device' not wired" in caplog.text


async def test_the_execution_in_flight_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "bridge.sqlite"
    first, second = uuid4(), uuid4()
    store = InFlight(path)
    assert store.current("iotee-1") is None
    await store.remember("iotee-1", first)
    await store.remember("iotee-1", second)
    await store.remember("other", first)
    store.close()
    reopened = InFlight(path)
    assert (reopened.current("iotee-1"), reopened.current("other")) == (second, first)
    reopened.close()
