"""Every decoder of every wire profile, fuzzed (docs/mqtt-contract.md, "Malformed messages").

Whatever a device (or anyone with access to the broker) publishes, a decoder returns a
message or raises the one documented rejection, MalformedWireError with a named reason;
the bridge's decode returns a report or MalformedAnswerError. Never anything else: any other
exception would reach the MQTT loop as a `bridge-error`. And what is accepted can be carried
on: its report encodes to strict JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from baton_contracts.mqtt import parse_execution_topic
from baton_contracts.profiles import CODECS, MalformedWireError, codec_for
from baton_contracts.profiles.base import MalformedReason
from baton_contracts.profiles.json_body import MAX_DEPTH, load_json
from baton_contracts.profiles.presence import DeviceTopic
from baton_device_bridge.answers import MalformedAnswerError, decode_message
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EXECUTION = UUID("6f1c4a2e-8a2b-4a57-9d7e-2f0f5a7c3b11")
REASONS = set(get_args(MalformedReason))
# What the bridge counts a device message under (docs/mqtt-contract.md).
BRIDGE_REASONS = REASONS | {"unknown-device", "no-execution-in-flight"}
IOTEE_WIRE: Mapping[str, Any] = {
    "topic": "iotee/dev/{hardware_id}/rls",
    "answer_topic": "iotee/dev/{hardware_id}/rls/ack",
    "answers": {"ack": "STARTED", "done": "SUCCEEDED", "err": "FAILED"},
    "status_topic": "iotee/dev/{hardware_id}/status",
}
IOTEE_COMMANDS: Mapping[str, Mapping[str, Any]] = {"on": {"payload": "1"}, "off": {"payload": "0"}}
# Every topic a device of each profile may send on (and Baton on, for the device side).
TOPICS: dict[str, dict[str, list[str]]] = {
    "baton": {
        "answer": [f"baton/v1/devices/T1/executions/{EXECUTION}/response"],
        "status": ["baton/v1/devices/T1/status"],
        "state": ["baton/v1/devices/T1/state"],
        "request": [
            f"baton/v1/devices/T1/executions/{EXECUTION}/request",
            f"baton/v1/devices/T1/executions/{EXECUTION}/cancel",
        ],
    },
    "emqx-fleets": {
        "answer": [f"$emqx/commands/things/T1/executions/{EXECUTION}/response"],
        "status": ["$emqx/commands/things/T1/status"],
        "state": [],
        "request": [f"$emqx/commands/things/T1/executions/{EXECUTION}/request"],
    },
    "aws-iot-commands": {
        "answer": [f"$aws/commands/things/T1/executions/{EXECUTION}/response/json"],
        "status": ["$aws/commands/things/T1/status"],
        "state": [],
        "request": [f"$aws/commands/things/T1/executions/{EXECUTION}/request/json"],
    },
    "raw-mapped": {
        "answer": ["iotee/dev/T1/rls/ack"],
        "status": ["iotee/dev/T1/status"],
        "state": [],
        "request": ["iotee/dev/T1/rls"],
    },
}
ALL_TOPICS = sorted({t for kinds in TOPICS.values() for ts in kinds.values() for t in ts})
WIRINGS = [
    Wiring(Catalog.from_yaml(ROOT / f"deploy/catalog/{name}.yaml"))
    for name in ("profiles", "policies", "seeds")
]
pytestmark = pytest.mark.fuzz

FUZZ = settings(
    max_examples=int(os.environ.get("BATON_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

# --- strategies -------------------------------------------------------------------------------

# Any JSON value Python's encoder writes, NaN, Infinity, huge integers and lone surrogates
# included (json.dumps writes those as the non-standard literals and \ud800 escapes).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Objects shaped like what the profiles expect, so the fuzz also gets past the first check.
KEYS = [
    "status", "payload", "result", "answer_id", "statusReason", "reasonCode", "online",
    "connection", "execution_id", "name", "params", "deadline", "reason", "commandId",
    "action", "timestamp", "ttl",
]  # fmt: skip
WORDS = ["STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "online"]
shaped = st.dictionaries(
    st.sampled_from(KEYS),
    json_values | st.sampled_from([*WORDS, str(EXECUTION), "2026-11-22T12:00:00Z", True]),
    max_size=6,
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


json_bodies = st.one_of(json_values, shaped).map(encoded)
nested = st.builds(
    lambda depth, opener: (opener * depth).encode(),
    st.integers(1, 100_000),
    st.sampled_from(["[", '{"a":', '{"status":"SUCCEEDED","payload":{"a":']),
)
payloads = st.one_of(
    st.binary(max_size=512), json_bodies, nested, st.sampled_from([b"online", b"offline"])
)
topics = st.one_of(st.sampled_from(ALL_TOPICS), st.text(max_size=120))


# --- the properties -----------------------------------------------------------------------


def carried_on(value: Any) -> None:
    """What a decoder accepts goes into a report: it must encode to strict JSON again."""
    json.dumps(value, allow_nan=False).encode("utf-8")


def decoded_or_rejected(decode: Any, *args: Any) -> Any:
    """What `decode` returns; None when it raised MalformedWireError with a named reason.
    Any other exception fails the test, with the example that raised it."""
    reason = None
    try:
        return decode(*args)
    except MalformedWireError as exc:
        reason = exc.reason
    assert reason in REASONS, reason
    return None


def wire_of(profile: str) -> Mapping[str, Any]:
    return IOTEE_WIRE if profile == "raw-mapped" else {}


@pytest.mark.parametrize("profile", sorted(CODECS))
@FUZZ
@given(topic=topics, payload=payloads)
@example(topic="baton/v1/devices/T1/state", payload=b"[" * 100_000)
@example(topic="baton/v1/devices/T1/state", payload=b'{"a":' * 100_000)
@example(topic="baton/v1/devices/T1/state", payload=b'{"a": NaN}')
@example(topic="baton/v1/devices/T1/state", payload=b'{"a": "\\ud800"}')
@example(topic="baton/v1/devices/T1/state", payload=b'{"a": 1e400}')
@example(topic="baton/v1/devices/T1/state", payload=b'{"a": ' + b"9" * 5000 + b"}")
@example(topic="baton/v1/devices/T1/status", payload=b'{"online": true, "connection": "\xff"}')
def test_every_baton_side_decoder_gives_a_message_or_a_named_rejection(
    profile: str, topic: str, payload: bytes
) -> None:
    codec, type_wire = codec_for(profile), wire_of(profile)
    answer = decoded_or_rejected(codec.decode_answer, topic, payload, type_wire)
    if answer is not None:
        carried_on(answer.payload)
    presence = decoded_or_rejected(codec.decode_status, topic, payload, type_wire)
    if presence is not None:
        assert isinstance(presence.online, bool)
    state = decoded_or_rejected(codec.decode_state, topic, payload, type_wire)
    if state is not None:
        assert isinstance(state.state, dict)
        carried_on(state.state)


@pytest.mark.parametrize("profile", sorted(CODECS))
@FUZZ
@given(data=st.data(), payload=payloads)
def test_every_decoder_on_its_own_topics(profile: str, data: st.DataObject, payload: bytes) -> None:
    """The fuzz of the test above, aimed: each profile's own topics, so bodies are read."""
    codec, type_wire = codec_for(profile), wire_of(profile)
    kinds = TOPICS[profile]
    for kind, decode in (
        ("answer", codec.decode_answer),
        ("status", codec.decode_status),
        ("state", codec.decode_state),
    ):
        if kinds[kind]:
            decoded_or_rejected(decode, data.draw(st.sampled_from(kinds[kind])), payload, type_wire)
    topic = data.draw(st.sampled_from(kinds["request"]))
    request = decoded_or_rejected(
        codec.decode_request, topic, payload, "T1", type_wire, IOTEE_COMMANDS
    )
    if request is not None and hasattr(request, "params"):
        carried_on(request.params)


@FUZZ
@given(wiring=st.sampled_from(WIRINGS), data=st.data(), payload=payloads)
def test_the_bridge_turns_any_message_into_a_report_or_a_counted_rejection(
    wiring: Wiring, data: st.DataObject, payload: bytes
) -> None:
    """Through the catalog's wiring, as the MQTT loop calls it: a report that encodes, or
    MalformedAnswerError with a reason the metric is labelled with."""
    filters = wiring.device_filters()
    topic_filter = data.draw(st.sampled_from(filters))
    levels = [
        data.draw(st.sampled_from(["T1", "ABC123", "charger-1", str(EXECUTION), "x y", "-"]))
        if level == "+"
        else level
        for level in topic_filter.split("/")
    ]
    topic = data.draw(st.sampled_from(["/".join(levels)]) | st.text(max_size=80))
    reason = None
    try:
        report = decode_message(topic, payload, NOW, wiring, lambda _: EXECUTION)
    except MalformedAnswerError as exc:
        reason = exc.reason
    if reason is None:
        json.loads(report.model_dump_json())
    else:
        assert reason in BRIDGE_REASONS, reason


@FUZZ
@given(topic=st.text(max_size=200))
def test_topic_parsing_never_raises(topic: str) -> None:
    parsed = parse_execution_topic(topic)
    assert parsed is None or len(parsed) == 3
    for template in ("baton/v1/devices/{wire_id}/status", "$aws/x/{wire_id}"):
        wire_id = DeviceTopic(template).wire_id(topic)
        assert wire_id is None or DeviceTopic(template).topic(wire_id) == topic


@FUZZ
@given(value=json_values)
def test_load_json_accepts_exactly_standard_carriable_json(value: Any) -> None:
    """The shared helper: a value comes back equal, or is refused for a named cause."""
    got = decoded_or_rejected(load_json, encoded(value), "malformed-state")
    if got is not None:
        carried_on(got)
        assert got == value or _has_nan(value)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"[" * 10_000, "not JSON"),  # the parser's own limit
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": -Infinity}', "not JSON"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": 18446744073709551616}', "beyond 64 bits"),
        (b'{"a": "\\ud800"}', "not JSON"),
        (b'{"a": "\xff"}', "not JSON"),
        (b"{}" + b" " * 300_000, "longer than"),
    ],
)
def test_load_json_names_what_it_refuses(payload: bytes, why: str) -> None:
    with pytest.raises(MalformedWireError, match=why) as caught:
        load_json(payload, "malformed-answer")
    assert caught.value.reason == "malformed-answer"


def test_nesting_within_the_limit_is_read() -> None:
    depth = MAX_DEPTH
    assert load_json(b"[" * depth + b"]" * depth, "malformed-state") is not None
    assert load_json(b'{"n": 9223372036854775807}', "malformed-state") == {"n": 2**63 - 1}
