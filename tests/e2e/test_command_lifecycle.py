"""One command end to end, through every service, against real NATS and a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
import yaml

from baton_cli.localstack import Stack
from baton_contracts.nats import (
    DEFAULT_TENANT,
    TENANT_SUBMIT_SUBJECT,
    ExecutionReply,
    SubmitCommand,
)
from baton_platform.nats_access import SERVICE_USERS, inbox_prefix, tenant_user
from tests.conftest import BACKENDS, eventually_sync
from tests.e2e.conftest import TERMINAL, Baton

# Every test of the module on both backends: SQLite files, and one PostgreSQL database.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("stack_backend", BACKENDS, scope="module"),
]


def test_success_with_result_and_log(baton: Baton) -> None:
    response = baton.send("demo-thermostat-1", "set_temperature", {"value": 23.5}, wait=10)
    assert response.status_code == 201, response.text
    execution = response.json()
    assert execution["status"] == "SUCCEEDED"
    assert execution["result"] == {"current_temperature": 23.5}
    assert response.headers["location"].endswith(f"/v1/executions/{execution['id']}")
    detail = baton.get(execution["id"], expand_log=True)
    assert [entry["status"] for entry in detail["log"]] == ["STARTED", "SUCCEEDED"]
    assert detail["log"][-1]["payload"] == {"current_temperature": 23.5}


def test_progress_then_success(baton: Baton) -> None:
    execution = baton.send("demo-thermostat-2", "reboot").json()
    assert execution["status"] in {"PENDING", "SENT"}
    done = baton.wait_for(execution["id"], TERMINAL, timeout=15)
    assert done["status"] == "SUCCEEDED"
    assert [e["status"] for e in done["log"]] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]


def test_failed(baton: Baton) -> None:
    execution = baton.send("demo-thermostat-3", "self_test", wait=10).json()
    assert execution["status"] == "FAILED"
    assert execution["error"]["message"]


def test_rejected(baton: Baton) -> None:
    execution = baton.send("demo-thermostat-3", "factory_reset", wait=10).json()
    assert execution["status"] == "REJECTED"
    assert execution["error"]["message"]


def test_silent_device_times_out_soon_after_its_ttl(baton: Baton) -> None:
    execution = baton.send("demo-silent-1", "reboot", ttl=2).json()
    sent = baton.wait_for(execution["id"], {"SENT", *TERMINAL}, timeout=5)
    assert sent["status"] == "SENT"
    # Deadline = created_at + 2 s; TIMED_OUT must be visible within 2 s after it.
    done = baton.wait_for(execution["id"], TERMINAL, timeout=2 + 2)
    assert done["status"] == "TIMED_OUT"
    assert done["error"]["code"] == "timed_out"


def test_cancel(baton: Baton) -> None:
    execution = baton.send("demo-silent-1", "reboot", ttl=60).json()
    baton.wait_for(execution["id"], {"SENT"}, timeout=5)
    canceled = baton.http.post(f"/v1/executions/{execution['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "CANCELED"
    again = baton.http.post(f"/v1/executions/{execution['id']}/cancel")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert baton.get(execution["id"])["status"] == "CANCELED"


def test_idempotency_key(baton: Baton) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = baton.send("demo-thermostat-4", "set_temperature", {"value": 20}, headers=key)
    second = baton.send("demo-thermostat-4", "set_temperature", {"value": 20}, headers=key)
    assert first.status_code == 201
    assert second.status_code in (200, 201)
    assert first.json()["id"] == second.json()["id"]
    other = baton.send("demo-thermostat-4", "set_temperature", {"value": 21}, headers=key)
    assert other.status_code == 409
    assert other.json()["status"] == 409


def test_errors_are_problems(baton: Baton) -> None:
    no_key = baton.http.post(
        "/v1/devices/demo-thermostat-1/commands",
        json={"name": "reboot"},
        headers={"Authorization": ""},
    )
    assert no_key.status_code == 401
    assert no_key.headers["content-type"].startswith("application/problem+json")
    unknown = baton.send("no-such-device", "reboot")
    assert unknown.status_code == 404
    assert unknown.json()["status"] == 404
    invalid = baton.send("demo-thermostat-1", "set_temperature", {"value": 99})
    assert invalid.status_code == 422
    fields = [e["field"] for e in invalid.json()["errors"]]
    assert fields == ["params.value"]
    unknown_command = baton.send("demo-thermostat-1", "dance")
    assert unknown_command.status_code == 422
    assert unknown_command.json()["errors"][0]["field"] == "name"


async def test_command_submitted_over_nats_shows_in_the_api(stack: Stack, baton: Baton) -> None:
    """Submitted by another service, with the demo tenant client's credentials."""
    user = tenant_user(DEFAULT_TENANT)
    nc = await nats.connect(stack.nats_url_as(user), inbox_prefix=inbox_prefix(user))
    try:
        command = SubmitCommand(
            device_id="demo-thermostat-5",
            name="set_temperature",
            params={"value": 19},
            source="e2e-client",
        )
        subject = TENANT_SUBMIT_SUBJECT.format(tenant=DEFAULT_TENANT)
        msg = await nc.request(subject, command.model_dump_json().encode(), timeout=5)
    finally:
        await nc.close()
    reply = ExecutionReply.model_validate_json(msg.data)
    assert reply.problem is None
    assert reply.execution is not None
    done = baton.wait_for(str(reply.execution.id), TERMINAL, timeout=10)
    assert done["status"] == "SUCCEEDED"
    assert done["result"] == {"current_temperature": 19}
    listed = baton.http.get(
        "/v1/devices/demo-thermostat-5/executions", params={"status": "SUCCEEDED"}
    ).json()
    assert str(reply.execution.id) in [item["id"] for item in listed["items"]]
    assert listed["total_count"] >= 1


def test_catalog_export_and_import_with_the_cli(stack: Stack, baton: Baton, tmp_path: Path) -> None:
    env = {**os.environ, **stack.env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "baton_cli.main", "catalog", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    exported = tmp_path / "catalog.yaml"
    result = cli("export", str(exported))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(exported.read_text())
    assert "set_temperature" in document["device_types"]["thermostat"]["commands"]

    document["devices"].append({"id": "added-thermostat", "type": "thermostat"})
    exported.write_text(yaml.safe_dump(document))
    result = cli("import", str(exported))
    assert result.returncode == 0, result.stderr
    assert "7 device(s)" in result.stdout
    device = baton.http.get("/v1/devices/added-thermostat")
    assert device.status_code == 200 and device.json()["type"] == "thermostat"

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("devices: [{id: x, type: no-such-type}]\n")
    result = cli("import", str(wrong))
    assert result.returncode == 1
    assert "no-such-type" in result.stderr
    assert baton.http.get("/v1/devices").json()["total_count"] == 7  # nothing changed


def test_the_bridge_follows_catalog_changes(stack: Stack, baton: Baton) -> None:
    admin = baton.http  # the stack's key is an admin key
    bridge_log = stack.log_dir / "device-bridge.log"
    total = admin.get("/v1/devices").json()["total_count"]

    def bridge_knows(count: int, since: int) -> bool:
        news = bridge_log.read_text()[since:]  # what the bridge logged since the change
        return f"catalog: 1 device type(s), {count} device(s)" in news

    device = admin.get("/v1/devices/demo-thermostat-4").json()
    before = len(bridge_log.read_text())
    assert admin.delete("/v1/devices/demo-thermostat-4").status_code == 204
    assert baton.send("demo-thermostat-4", "reboot").status_code == 404
    eventually_sync(lambda: bridge_knows(total - 1, before), what="the bridge reloading")
    before = len(bridge_log.read_text())
    assert admin.post("/v1/devices", json=device).status_code == 201
    eventually_sync(lambda: bridge_knows(total, before), what="the bridge reloading again")
    # Back in the catalog: the bridge learned it again from the relayed catalog event
    # before the command's Dispatched, so the command reaches the simulated device.
    done = baton.send("demo-thermostat-4", "set_temperature", {"value": 17}, wait=10).json()
    assert done["status"] == "SUCCEEDED"


def test_events_and_replay_with_the_cli(stack: Stack, baton: Baton) -> None:
    """`baton events` reads the store, `baton replay` rebuilds the views from it while the
    api serves them: the same executions, the same rows, before and after."""
    env = {**os.environ, **stack.env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "baton_cli.main", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = baton.send("demo-thermostat-3", "set_temperature", {"value": 22}, wait=10).json()
    assert done["status"] == "SUCCEEDED"
    events = cli("events", done["id"])
    assert events.returncode == 0, events.stderr
    assert [line.split()[1] for line in events.stdout.splitlines()] == [
        "Requested",
        "Dispatched",
        "Published",
        "Acknowledged",
        "Succeeded",
    ]

    def ended() -> dict[str, object]:
        listed = baton.http.get(
            "/v1/executions", params={"status": sorted(TERMINAL), "limit": 500}
        ).json()
        return {item["id"]: item for item in listed["items"]}

    before, detail = ended(), baton.get(done["id"], expand_log=True)
    replayed = cli("replay")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("replayed ")
    assert done["id"] in before and ended() == before
    assert baton.get(done["id"], expand_log=True) == detail


def test_every_service_worked_as_its_own_nats_user_and_nothing_was_refused(stack: Stack) -> None:
    """Run last in this module: everything above went through the services' own users."""
    for service in SERVICE_USERS:
        log = (stack.log_dir / f"{service}.log").read_text()
        assert f"NATS at {stack.nats_url} as {service}" in log, service
    server_log = (stack.data_dir / "nats" / "nats.log").read_text()
    assert "Violation" not in server_log
