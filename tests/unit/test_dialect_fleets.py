"""EMQX Fleets (seed 001) against Baton's `/fleets` dialect: the seed's request examples as
written (host changed) over the in-memory stand-ins, the status words as the execution moves
on, the list filters, and the errors."""

from __future__ import annotations

from typing import Any

from baton_domain.statuses import AnswerStatus
from tests.unit.dialect_support import KEY, Stand, assert_problem, stand

__all__ = ["stand"]

URL = "/fleets/api/v1/commands"
AUTH = {"Authorization": f"Bearer {KEY}"}
SEED_BODY = b"""{
  "thingId": "thermostat-001",
  "action": "setTemperature",
  "params": { "value": 24 },
  "ttl": 30
}"""


def send(stand: Stand, **body: Any) -> dict[str, Any]:
    body.setdefault("thingId", "thermostat-001")
    body.setdefault("action", "setTemperature")
    response = stand.client.post(URL, json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    execution: dict[str, Any] = response.json()
    return execution


def status_is(stand: Stand, execution_id: str, status: str) -> dict[str, Any] | None:
    body: dict[str, Any] = stand.client.get(f"{URL}/{execution_id}", headers=AUTH).json()
    return body if body["status"] == status else None


def test_the_seed_example_then_its_execution(stand: Stand) -> None:
    response = stand.client.post(
        URL, content=SEED_BODY, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    execution = response.json()
    execution_id = execution["executionId"]
    assert execution == {
        "executionId": execution_id,
        "thingId": "thermostat-001",
        "action": "setTemperature",
        "params": {"value": 24},
        "ttl": 30,
        "status": "SENT",
        "createdAt": execution["createdAt"],
        "updatedAt": execution["updatedAt"],
        "result": None,
        "error": None,
    }
    # GET /api/v1/commands/{executionId}
    assert stand.client.get(f"{URL}/{execution_id}", headers=AUTH).json() == execution

    stand.published(execution_id)
    stand.answer(execution_id, AnswerStatus.STARTED)
    assert stand.until(lambda: status_is(stand, execution_id, "SENT"))
    stand.answer(execution_id, AnswerStatus.SUCCEEDED, {"currentTemperature": 24})
    done = stand.until(lambda: status_is(stand, execution_id, "SUCCEEDED"))
    assert done["result"] == {"currentTemperature": 24}


def test_params_and_ttl_are_optional(stand: Stand) -> None:
    execution = send(stand, action="reboot")  # not declared: the type allows any action
    assert (execution["action"], execution["params"], execution["status"]) == ("reboot", {}, "SENT")
    assert execution["ttl"] == 30  # the type's default


def test_failed_rejected_timed_out_canceled(stand: Stand) -> None:
    failed, rejected, silent, canceled = (
        send(stand, action="unlock")["executionId"] for _ in range(4)
    )
    stand.answer(failed, AnswerStatus.FAILED, {"message": "jammed"})
    stand.answer(rejected, AnswerStatus.REJECTED, {"message": "not now"})
    stand.published(silent)
    stand.time_out(silent)
    stand.client.post(f"/v1/executions/{canceled}/cancel", headers=AUTH)
    assert stand.until(lambda: status_is(stand, failed, "FAILED"))["error"] == {"message": "jammed"}
    assert stand.until(lambda: status_is(stand, rejected, "REJECTED"))
    assert stand.until(lambda: status_is(stand, silent, "TIMED_OUT"))
    assert stand.until(lambda: status_is(stand, canceled, "CANCELED"))


def test_list_filters_by_thing_action_and_status(stand: Stand) -> None:
    hot = send(stand, params={"value": 30})["executionId"]
    cold = send(stand, params={"value": 10})["executionId"]
    unlock = send(stand, action="unlock")["executionId"]
    stand.answer(hot, AnswerStatus.SUCCEEDED, {"currentTemperature": 30})
    stand.until(lambda: status_is(stand, hot, "SUCCEEDED"))

    def ids(query: str = "") -> list[str]:
        response = stand.client.get(f"{URL}{query}", headers=AUTH)
        assert response.status_code == 200, response.text
        return [e["executionId"] for e in response.json()["data"]]

    assert ids() == [unlock, cold, hot]
    assert ids("?thingId=thermostat-001&action=setTemperature") == [cold, hot]
    assert ids("?action=unlock") == [unlock]
    assert ids("?thingId=someone-else") == []
    assert ids("?status=SUCCEEDED") == [hot]
    assert ids("?status=SENT") == [unlock, cold]
    assert ids("?status=SUCCEEDED,FAILED&status=SENT") == [unlock, cold, hot]
    page = stand.client.get(f"{URL}?limit=2&page=2", headers=AUTH).json()
    assert [e["executionId"] for e in page["data"]] == [hot]
    assert page["meta"] == {"page": 2, "limit": 2, "count": 3, "hasnext": False}
    first = stand.client.get(f"{URL}?limit=2", headers=AUTH).json()["meta"]
    assert first == {"page": 1, "limit": 2, "count": 3, "hasnext": True}


def test_errors(stand: Stand) -> None:
    assert assert_problem(stand.client.get(URL), 401)["code"] == "unauthorized"
    assert_problem(stand.client.get(URL, headers={"Authorization": "Bearer wrong"}), 401)
    body = {"thingId": "thermostat-001", "action": "setTemperature", "params": {"value": 99}}
    out_of_range = stand.client.post(URL, json=body, headers=AUTH)
    assert assert_problem(out_of_range, 422)["errors"][0]["field"] == "params.value"
    no_thing = stand.client.post(URL, json={"action": "reboot"}, headers=AUTH)
    assert any(e["field"] == "thingId" for e in assert_problem(no_thing, 422)["errors"])
    unknown = stand.client.post(URL, json={"thingId": "nope", "action": "reboot"}, headers=AUTH)
    assert assert_problem(unknown, 404)["code"] == "unknown-device"
    bad_ttl = stand.client.post(URL, json={**body, "params": {"value": 20}, "ttl": 0}, headers=AUTH)
    assert any(e["field"] == "ttl" for e in assert_problem(bad_ttl, 422)["errors"])
    bad_status = assert_problem(stand.client.get(f"{URL}?status=DONE", headers=AUTH), 422)
    assert bad_status["errors"][0]["field"] == "status"
    assert_problem(stand.client.get(f"{URL}/not-an-id", headers=AUTH), 404)
