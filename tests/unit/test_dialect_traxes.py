"""Traxes Connect (seed 000) against Baton's `/traxes` dialect: the seed's operation
(`POST /v1/entities/{entityId}/commands`, its example entity) with each typed command, the
Command status words as the execution moves on, `ignoreCooldown`, and the errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from baton_api.dialects.traxes import COMMAND_TYPES, TraxesCommand
from baton_contracts.nats import ExecutionState
from baton_domain.statuses import AnswerStatus
from tests.unit.dialect_support import KEY, Stand, assert_problem, stand

__all__ = ["stand"]

ENTITY = "8667fb97-68f2-485a-87c7-f3bdfa9482e1"
URL = f"/traxes/v1/entities/{ENTITY}/commands"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
COMMAND_FIELDS = {
    "entityId", "id", "status", "triggerTime", "type", "value", "error", "verification",
}  # fmt: skip


def send(stand: Stand, type_: str = "StartCharging", value: str | None = None) -> dict[str, Any]:
    response = stand.client.post(URL, json={"type": type_, "value": value}, headers=AUTH)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def status_is(stand: Stand, command_id: str, status: str) -> dict[str, Any] | None:
    body: dict[str, Any] = stand.client.get(f"{URL}/{command_id}", headers=AUTH).json()
    return body if body["status"] == status else None


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("StartCharging", "11000"),
        ("StopCharging", None),
        ("LimitFeedIn", "5000"),
        ("StopFeedIn", None),
        ("Disconnect", None),
        ("Reset", None),
    ],
)
def test_each_typed_command(stand: Stand, type_: str, value: str | None) -> None:
    response = stand.client.post(
        f"{URL}?ignoreCooldown=false", json={"type": type_, "value": value}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    command = response.json()
    assert set(command) == COMMAND_FIELDS
    assert command["entityId"] == ENTITY
    assert (command["type"], command["value"], command["status"]) == (type_, value, "Pending")
    assert command["error"] is None
    assert command["verification"] is None
    datetime.fromisoformat(command["triggerTime"])
    submitted = stand.gateway.submitted[-1]
    assert submitted.name == type_
    assert submitted.params == ({} if value is None else {"value": value})
    assert submitted.ignore_cooldown is False


def test_ignore_cooldown_is_passed_on(stand: Stand) -> None:
    response = stand.client.post(
        f"{URL}?ignoreCooldown=true", json={"type": "StartCharging"}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    assert stand.gateway.submitted[-1].ignore_cooldown is True


def test_status_words_as_a_command_moves_on(stand: Stand) -> None:
    command_id = send(stand)["id"]
    stand.published(command_id)
    assert stand.until(lambda: status_is(stand, command_id, "Sent"))
    stand.answer(command_id, AnswerStatus.STARTED)
    assert stand.until(lambda: status_is(stand, command_id, "Triggered"))
    stand.answer(command_id, AnswerStatus.SUCCEEDED)
    done = stand.until(lambda: status_is(stand, command_id, "Succeeded"))
    assert done["error"] is None

    failed = send(stand, "Reset")["id"]
    stand.answer(failed, AnswerStatus.REJECTED, {"message": "entity is busy"})
    refused = stand.until(lambda: status_is(stand, failed, "Failed"))
    assert refused["error"] == {
        "title": "Command rejected by the entity",
        "description": "entity is busy",
    }
    silent = send(stand, "Disconnect")["id"]
    stand.published(silent)
    stand.time_out(silent)
    timed_out = stand.until(lambda: status_is(stand, silent, "Failed"))
    assert timed_out["error"]["title"] == "Command timed out"
    canceled = send(stand, "StopCharging")["id"]
    stand.client.post(f"/v1/executions/{canceled}/cancel", headers=AUTH)
    assert stand.until(lambda: status_is(stand, canceled, "Canceled"))["error"]["title"] == (
        "Command canceled"
    )


def test_verification_is_shown_when_the_execution_has_one() -> None:
    now = datetime.now(UTC)
    state = ExecutionState(
        id=uuid4(),
        device_id=ENTITY,
        name="LimitFeedIn",
        params={"value": "5000"},
        status="SUCCEEDED",
        created_at=now,
        updated_at=now,
        ttl=30,
        deadline=now,
        verification={
            "status": "FAILED",
            "completed_at": now,
            "error": {"title": "Not applied", "description": "feed-in still 7000 W"},
        },
    )
    verification = TraxesCommand.of(state).model_dump()["verification"]
    assert verification == {
        "status": "Failed",
        "completedAt": now,
        "error": {"title": "Not applied", "description": "feed-in still 7000 W"},
    }


def test_errors(stand: Stand) -> None:
    assert assert_problem(stand.client.post(URL, json={"type": "Reset"}), 401)["code"] == (
        "unauthorized"
    )
    wrong = {"Authorization": "Bearer wrong"}
    assert_problem(stand.client.post(URL, json={"type": "Reset"}, headers=wrong), 401)
    no_type = assert_problem(stand.client.post(URL, json={"value": "1"}, headers=AUTH), 422)
    assert no_type["errors"][0]["field"] == "type"
    unknown = assert_problem(stand.client.post(URL, json={"type": "Explode"}, headers=AUTH), 422)
    assert unknown["errors"][0]["field"] == "type"
    assert all(t in str(unknown["errors"]) for t in COMMAND_TYPES)
    extra = stand.client.post(URL, json={"type": "Reset", "force": True}, headers=AUTH)
    assert any(
        "force" in e["field"] or "force" in e["reason"]
        for e in assert_problem(extra, 422)["errors"]
    )
    not_watts = stand.client.post(URL, json={"type": "LimitFeedIn", "value": "lots"}, headers=AUTH)
    assert assert_problem(not_watts, 422)["errors"][0]["field"] == "value"
    no_watts = stand.client.post(URL, json={"type": "LimitFeedIn"}, headers=AUTH)
    assert assert_problem(no_watts, 422)["errors"][0]["field"] == "value"
    number = stand.client.post(URL, json={"type": "LimitFeedIn", "value": 5000}, headers=AUTH)
    assert assert_problem(number, 422)["errors"][0]["field"] == "value"
    nobody = stand.client.post(
        f"/traxes/v1/entities/{uuid4()}/commands", json={"type": "Reset"}, headers=AUTH
    )
    assert assert_problem(nobody, 404)["code"] == "unknown-device"
    assert_problem(stand.client.get(f"{URL}/{uuid4()}", headers=AUTH), 404)
    # A command is found only under its own entity.
    command_id = send(stand)["id"]
    other = f"/traxes/v1/entities/{uuid4()}/commands/{command_id}"
    assert_problem(stand.client.get(other, headers=AUTH), 404)
