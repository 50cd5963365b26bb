"""Device identity on MQTT, end to end: the whole stack over mqtts (a CA this test makes), a
device's credentials issued and rotated through the API, and the forged answer that used to
turn demo-silent-1's command SUCCEEDED now changes nothing (issue 8, item 6)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import pytest

from baton_cli.localstack import Stack, find_binary
from baton_contracts.mqtt import response_topic, tls_context
from baton_contracts.nats import CATALOG_CHANGE_SUBJECT, CatalogChange, CatalogReply
from baton_platform.nats_access import OPS
from tests.certificates import make_ca
from tests.e2e.conftest import Baton, make_stack, running

pytestmark = pytest.mark.skipif(
    find_binary("mosquitto") is None, reason="device credentials are issued by Mosquitto"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("mqtts")
    tls = make_ca(tmp / "tls")
    with running(make_stack(tmp / "stack", broker="mosquitto", mqtt_tls=tls)) as started:
        yield started


def issue(baton: Baton, device_id: str) -> dict[str, str]:
    response = baton.http.post(f"/v1/devices/{device_id}/credentials")
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def as_device(stack: Stack, credentials: dict[str, str]) -> aiomqtt.Client:
    assert stack.mqtt_tls is not None
    return aiomqtt.Client(
        "localhost",
        stack.mqtts_port or 0,
        username=credentials["username"],
        password=credentials["password"],
        identifier=credentials["username"],
        tls_context=tls_context(True, stack.mqtt_tls.ca_file),
        protocol=aiomqtt.ProtocolVersion.V5,
    )


def connects(stack: Stack, credentials: dict[str, str]) -> bool:
    async def attempt() -> bool:
        try:
            async with as_device(stack, credentials):
                return True
        except aiomqtt.MqttError:
            return False

    return asyncio.run(attempt())


def test_a_forged_answer_for_another_device_changes_nothing(stack: Stack, baton: Baton) -> None:
    attacker = issue(baton, "demo-thermostat-1")
    silent = baton.send("demo-silent-1", "set_temperature", {"value": 20}, ttl=60)
    assert silent.status_code == 201, silent.text
    silent_id = silent.json()["id"]
    baton.wait_for(silent_id, {"SENT"})

    async def forge() -> None:
        async with as_device(stack, attacker) as client:
            body = '{"status": "SUCCEEDED", "payload": {"forged": true}}'
            await client.publish(response_topic("demo-silent-1", silent_id), body, qos=1)

    asyncio.run(forge())
    # A command after the attempt goes the whole way through the same bridge...
    real = baton.send("demo-thermostat-2", "set_temperature", {"value": 21})
    assert baton.wait_for(real.json()["id"], {"SUCCEEDED"})["status"] == "SUCCEEDED"
    # ...and the forged answer did not: the silent device's command is untouched.
    after = baton.get(silent_id, expand_log=True)
    assert after["status"] == "SENT"
    assert "forged" not in str(after)


def test_a_rotated_password_stops_working_within_a_second(stack: Stack, baton: Baton) -> None:
    old = issue(baton, "demo-thermostat-3")
    assert connects(stack, old)
    new = issue(baton, "demo-thermostat-3")
    rotated = time.monotonic()
    assert new["username"] == old["username"]
    assert not connects(stack, old)
    assert time.monotonic() - rotated < 1.0
    assert connects(stack, new)


def test_credentials_of_an_unknown_device_are_a_404(baton: Baton) -> None:
    response = baton.http.post("/v1/devices/nope/credentials")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown-device"


def test_the_stack_runs_over_tls(stack: Stack) -> None:
    env = stack.env()
    assert env["BATON_MQTT_TLS"] == "true"
    assert Path(env["BATON_MQTT_CA_FILE"]).exists()


def mover(stack: Stack, baton: Baton, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """A new device of a profile that goes by its hardware id, and its first credentials,
    connected once."""
    fleets = {"wire_profile": "emqx-fleets", "commands": {"reboot": {}}}
    created = baton.http.post("/v1/device-types", json={"name": name, "definition": fleets})
    assert created.status_code == 201, created.text
    device = {"id": f"{name}-1", "type": name, "hardware_id": f"{name}-A"}
    assert baton.http.post("/v1/devices", json=device).status_code == 201
    old = issue(baton, device["id"])
    assert connects(stack, old)
    return device, old


def test_an_account_whose_device_moved_to_other_topics_is_refused(
    stack: Stack, baton: Baton
) -> None:
    # Left on its old topics, it could read the requests of whichever device takes them.
    device, old = mover(stack, baton, "mover")
    moved = baton.http.put("/v1/devices/mover-1", json={**device, "hardware_id": "MOVER-B"})
    assert moved.status_code == 200, moved.text
    assert not connects(stack, old)
    assert connects(stack, issue(baton, "mover-1"))


def change_over_nats(stack: Stack, change: CatalogChange) -> CatalogReply:
    """As an operator does: straight to the dispatcher, as `ops`, past the api."""

    async def ask() -> CatalogReply:
        client = await nats.connect(stack.nats_url_as(OPS))
        try:
            reply = await client.request(
                CATALOG_CHANGE_SUBJECT, change.model_dump_json().encode(), timeout=10
            )
        finally:
            await client.close()
        return CatalogReply.model_validate_json(reply.data)

    return asyncio.run(ask())


def test_an_account_whose_device_a_change_over_nats_moved_is_refused(
    stack: Stack, baton: Baton
) -> None:
    # The change never passes the api: the api takes the account back once it is stored.
    device, old = mover(stack, baton, "ops-mover")
    moved = CatalogChange(op="put-device", device={**device, "hardware_id": "OPS-B"})
    reply = change_over_nats(stack, moved)
    assert reply.problem is None, reply.problem
    changed = time.monotonic()
    while connects(stack, old):
        assert time.monotonic() - changed < 10.0, "the old password still worked 10 s later"
        time.sleep(0.1)
    assert connects(stack, issue(baton, "ops-mover-1"))


# The stack's defaults (BATON_DEVICE_MESSAGE_RATE, BATON_DEVICE_MESSAGE_BURST).
RATE, BURST = 50, 200
FLOOD_S = 3.0


class Flood:
    """How many answers were flooded (`over` set then); `seen` tells the flooder to stop
    sending markers."""

    def __init__(self) -> None:
        self.sent = 0
        self.over, self.seen = threading.Event(), threading.Event()


def flood(stack: Stack, credentials: dict[str, str], execution_id: str, state: Flood) -> None:
    """As fast as the account can, progress answers for `execution_id`; then a marker a
    tenth of a second (the bucket has tokens again) until `state.seen`: answers go on in
    order, so once a marker is in the log every flooded answer was stored or dropped."""

    def progress(n: int | str, payload: dict[str, object]) -> str:
        return json.dumps({"status": "IN_PROGRESS", "payload": payload, "answer_id": str(n)})

    async def run() -> None:
        topic = response_topic("demo-thermostat-1", execution_id)
        sent, started = 0, time.monotonic()
        async with as_device(stack, credentials) as client:
            while time.monotonic() - started < FLOOD_S:
                batch = range(sent, sent + 50)
                await asyncio.gather(
                    *(client.publish(topic, progress(n, {"n": n}), qos=1) for n in batch)
                )
                sent += len(batch)
            state.sent = sent
            state.over.set()
            marker = 0
            while not state.seen.is_set():
                await client.publish(topic, progress(f"m{marker}", {"marker": marker}), qos=1)
                marker += 1
                await asyncio.sleep(0.1)

    asyncio.run(run())


def test_a_device_flooding_its_topics_is_held_to_its_rate_and_others_go_on(
    stack: Stack, baton: Baton
) -> None:
    flooder = issue(baton, "demo-thermostat-1")
    target = baton.send("demo-thermostat-1", "set_temperature", {"value": 20})
    target_id = target.json()["id"]
    baton.wait_for(target_id, {"SUCCEEDED"})
    answered = len(baton.get(target_id, expand_log=True)["log"])
    state = Flood()
    started = time.monotonic()
    flooding = threading.Thread(target=flood, args=(stack, flooder, target_id, state))
    flooding.start()
    try:
        # Another device's commands while the flood runs: each goes the whole way.
        others = []
        while not state.over.is_set() and flooding.is_alive():
            sent = baton.send("demo-thermostat-2", "set_temperature", {"value": 21})
            assert sent.status_code == 201, sent.text
            others.append(baton.wait_for(sent.json()["id"], {"SUCCEEDED"})["status"])
        assert others and set(others) == {"SUCCEEDED"}
        deadline = time.monotonic() + 30
        while True:
            log: list[dict[str, Any]] = baton.get(target_id, expand_log=True)["log"]
            if any("marker" in entry["payload"] for entry in log):
                # The bridge takes messages in later than they were sent (they wait in
                # the broker while it is busy), and its bucket refills meanwhile: by now it
                # has taken them all in.
                window = time.monotonic() - started
                break
            assert time.monotonic() < deadline, "no marker after the flood reached the log"
            time.sleep(0.1)
    finally:
        state.seen.set()
        flooding.join()
    flooded = sum(1 for entry in log if "n" in entry["payload"])
    # The bucket was full when the flood began (the command's own answers came back long
    # before), less what those answers took if it had not refilled yet.
    assert BURST - answered <= flooded <= BURST + RATE * window + 1 < state.sent
