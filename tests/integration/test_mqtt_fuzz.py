"""The MQTT fuzz stage: thousands of malformed messages on every profile's topics, through a
real broker (both flavours) to the real device-bridge.

What must hold (docs/mqtt-contract.md, "Malformed messages"): the bridge stays up, every
message is counted in `baton_rejected_messages_total` under the reason its kind of defect
has (never `bridge-error`, the count of the bridge's own bugs), the total equals the number
sent, and real commands in every profile still succeed afterwards.

BATON_FUZZ_MESSAGES scales it (`make fuzz`); the default, 10,000, runs in `make test`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from uuid import uuid4

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from baton_cli.localstack import Server
from baton_device_bridge.app import DeviceBridge
from baton_device_bridge.edges import SERVICE
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.settings import Settings
from tests.conftest import eventually
from tests.integration.test_device_bridge import make_settings
from tests.integration.test_presence import protocol_of
from tests.integration.test_wire_profiles import (
    answers,
    dispatch,
    running_bridge,
    until_final,
)

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

MESSAGES = int(os.environ.get("BATON_FUZZ_MESSAGES", "10000"))
SEED = int(os.environ.get("BATON_FUZZ_SEED", "6"))
PUBLISH_BATCH = 500

# --- the malformed messages ---------------------------------------------------------------------

Case = tuple[str, bytes, str]  # topic, payload, the reason it must be counted under
Make = Callable[[random.Random], Case]

EXECUTION = "6f1c4a2e-8a2b-4a57-9d7e-2f0f5a7c3b11"
BATON_ANSWER = f"baton/v1/devices/baton-thermo-1/executions/{EXECUTION}/response"
FLEETS_ANSWER = f"$emqx/commands/things/FLEETS-T1/executions/{EXECUTION}/response"
AWS_ANSWER = f"$aws/commands/things/AWS-T1/executions/{EXECUTION}/response/json"
IOTEE_ANSWER = "iotee/dev/ABC123/rls/ack"
STATUSES = [
    "baton/v1/devices/baton-thermo-1/status",
    "$emqx/commands/things/FLEETS-T1/status",
    "$aws/commands/things/AWS-T1/status",
]
STATE = "baton/v1/devices/baton-thermo-1/state"


def nested(rng: random.Random, inner: bytes = b"") -> bytes:
    """Deeply nested JSON, beyond any limit (the defect that started this stage)."""
    opener = rng.choice([b"[", b'{"a":'])
    return opener * rng.randint(40, 20_000) + inner


def junk(rng: random.Random) -> bytes:
    """Random bytes that are not UTF-8 (so no profile can read them by chance)."""
    return b"\xff" + rng.randbytes(rng.randint(0, 200))


def answer(status: str, extra: str) -> bytes:
    return f'{{"status": "{status}", {extra}}}'.encode()


CASES: list[Make] = [
    # answers, in every profile
    lambda r: (BATON_ANSWER, nested(r), "malformed-answer"),
    lambda r: (BATON_ANSWER, junk(r), "malformed-answer"),
    lambda r: (BATON_ANSWER, answer("SUCCEEDED", '"payload": {"t": NaN}'), "malformed-answer"),
    lambda r: (
        BATON_ANSWER,
        answer("SUCCEEDED", f'"payload": {{"t": {r.randint(2**64, 2**200)}}}'),
        "malformed-answer",
    ),
    lambda r: (BATON_ANSWER, json.dumps({"status": r.random()}).encode(), "malformed-answer"),
    lambda r: (
        f"baton/v1/devices/baton-thermo-1/executions/not-{r.randint(0, 999)}/response",
        b'{"status": "SUCCEEDED"}',
        "malformed-topic",
    ),
    lambda r: (
        f"baton/v1/devices/nobody-{r.randint(0, 999)}/executions/{uuid4()}/response",
        b'{"status": "SUCCEEDED"}',
        "unknown-device",
    ),
    lambda r: (FLEETS_ANSWER, answer("SUCCEEDED", '"result": ' + "[" * 300), "malformed-answer"),
    lambda r: (FLEETS_ANSWER, json.dumps({"status": r.randint(0, 9)}).encode(), "malformed-answer"),
    lambda r: (FLEETS_ANSWER, junk(r), "malformed-answer"),
    lambda r: (AWS_ANSWER, answer("SUCCEEDED", '"result": {"t": 1e400}'), "malformed-answer"),
    lambda r: (AWS_ANSWER, answer("SUCCEEDED", '"result": {"t": "\\ud800"}'), "malformed-answer"),
    lambda r: (AWS_ANSWER, nested(r), "malformed-answer"),
    lambda r: (IOTEE_ANSWER, f"word-{r.randint(0, 999)}".encode(), "malformed-answer"),
    lambda r: (IOTEE_ANSWER, b"done" * r.randint(65, 200), "malformed-answer"),
    lambda r: (IOTEE_ANSWER, junk(r), "malformed-answer"),
    # presence, in every profile that has it
    lambda r: (r.choice(STATUSES), nested(r), "malformed-presence"),
    lambda r: (r.choice(STATUSES), b'{"online": "yes"}', "malformed-presence"),
    lambda r: (r.choice(STATUSES), b"x" * r.randint(1025, 4000), "malformed-presence"),
    lambda r: (r.choice(STATUSES), junk(r), "malformed-presence"),
    lambda r: (f"baton/v1/devices/nobody-{r.randint(0, 9)}/status", b"online", "unknown-device"),
    # state (the baton profile's)
    lambda r: (STATE, nested(r), "malformed-state"),
    lambda r: (STATE, b'{"charging": ' + nested(r, b"true"), "malformed-state"),
    lambda r: (STATE, b'{"t": NaN}', "malformed-state"),
    lambda r: (STATE, f"[{r.randint(0, 99)}]".encode(), "malformed-state"),
    lambda r: (STATE, junk(r), "malformed-state"),
]


def malformed_messages(count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    return [CASES[i % len(CASES)](rng) for i in range(count)]


# --- harness ------------------------------------------------------------------------------------


def rejected_now() -> Counter[str]:
    """The bridge's rejections by reason, from the prometheus_client registry."""
    counts: Counter[str] = Counter()
    for metric in REJECTED_MESSAGES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["service"] == SERVICE:
                counts[sample.labels["reason"]] += int(sample.value)
    return counts


@pytest.fixture
def settings(nats_server: Server, mqtt_broker: Server, tmp_path: Path) -> Settings:
    return make_settings(nats_server, mqtt_broker.port, mqtt_broker.extra["protocol"], tmp_path)


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[DeviceBridge]:
    async with running_bridge(settings) as service:
        yield service


async def publish_all(broker: Server, cases: list[Case]) -> None:
    """QoS 1, a batch at a time: the broker has taken each message when this returns."""
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=protocol_of(broker), identifier=f"fuzz-{uuid4().hex}"
    ) as client:
        client.pending_calls_threshold = 10 * PUBLISH_BATCH
        for start in range(0, len(cases), PUBLISH_BATCH):
            batch = cases[start : start + PUBLISH_BATCH]
            await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for topic, payload, _ in batch)
            )


# --- the stage ----------------------------------------------------------------------------------


def test_the_fuzz_covers_every_profile_and_kind_of_topic() -> None:
    """Answers, presence and state of every profile the catalog uses, at least 10,000."""
    cases = malformed_messages(max(MESSAGES, 10_000), SEED)
    topics = {topic for topic, _, _ in cases}
    for profile_topic in [BATON_ANSWER, FLEETS_ANSWER, AWS_ANSWER, IOTEE_ANSWER, *STATUSES, STATE]:
        assert profile_topic in topics
    assert len(cases) >= 10_000
    assert {reason for _, _, reason in cases} >= {
        "malformed-answer", "malformed-presence", "malformed-state", "malformed-topic",
        "unknown-device",
    }  # fmt: skip


@pytest.mark.usefixtures("simulated")
async def test_malformed_messages_are_all_counted_and_the_bridge_keeps_working(
    bridge: DeviceBridge, mqtt_broker: Server, nc: Client
) -> None:
    js: JetStreamContext = nc.jetstream()
    cases = malformed_messages(MESSAGES, SEED)
    expected = Counter(reason for _, _, reason in cases)
    before = rejected_now()

    await publish_all(mqtt_broker, cases)

    def counted() -> Counter[str]:
        now = rejected_now()
        return Counter({r: now[r] - before[r] for r in now if now[r] != before[r]})

    async def all_counted() -> bool:
        assert bridge.link is not None and bridge._link_task is not None
        assert not bridge._link_task.done(), "the MQTT loop ended"
        return sum(counted().values()) >= len(cases)

    await eventually(all_counted, timeout=60, interval=0.2, what=f"{len(cases)} rejections")

    # Real commands still go through, in every profile.
    commands = [
        ("baton-thermo-1", "set_temperature", {"value": 21}),
        ("fleets-thermo-1", "set_temperature", {"value": 22}),
        ("aws-thermo-1", "set_temperature", {"value": 23}),
        ("iotee-1", "lock", {}),
    ]
    for device_id, name, params in commands:
        execution_id = await dispatch(js, device_id, name, params)
        assert answers(await until_final(js, execution_id))[-1][0] == "SUCCEEDED", device_id

    # Exactly one count per message, each under the reason its defect has; no bridge-error.
    assert counted() == expected
    assert sum(counted().values()) == len(cases)
    assert bridge.link is not None and bridge.link.connected.is_set()
