"""Enapter v3 (seed 002) against Baton's `/enapter/v3` dialect: every request example of the
seed, as written (host changed; curl's `-d` sends a form content type), over the in-memory
stand-ins, with the execution driven on by hand to see the documented states."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from baton_api.inmemory import InMemoryGateway
from baton_contracts.nats import ExecutionReply, SubmitCommand
from baton_domain.statuses import AnswerStatus
from tests.unit.dialect_support import KEY, Stand, assert_problem, stand, stand_with

__all__ = ["stand"]

DEVICE = "fecbbba0-79f2-4e9e-a6f0-69a310ab110b"
BASE = f"/enapter/v3/devices/{DEVICE}"
# curl -d without -H 'Content-Type' sends this: the dialect reads the body as JSON anyway.
TOKEN = {"X-Enapter-Auth-Token": KEY, "Content-Type": "application/x-www-form-urlencoded"}

EXECUTE_BODY = b"""{
"name": "change_color_temperature",
"arguments": {
"temp_kelvins": 1850
}
}"""
CREATE_BODY = b"""{
"name": "change_color_temperature",
"arguments": {
"temp_kelvins": 15000
},
"ephemeral": true
}"""


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class LampGateway(InMemoryGateway):
    """A lamp that answers a moment after each request: STARTED, then SUCCEEDED."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.running: set[asyncio.Task[None]] = set()

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        reply = await super().submit(command)
        if reply.execution is not None and reply.created:
            task = asyncio.create_task(self._answer(reply.execution.id, reply.execution.device_id))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        return reply

    async def _answer(self, execution_id: UUID, device_id: str) -> None:
        await asyncio.sleep(0.3)  # execute_command must wait for it
        await asyncio.to_thread(self.executions.record_published, execution_id)
        for status in (AnswerStatus.STARTED, AnswerStatus.SUCCEEDED):
            await asyncio.to_thread(
                self.executions.record_answer,
                execution_id,
                device_id,
                f"r-{uuid4()}",
                status,
                {},
                datetime.now(UTC),
            )


@pytest.fixture
def lamp(tmp_path: Path) -> Iterator[Stand]:
    yield from stand_with(tmp_path, LampGateway)


def test_execute_command_waits_for_the_end(lamp: Stand) -> None:
    response = lamp.client.post(f"{BASE}/execute_command", content=EXECUTE_BODY, headers=TOKEN)
    assert response.status_code == 200, response.text
    execution = response.json()["execution"]
    assert set(execution) == {"id", "state", "created_at", "request", "response", "ephemeral"}
    assert execution["state"] == "SUCCESS"
    assert isinstance(execution["created_at"], int)
    assert execution["request"] == {
        "name": "change_color_temperature",
        "arguments": {"temp_kelvins": 1850},
        "manifest_name": "change_lux",
    }
    assert execution["response"]["state"] == "SUCCEEDED"
    assert execution["response"]["payload"] == {}
    assert isinstance(execution["response"]["received_at"], int)
    assert execution["ephemeral"] is False


def test_execute_command_with_expand_log(lamp: Stand) -> None:
    response = lamp.client.post(
        f"{BASE}/execute_command?expand=log", content=EXECUTE_BODY, headers=TOKEN
    )
    assert response.status_code == 200, response.text
    execution = response.json()["execution"]
    assert [entry["state"] for entry in execution["log"]] == ["SUCCEEDED", "STARTED"]
    assert execution["log"][0] == execution["response"]


def test_create_then_follow_an_execution(stand: Stand) -> None:
    created = stand.client.post(f"{BASE}/command_executions", content=CREATE_BODY, headers=TOKEN)
    assert created.status_code == 200, created.text
    assert set(created.json()) == {"execution_id"}
    execution_id = created.json()["execution_id"]
    url = f"{BASE}/command_executions/{execution_id}"
    token = {"X-Enapter-Auth-Token": KEY}

    new = stand.client.get(url, headers=token).json()["execution"]
    assert new["state"] == "NEW"
    assert "response" not in new

    # "It can be a running execution": sent, no answer yet.
    stand.published(execution_id)
    running = stand.until(lambda: _in_state(stand, url, "IN_PROGRESS"))
    assert running == {
        "id": execution_id,
        "state": "IN_PROGRESS",
        "created_at": running["created_at"],
        "request": {
            "name": "change_color_temperature",
            "arguments": {"temp_kelvins": 15000},
            "manifest_name": "change_lux",
        },
        "ephemeral": True,
    }

    # "Or a finished one", with its answers as the seed shows them.
    stand.answer(execution_id, AnswerStatus.STARTED, {}, at(1735751405))
    stand.answer(execution_id, AnswerStatus.IN_PROGRESS, {"message": "received"}, at(1735751408))
    error = {"message": "Temperature value is out of range"}
    stand.answer(execution_id, AnswerStatus.FAILED, error, at(1735751410))
    finished = stand.until(lambda: _in_state(stand, url, "ERROR"))
    assert finished["response"] == {"state": "ERROR", "payload": error, "received_at": 1735751410}
    assert "log" not in finished

    expanded = stand.client.get(f"{url}?expand=log", headers=token).json()["execution"]
    assert expanded["log"] == [
        {"state": "ERROR", "received_at": 1735751410, "payload": error},
        {"state": "IN_PROGRESS", "received_at": 1735751408, "payload": {"message": "received"}},
        {"state": "STARTED", "received_at": 1735751405, "payload": {}},
    ]
    assert expanded["response"] == finished["response"]


def _in_state(stand: Stand, url: str, state: str) -> dict[str, Any] | None:
    body = stand.client.get(url, headers={"X-Enapter-Auth-Token": KEY}).json()
    execution: dict[str, Any] = body["execution"]
    return execution if execution["state"] == state else None


def test_timeout_success_and_rejection_states(stand: Stand) -> None:
    silent = _create(stand, 1850)
    stand.published(silent)
    stand.time_out(silent)
    timed_out = stand.until(
        lambda: _in_state(stand, f"{BASE}/command_executions/{silent}", "TIMEOUT")
    )
    assert "response" not in timed_out

    done = _create(stand, 2000)
    stand.published(done)
    stand.answer(done, AnswerStatus.SUCCEEDED, {"lux": 2000}, at(1735693803))
    succeeded = stand.until(
        lambda: _in_state(stand, f"{BASE}/command_executions/{done}", "SUCCESS")
    )
    assert succeeded["response"] == {
        "state": "SUCCEEDED",
        "payload": {"lux": 2000},
        "received_at": 1735693803,
    }

    refused = _create(stand, 3000)
    stand.answer(refused, AnswerStatus.REJECTED, {"message": "busy"}, at(1735693804))
    rejected = stand.until(
        lambda: _in_state(stand, f"{BASE}/command_executions/{refused}", "ERROR")
    )
    assert rejected["response"] == {
        "state": "ERROR",
        "payload": {"message": "busy"},
        "received_at": 1735693804,
    }


def _create(stand: Stand, kelvins: int, ephemeral: bool = False) -> str:
    response = stand.client.post(
        f"{BASE}/command_executions",
        json={
            "name": "change_color_temperature",
            "arguments": {"temp_kelvins": kelvins},
            "ephemeral": ephemeral,
        },
        headers={"X-Enapter-Auth-Token": KEY},
    )
    assert response.status_code == 200, response.text
    execution_id: str = response.json()["execution_id"]
    return execution_id


def test_list_show_order_limit_offset(stand: Stand) -> None:
    first = _create(stand, 1850)
    second = _create(stand, 15000, ephemeral=True)
    stand.answer(first, AnswerStatus.SUCCEEDED, {}, at(1735693803))
    stand.answer(second, AnswerStatus.FAILED, {"message": "out of range"}, at(1735751404))
    token = {"X-Enapter-Auth-Token": KEY}

    def listed(query: str = "") -> dict[str, Any]:
        response = stand.client.get(f"{BASE}/command_executions{query}", headers=token)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert set(body) == {"executions", "total_count"}
        return body

    def ended() -> dict[str, Any] | None:
        body = listed("?show=ALL")
        states = [e["state"] for e in body["executions"]]
        return body if states == ["SUCCESS", "ERROR"] else None

    # The seed's examples: default (non-ephemeral only), show=ALL, and newest first.
    every = stand.until(ended)
    assert [e["id"] for e in every["executions"]] == [first, second]
    assert every["total_count"] == 2
    assert every["executions"][0] == {
        "id": first,
        "state": "SUCCESS",
        "created_at": every["executions"][0]["created_at"],
        "request": {
            "name": "change_color_temperature",
            "arguments": {"temp_kelvins": 1850},
            "manifest_name": "change_lux",
        },
        "response": {"state": "SUCCEEDED", "received_at": 1735693803},
        "ephemeral": False,
    }
    assert every["executions"][1]["response"] == {"state": "ERROR", "received_at": 1735751404}
    default = listed()
    assert [e["id"] for e in default["executions"]] == [first]
    assert default["total_count"] == 1
    newest = listed("?show=ALL&order=CREATED_AT_DESC")
    assert [e["id"] for e in newest["executions"]] == [second, first]
    assert [e["id"] for e in listed("?show=ALL&limit=1&offset=1")["executions"]] == [second]
    beyond = listed("?show=ALL&offset=5")
    assert beyond == {"executions": [], "total_count": 2}


def test_errors(stand: Stand) -> None:
    token = {"X-Enapter-Auth-Token": KEY}
    url = f"{BASE}/command_executions"
    missing = assert_problem(stand.client.get(url), 401)
    assert missing["code"] == "unauthorized"
    assert_problem(stand.client.get(url, headers={"X-Enapter-Auth-Token": "wrong"}), 401)

    unknown = stand.client.post(
        "/enapter/v3/devices/nope/command_executions", json={"name": "change_lux"}, headers=token
    )
    assert assert_problem(unknown, 404)["code"] == "unknown-device"
    no_command = stand.client.post(url, json={"name": "dance"}, headers=token)
    assert assert_problem(no_command, 422)["errors"][0]["field"] == "name"
    out_of_range = stand.client.post(
        url, json={"name": "change_lux", "arguments": {"temp_kelvins": 99999}}, headers=token
    )
    assert assert_problem(out_of_range, 422)["errors"][0]["field"] == "arguments.temp_kelvins"
    typo = stand.client.post(url, json={"name": "change_lux", "args": {}}, headers=token)
    assert any(
        "args" in e["field"] or "args" in e["reason"] for e in assert_problem(typo, 422)["errors"]
    )
    bad_show = assert_problem(stand.client.get(f"{url}?show=SOME", headers=token), 422)
    assert bad_show["errors"][0]["field"] == "show"
    bad_expand = assert_problem(stand.client.get(f"{url}/{uuid4()}?expand=all", headers=token), 422)
    assert bad_expand["errors"][0]["field"] == "expand"

    assert_problem(stand.client.get(f"{url}/{uuid4()}", headers=token), 404)
    assert_problem(stand.client.get(f"{url}/execceb11-67f2", headers=token), 404)
    # An execution is found only under its own device.
    execution_id = _create(stand, 1850)
    other = f"/enapter/v3/devices/thermostat-001/command_executions/{execution_id}"
    assert_problem(stand.client.get(other, headers=token), 404)
