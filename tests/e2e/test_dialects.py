"""One flow per dialect against the real stack: every service as a process, real NATS and
an MQTT broker, and the simulator running the devices of deploy/catalog/seeds.yaml, each
in its type's wire profile (Traxes and Enapter: Baton's own; Fleets: `emqx-fleets`; iotee:
`raw-mapped`). The devices follow the simulator's `generic` (start, succeed) or `iotee`
behaviour."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import API_KEY, ROOT, make_stack, running

pytestmark = pytest.mark.e2e

SEEDS = ROOT / "deploy" / "catalog" / "seeds.yaml"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    stack = make_stack(
        Path(tmp_path_factory.mktemp("dialects")), catalog=SEEDS, simulate_catalog=True
    )
    with running(stack), httpx.Client(base_url=stack.api_url, timeout=70) as client:
        yield client


def until(probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout}s")


def test_traxes_command_succeeds(api: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    url = "/traxes/v1/entities/8667fb97-68f2-485a-87c7-f3bdfa9482e1/commands"
    sent = api.post(url, json={"type": "StartCharging", "value": "11000"}, headers=auth)
    assert sent.status_code == 201, sent.text
    command_id = sent.json()["id"]

    def succeeded() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"{url}/{command_id}", headers=auth).json()
        return body if body["status"] == "Succeeded" else None

    done = until(succeeded)
    assert (done["type"], done["value"], done["error"]) == ("StartCharging", "11000", None)


def test_fleets_command_succeeds(api: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"thingId": "thermostat-001", "action": "setTemperature", "params": {"value": 24}}
    sent = api.post("/fleets/api/v1/commands", json={**body, "ttl": 30}, headers=auth)
    assert sent.status_code == 201, sent.text
    execution_id = sent.json()["executionId"]

    def succeeded() -> dict[str, Any] | None:
        found: dict[str, Any] = api.get(
            f"/fleets/api/v1/commands/{execution_id}", headers=auth
        ).json()
        return found if found["status"] == "SUCCEEDED" else None

    until(succeeded)
    listed = api.get(
        "/fleets/api/v1/commands?thingId=thermostat-001&status=SUCCEEDED", headers=auth
    ).json()
    assert execution_id in [e["executionId"] for e in listed["data"]]


def test_enapter_execute_command_is_synchronous(api: httpx.Client) -> None:
    response = api.post(
        "/enapter/v3/devices/fecbbba0-79f2-4e9e-a6f0-69a310ab110b/execute_command?expand=log",
        content=b'{"name": "change_color_temperature", "arguments": {"temp_kelvins": 1850}}',
        headers={"X-Enapter-Auth-Token": API_KEY},
    )
    assert response.status_code == 200, response.text
    execution = response.json()["execution"]
    assert execution["state"] == "SUCCESS"
    assert execution["request"]["manifest_name"] == "change_lux"
    assert execution["response"]["state"] == "SUCCEEDED"
    assert [e["state"] for e in execution["log"]] == ["SUCCEEDED", "STARTED"]


def test_iotee_lock_completes(api: httpx.Client) -> None:
    key = {"X-API-Key": API_KEY}
    sent = api.post("/iotee/devices/ABC123/commands", json={"command": "lock"}, headers=key)
    assert sent.status_code == 201, sent.text
    command = sent.json()
    assert command["topic"] == "iotee/dev/ABC123/rls"

    def completed() -> dict[str, Any] | None:
        found: dict[str, Any] = api.get(
            f"/iotee/commands/{command['command_id']}", headers=key
        ).json()
        return found if found["status"] == "completed" else None

    until(completed)
    history = api.get("/iotee/devices/ABC123/commands", headers=key).json()
    assert history[0]["command_id"] == command["command_id"]
