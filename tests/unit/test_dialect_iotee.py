"""iotee (seed 003) against Baton's `/iotee` dialect: every request example of the seed as
written (host changed) over the in-memory stand-ins, the status words as a command moves
on, the admin-only routes, and the errors."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import pytest

from baton_api.dialects import iotee
from baton_domain.statuses import AnswerStatus
from tests.unit.dialect_support import ADMIN_KEY, KEY, Stand, assert_problem, stand

__all__ = ["stand"]

USER = {"X-API-Key": KEY}
DAY = timedelta(days=1)
ADMIN = {"X-API-Key": ADMIN_KEY}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def send(stand: Stand, command: str = "lock", device: str = "ABC123") -> dict[str, Any]:
    response = stand.client.post(
        f"/iotee/devices/{device}/commands",
        json={"command": command},
        headers={**USER, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def status_is(stand: Stand, command_id: str, status: str) -> dict[str, Any] | None:
    body: dict[str, Any] = stand.client.get(f"/iotee/commands/{command_id}", headers=USER).json()
    return body if body["status"] == status else None


def test_send_command_as_the_seed_shows(stand: Stand) -> None:
    # curl -X POST .../devices/ABC123/commands -H "X-API-Key: your-key" -d '{"command": "lock"}'
    response = stand.client.post(
        "/iotee/devices/ABC123/commands",
        content=b'{"command": "lock"}',
        headers={**USER, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "command_id": body["command_id"],
        "hardware_id": "ABC123",
        "device_id": "a1b2c3d4",
        "device_type": "iotee_device",
        "topic": "iotee/dev/ABC123/rls",
        "command": "lock",
        "status": "pending",
        "created_at": body["created_at"],
    }
    assert TIMESTAMP.match(body["created_at"])
    # By device id too, with the type and params spelled out.
    by_id = stand.client.post(
        "/iotee/devices/a1b2c3d4/commands",
        json={"command": "unlock", "device_type": "iotee_device", "params": {}},
        headers=USER,
    )
    assert by_id.status_code == 201, by_id.text
    assert (by_id.json()["hardware_id"], by_id.json()["command"]) == ("ABC123", "unlock")


def test_status_words_as_a_command_moves_on(stand: Stand) -> None:
    command_id = send(stand)["command_id"]
    stand.published(command_id)
    assert stand.until(lambda: status_is(stand, command_id, "published"))
    stand.answer(command_id, AnswerStatus.STARTED)
    assert stand.until(lambda: status_is(stand, command_id, "acknowledged"))
    stand.answer(command_id, AnswerStatus.SUCCEEDED)
    assert stand.until(lambda: status_is(stand, command_id, "completed"))

    failed = send(stand, "reboot")["command_id"]
    stand.answer(failed, AnswerStatus.FAILED, {"message": "stuck"})
    assert stand.until(lambda: status_is(stand, failed, "failed"))
    silent = send(stand, "unlock")["command_id"]
    stand.published(silent)
    stand.time_out(silent)
    assert stand.until(lambda: status_is(stand, silent, "timeout"))


def test_history_get_and_list_all(stand: Stand) -> None:
    first, second = send(stand)["command_id"], send(stand, "unlock")["command_id"]
    # curl -H "X-API-Key: your-key" https://api.example.com/devices/ABC123/commands
    history = stand.client.get("/iotee/devices/ABC123/commands", headers=USER)
    assert history.status_code == 200, history.text
    assert [c["command_id"] for c in history.json()] == [second, first]
    limited = stand.client.get("/iotee/devices/a1b2c3d4/commands?limit=1", headers=USER).json()
    assert [c["command_id"] for c in limited] == [second]
    # curl -H "X-API-Key: your-admin-key" https://api.example.com/commands
    every = stand.client.get("/iotee/commands", headers=ADMIN)
    assert every.status_code == 200, every.text
    assert [c["command_id"] for c in every.json()] == [second, first]
    assert len(stand.client.get("/iotee/commands?limit=1", headers=ADMIN).json()) == 1
    # The same role as `GET /v1/executions` (viewer), not admin as the seed had it: one rule
    # for equivalent routes (docs/security.md).
    assert stand.client.get("/iotee/commands", headers=USER).json() == every.json()
    # curl -H "X-API-Key: your-key" https://api.example.com/commands/x1y2z3w4
    one = stand.client.get(f"/iotee/commands/{first}", headers=USER)
    assert one.status_code == 200
    assert one.json() == history.json()[1]
    assert_problem(stand.client.get("/iotee/commands/x1y2z3w4", headers=USER), 404)


def test_delete_is_for_admins(stand: Stand) -> None:
    command_id = send(stand)["command_id"]
    url = f"/iotee/commands/{command_id}"
    assert_problem(stand.client.delete(url, headers=USER), 403)
    deleted = stand.client.delete(url, headers=ADMIN)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"success": True, "deleted": command_id}
    assert_problem(stand.client.get(url, headers=USER), 404)
    assert_problem(stand.client.delete(url, headers=ADMIN), 404)


def viewer_key(stand: Stand) -> dict[str, str]:
    body = {"role": "viewer", "name": "read only"}
    created = stand.client.post("/v1/keys", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


def test_retry_a_failed_command(stand: Stand) -> None:
    command_id = send(stand)["command_id"]
    url = f"/iotee/commands/{command_id}/retry"
    assert_problem(stand.client.post(url, headers=viewer_key(stand)), 403)
    assert_problem(stand.client.post(url, headers=USER), 409)  # still running
    stand.answer(command_id, AnswerStatus.FAILED, {"message": "jammed"})
    stand.until(lambda: status_is(stand, command_id, "failed"))
    retried = stand.client.post(url, headers=ADMIN)
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body == {
        "success": True,
        "original_command_id": command_id,
        "new_command": {"command_id": body["new_command"]["command_id"], "status": "pending"},
    }
    new = status_is(stand, body["new_command"]["command_id"], "pending")
    assert new is not None and new["command"] == "lock"
    assert_problem(stand.client.post("/iotee/commands/x1y2z3w4/retry", headers=ADMIN), 404)


def created_at(stand: Stand, command_id: str) -> datetime:
    body = stand.client.get(f"/iotee/commands/{command_id}", headers=USER).json()
    return datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))


def frozen_at(moment: datetime) -> type[datetime]:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:
            return cls.fromtimestamp(moment.timestamp(), tz)

    return Frozen


def test_purge_old_commands(stand: Stand, monkeypatch: pytest.MonkeyPatch) -> None:
    old = send(stand)["command_id"]
    old_at = created_at(stand, old)
    while datetime.now(UTC) < old_at + timedelta(milliseconds=10):  # shown in whole ms
        time.sleep(0.002)
    new = send(stand)["command_id"]
    new_at = created_at(stand, new)
    assert new_at - old_at >= timedelta(milliseconds=3)
    purge = {"older_than_days": 90}
    assert_problem(stand.client.post("/iotee/commands/purge", json=purge, headers=USER), 403)
    # curl -X POST .../commands/purge -H "X-API-Key: your-admin-key" -d '{"older_than_days": 90}'
    response = stand.client.post(
        "/iotee/commands/purge",
        content=b'{"older_than_days": 90}',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"success": True, "cutoff_date": body["cutoff_date"], "deleted": 0}
    assert TIMESTAMP.match(body["cutoff_date"])

    # The purge's "now" a day after the moment between the two: cutoff between them, exactly.
    monkeypatch.setattr(iotee, "datetime", frozen_at(old_at + (new_at - old_at) / 2 + DAY))
    a_day = {"older_than_days": 1}
    purged = stand.client.post("/iotee/commands/purge", json=a_day, headers=ADMIN).json()
    monkeypatch.undo()
    assert purged["deleted"] == 1
    assert_problem(stand.client.get(f"/iotee/commands/{old}", headers=USER), 404)
    assert status_is(stand, new, "pending")
    missing = stand.client.post("/iotee/commands/purge", json={}, headers=ADMIN)
    assert assert_problem(missing, 422)["errors"][0]["field"] == "older_than_days"


def test_errors(stand: Stand) -> None:
    url = "/iotee/devices/ABC123/commands"
    assert assert_problem(stand.client.get(url), 401)["code"] == "unauthorized"
    assert_problem(stand.client.get(url, headers={"X-API-Key": "wrong"}), 401)
    unknown_device = stand.client.post(
        "/iotee/devices/ZZZ/commands", json={"command": "lock"}, headers=USER
    )
    assert assert_problem(unknown_device, 404)["code"] == "unknown-device"
    assert_problem(stand.client.get("/iotee/devices/ZZZ/commands", headers=USER), 404)
    unknown_command = stand.client.post(url, json={"command": "dance"}, headers=USER)
    problem = assert_problem(unknown_command, 422)
    assert problem["errors"][0]["field"] == "command"
    assert "lock" in problem["errors"][0]["reason"]
    wrong_type = stand.client.post(
        url, json={"command": "lock", "device_type": "other"}, headers=USER
    )
    assert assert_problem(wrong_type, 422)["errors"][0]["field"] == "device_type"
    no_command = stand.client.post(url, json={}, headers=USER)
    assert assert_problem(no_command, 422)["errors"][0]["field"] == "command"
    bad_params = stand.client.post(url, json={"command": "lock", "params": {"x": 1}}, headers=USER)
    assert assert_problem(bad_params, 422)["errors"][0]["field"] == "params"
