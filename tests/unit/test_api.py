"""The Baton v1 API over in-memory stand-ins: the dispatcher is the `Executions` application
called in-process (InMemoryGateway), the event store is in memory, the views a temp SQLite.

Routes, auth, validation and problem documents are the production ones (create_app).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from litestar.routes import HTTPRoute
from litestar.testing import TestClient
from litestar.utils.sync import AsyncCallable

from baton_api.app import create_app
from baton_api.auth import principal_of
from baton_api.credentials import InMemoryAccounts
from baton_api.inmemory import InMemoryGateway
from baton_contracts.nats import ExecutionReply, SubmitCommand
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus
from baton_platform.settings import Settings
from baton_views import ChangeFilter

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_KEY = "admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
PROBLEM = "application/problem+json"


class AnsweringGateway(InMemoryGateway):
    """A gateway whose devices answer at once: every submission succeeds right away."""

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        reply = await super().submit(command)
        if reply.execution is not None and reply.created:
            answer(self.executions, reply.execution.id, AnswerStatus.SUCCEEDED, {"ok": True})
        return reply


class BrokenGateway(InMemoryGateway):
    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        raise RuntimeError("secret internals")


class UnreachableDatabase(InMemoryGateway):
    """As while PostgreSQL restarts: the connection refused (eventsourcing's wrapping of it)."""

    async def submit(self, command: SubmitCommand) -> ExecutionReply:
        raise PersistenceOperationalError("connection refused")


def answer(
    executions: Executions,
    execution_id: UUID,
    status: AnswerStatus,
    payload: dict[str, Any],
    device_id: str | None = None,
) -> None:
    execution = executions.get(execution_id)
    executions.record_answer(
        execution_id,
        device_id or execution.device_id,
        f"r-{uuid4()}",
        status,
        payload,
        datetime.now(UTC),
    )


@pytest.fixture
def executions() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def client_for(tmp_path: Path, gateway: InMemoryGateway, **overrides: Any) -> TestClient[Any]:
    settings = Settings(
        data_dir=tmp_path,
        api_keys=KEY,
        admin_api_keys=ADMIN_KEY,
        projection_poll_interval=0.05,
        **overrides,
    )
    # Device credentials from a dict: the broker's side is tested on real brokers.
    accounts = InMemoryAccounts()
    app = create_app(settings, gateway=gateway, executions=gateway.executions, accounts=accounts)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, InMemoryGateway(executions)) as test_client:
        yield test_client


def submit(client: TestClient[Any], device: str = "demo-thermostat-1", **body: Any) -> Any:
    body.setdefault("name", "set_temperature")
    body.setdefault("params", {"value": 21})
    return client.post(f"/v1/devices/{device}/commands", json=body, headers=AUTH)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    return body


# --- auth ----------------------------------------------------------------------------------


def test_v1_needs_an_api_key(client: TestClient[Any]) -> None:
    response = client.get("/v1/executions")
    body = assert_problem(response, 401)
    assert body["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(client.get("/v1/executions", headers={"Authorization": "Bearer wrong"}), 401)
    assert_problem(client.get("/v1/executions", headers={"Authorization": "Basic abc"}), 401)


def test_bearer_and_x_api_key_are_both_accepted(client: TestClient[Any]) -> None:
    assert client.get("/v1/executions", headers=AUTH).status_code == 200
    assert client.get("/v1/executions", headers={"X-API-Key": KEY}).status_code == 200


def test_health_ready_and_docs_need_no_key(client: TestClient[Any]) -> None:
    assert client.get("/health").json() == {"status": "ok", "checks": {}}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": "ok", "store": "ok", "keys": "ok", "serving": "ok"}
    schema = client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/v1/devices/{device_id}/commands" in schema.json()["paths"]
    assert client.get("/schema/swagger").status_code == 200


def test_the_app_refuses_to_start_without_keys(tmp_path: Path, executions: Executions) -> None:
    with pytest.raises(ValueError, match="BATON_API_KEYS"):
        create_app(Settings(data_dir=tmp_path), gateway=InMemoryGateway(executions))


# --- submit --------------------------------------------------------------------------------


def test_submit_answers_the_execution_itself(client: TestClient[Any]) -> None:
    response = submit(client, ttl=12)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id", "device_id", "name", "params", "status", "created_at",
        "updated_at", "ttl", "deadline", "result", "error", "ephemeral", "retry_of", "retries",
        "verification", "requested_by",
    }  # fmt: skip
    assert body["device_id"] == "demo-thermostat-1"
    assert body["requested_by"] == principal_of(KEY)
    assert body["name"] == "set_temperature"
    assert body["params"] == {"value": 21}
    assert body["status"] == "PENDING"
    assert body["ttl"] == 12
    assert response.headers["location"] == f"/v1/executions/{body['id']}"
    # Read-your-writes: the views already hold it.
    assert client.get(f"/v1/executions/{body['id']}", headers=AUTH).json() == body


def test_submit_uses_the_catalog_ttl_by_default(client: TestClient[Any]) -> None:
    assert submit(client).json()["ttl"] == 30


def test_unknown_device_is_a_404_problem(client: TestClient[Any]) -> None:
    body = assert_problem(submit(client, device="nope"), 404)
    assert body["code"] == "unknown-device"
    assert "nope" in body["detail"]


def test_invalid_params_are_a_422_naming_the_field(client: TestClient[Any]) -> None:
    body = assert_problem(submit(client, params={"value": 99}), 422)
    assert [e["field"] for e in body["errors"]] == ["params.value"]
    assert "35" in body["errors"][0]["reason"]
    missing = assert_problem(submit(client, params={}), 422)
    assert missing["errors"][0]["field"] == "params"
    assert "value" in missing["errors"][0]["reason"]


def test_unknown_command_is_a_422_naming_the_name(client: TestClient[Any]) -> None:
    body = assert_problem(submit(client, name="dance", params={}), 422)
    assert body["errors"][0]["field"] == "name"
    assert "set_temperature" in body["errors"][0]["reason"]


def test_body_schema_errors_are_422_problems(client: TestClient[Any]) -> None:
    typo = assert_problem(submit(client, parms={"value": 1}), 422)
    assert any("parms" in e["field"] or "parms" in e["reason"] for e in typo["errors"])
    bad_ttl = assert_problem(submit(client, ttl=0), 422)
    assert any("ttl" in e["field"] for e in bad_ttl["errors"])


def test_a_body_that_is_not_json_is_a_problem(client: TestClient[Any]) -> None:
    response = client.post(
        "/v1/devices/demo-thermostat-1/commands",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    body = assert_problem(response, 400)
    assert body["code"] == "malformed-request"
    assert "JSON" in body["detail"]


def test_refused_requests_store_nothing(client: TestClient[Any], executions: Executions) -> None:
    submit(client, params={"value": 99})
    submit(client, device="nope")
    assert (executions.recorder.max_notification_id() or 0) == 0


def test_the_deadline_is_exactly_created_at_plus_ttl(client: TestClient[Any]) -> None:
    made = submit(client, ttl=9).json()
    shown = client.get(f"/v1/executions/{made['id']}", headers=AUTH).json()
    for execution in (made, shown):
        created = datetime.fromisoformat(execution["created_at"])
        deadline = datetime.fromisoformat(execution["deadline"])
        assert deadline - created == timedelta(seconds=9), execution


def test_idempotency_key(client: TestClient[Any]) -> None:
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    url = "/v1/devices/demo-thermostat-1/commands"
    body = {"name": "set_temperature", "params": {"value": 20}}
    first = client.post(url, json=body, headers=headers)
    again = client.post(url, json=body, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post(url, json={**body, "params": {"value": 21}}, headers=headers)
    assert assert_problem(other, 409)["code"] == "idempotency-conflict"
    listed = client.get("/v1/executions", headers=AUTH).json()
    assert listed["total_count"] == 1


def test_wait_returns_once_the_execution_ended(tmp_path: Path, executions: Executions) -> None:
    with client_for(tmp_path, AnsweringGateway(executions)) as client:
        response = client.post(
            "/v1/devices/demo-thermostat-1/commands?wait=5",
            json={"name": "reboot"},
            headers=AUTH,
        )
    assert response.status_code == 201
    assert response.json()["status"] == "SUCCEEDED"
    assert response.json()["result"] == {"ok": True}


def test_wait_gives_the_state_when_the_time_is_up(client: TestClient[Any]) -> None:
    response = client.post(
        "/v1/devices/demo-silent-1/commands?wait=0.3", json={"name": "reboot"}, headers=AUTH
    )
    assert response.status_code == 201
    assert response.json()["status"] == "PENDING"


def test_wait_is_capped_at_60_seconds(client: TestClient[Any]) -> None:
    response = client.post(
        "/v1/devices/demo-silent-1/commands?wait=61", json={"name": "reboot"}, headers=AUTH
    )
    body = assert_problem(response, 422)
    assert any(e["field"] == "wait" for e in body["errors"])


# --- read ----------------------------------------------------------------------------------


def test_get_with_log(client: TestClient[Any], executions: Executions) -> None:
    execution_id = submit(client).json()["id"]
    answer(executions, UUID(execution_id), AnswerStatus.STARTED, {})
    answer(executions, UUID(execution_id), AnswerStatus.SUCCEEDED, {"current_temperature": 21})

    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(
            f"/v1/executions/{execution_id}?expand=log", headers=AUTH
        ).json()
        return body if body["status"] == "SUCCEEDED" else None

    body = poll(ended)
    assert body["result"] == {"current_temperature": 21}
    assert [(e["status"], e["payload"]) for e in body["log"]] == [
        ("STARTED", {}),
        ("SUCCEEDED", {"current_temperature": 21}),
    ]
    plain = client.get(f"/v1/executions/{execution_id}", headers=AUTH).json()
    assert "log" not in plain


def test_missing_execution_and_unknown_routes_are_404_problems(client: TestClient[Any]) -> None:
    body = assert_problem(client.get(f"/v1/executions/{uuid4()}", headers=AUTH), 404)
    assert body["code"] == "execution-not-found"
    assert_problem(client.get("/v1/nothing-here", headers=AUTH), 404)
    assert_problem(client.get("/nothing-here"), 404)


def test_wrong_method_is_a_405_problem(client: TestClient[Any]) -> None:
    response = client.delete("/v1/executions", headers=AUTH)
    assert_problem(response, 405)


def test_unexpected_errors_are_500_problems_without_internals(
    tmp_path: Path, executions: Executions
) -> None:
    with client_for(tmp_path, BrokenGateway(executions)) as client:
        response = submit(client)
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["code"] == "internal-error"


def test_an_unreachable_database_is_a_503_to_retry_not_a_500(
    tmp_path: Path, executions: Executions
) -> None:
    with client_for(tmp_path, UnreachableDatabase(executions)) as client:
        response = submit(client)
    body = assert_problem(response, 503)
    assert body["code"] == "store-unavailable"
    assert response.headers["Retry-After"] == "1"


def test_a_full_queue_of_an_offline_device_is_a_429_with_no_retry_after(
    client: TestClient[Any], executions: Executions
) -> None:
    """The commands wait for the device to come back, which no clock says: no
    `Retry-After`, and the detail says it is offline (a busy device's: tests of the
    delivery policies)."""
    executions.max_waiting = 1
    executions.record_presence("demo-thermostat-1", False, datetime.now(UTC))
    assert submit(client).status_code == 201  # waits for the device
    offline = submit(client)
    assert assert_problem(offline, 429)["code"] == "queue-full"
    assert "is offline" in offline.json()["detail"]
    assert "Retry-After" not in offline.headers


def test_list_filters_order_and_pages(client: TestClient[Any], executions: Executions) -> None:
    ids = [submit(client, params={"value": 10 + i}).json()["id"] for i in range(5)]
    other = submit(client, device="demo-thermostat-2", name="reboot", params={}).json()["id"]
    answer(executions, UUID(ids[0]), AnswerStatus.SUCCEEDED, {})
    answer(executions, UUID(ids[1]), AnswerStatus.FAILED, {"message": "x"})
    poll(lambda: client.get(f"/v1/executions/{ids[1]}", headers=AUTH).json()["status"] == "FAILED")

    def listed(path: str = "/v1/executions", **query: Any) -> dict[str, Any]:
        response = client.get(path, params=query, headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    everything = listed()
    assert everything["total_count"] == 6
    assert [i["id"] for i in everything["items"]] == [other, *reversed(ids)]
    assert [i["id"] for i in listed(order="oldest")["items"]] == [*ids, other]
    ended = listed(status="SUCCEEDED,FAILED")
    assert {i["id"] for i in ended["items"]} == {ids[0], ids[1]}
    repeated = client.get("/v1/executions?status=SUCCEEDED&status=FAILED", headers=AUTH).json()
    assert repeated["total_count"] == 2
    assert listed(name="reboot")["total_count"] == 1
    assert [i["id"] for i in listed("/v1/devices/demo-thermostat-2/executions")["items"]] == [other]
    created = everything["items"][2]["created_at"]
    assert listed(created_after=created, order="oldest")["items"][0]["id"] == ids[3]
    assert listed(created_before=created)["total_count"] == 3

    page, seen = listed(limit=2, order="oldest"), []
    while True:
        assert page["total_count"] == 6
        seen += [i["id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        page = listed(limit=2, order="oldest", cursor=page["next_cursor"])
    assert seen == [*ids, other]


def test_bad_list_queries_are_422_problems(client: TestClient[Any]) -> None:
    bad_status = assert_problem(client.get("/v1/executions?status=DONE", headers=AUTH), 422)
    assert bad_status["errors"][0]["field"] == "status"
    bad_cursor = assert_problem(client.get("/v1/executions?cursor=zzz", headers=AUTH), 422)
    assert bad_cursor["errors"][0]["field"] == "cursor"
    assert_problem(client.get("/v1/executions?limit=0", headers=AUTH), 422)
    assert_problem(client.get("/v1/executions?order=sideways", headers=AUTH), 422)


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/executions", "status=", "status"),
        ("/v1/executions", "status=%20,", "status"),
        ("/v1/executions", "status=FAILED&status=", "status"),
        ("/v1/executions", "name=", "name"),
        ("/v1/executions", "device_id=", "device_id"),
        ("/v1/devices/demo-thermostat-1/executions", "status=", "status"),
        ("/v1/devices/demo-thermostat-1/executions", "name=", "name"),
        ("/v1/events", "status=", "status"),
        ("/v1/events", "name=", "name"),
        ("/v1/events", "device_id=", "device_id"),
        # Blank: only whitespace, which matches nothing as surely as empty does.
        ("/v1/executions", "status=%20", "status"),
        ("/v1/executions", "name=%20", "name"),
        ("/v1/executions", "name=%09%20", "name"),
        ("/v1/executions", "device_id=%20", "device_id"),
        ("/v1/devices/demo-thermostat-1/executions", "status=%20", "status"),
        ("/v1/devices/demo-thermostat-1/executions", "name=%20", "name"),
        ("/v1/events", "status=%20", "status"),
        ("/v1/events", "name=%20", "name"),
        ("/v1/events", "device_id=%20", "device_id"),
    ],
)
def test_an_empty_filter_is_a_422_naming_it(
    client: TestClient[Any], path: str, query: str, field: str
) -> None:
    """`?status=` listed everything and `?name=` nothing: neither is what the asker meant.
    An empty or blank filter is refused, naming it, as an empty time, order or cursor is."""
    client.app.state.parts.live.closing.set()  # a feed taken by mistake ends at once
    submit(client)
    refused = assert_problem(client.get(f"{path}?{query}", headers=AUTH), 422)
    assert refused["code"] == "validation-failed"
    assert [e["field"] for e in refused["errors"]] == [field]
    reason = refused["errors"][0]["reason"]
    assert reason.startswith("empty") and "regex" not in reason  # said, not the pattern


@pytest.mark.parametrize("device_id", ["", " ", "\t", "no such/device"])
def test_a_webhook_for_what_can_be_no_device_is_refused(
    client: TestClient[Any], device_id: str
) -> None:
    """A webhook's device filter that no device id can match would never fire."""
    body = {"url": "http://127.0.0.1:9/hook", "events": ["*"], "device_id": device_id}
    refused = assert_problem(client.post("/v1/webhooks", json=body, headers=AUTH), 422)
    assert [e["field"] for e in refused["errors"]] == ["device_id"]
    assert client.get("/v1/webhooks", headers=AUTH).json()["items"] == []


def test_a_status_list_may_end_with_a_comma(client: TestClient[Any]) -> None:
    submit(client)
    listed = client.get("/v1/executions?status=SENT,PENDING,", headers=AUTH)
    assert listed.status_code == 200, listed.text
    assert listed.json()["total_count"] == 1


# --- cancel --------------------------------------------------------------------------------


def test_cancel_then_cancel_again(client: TestClient[Any]) -> None:
    execution_id = submit(client).json()["id"]
    canceled = client.post(
        f"/v1/executions/{execution_id}/cancel", json={"reason": "changed my mind"}, headers=AUTH
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "CANCELED"
    assert canceled.json()["error"] == {"code": "canceled", "message": "changed my mind"}
    again = client.post(f"/v1/executions/{execution_id}/cancel", headers=AUTH)
    assert assert_problem(again, 409)["code"] == "illegal-transition"
    assert client.get(f"/v1/executions/{execution_id}", headers=AUTH).json()["status"] == (
        "CANCELED"
    )


def test_the_events_name_the_key_that_asked(
    client: TestClient[Any], executions: Executions
) -> None:
    execution_id = UUID(submit(client).json()["id"])
    client.post(f"/v1/executions/{execution_id}/cancel", headers=AUTH)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert client.delete(f"/v1/executions/{execution_id}", headers=admin).status_code == 204
    events = executions.events_of(execution_id)
    who = {type(e).__name__: getattr(e, "requested_by", getattr(e, "by", None)) for e in events}
    assert who["Requested"] == who["Canceled"] == principal_of(KEY)
    assert who["Deleted"] == principal_of(ADMIN_KEY)
    assert KEY not in str(events) and ADMIN_KEY not in str(events)  # never the key itself


def test_cancel_of_a_missing_execution_is_404(client: TestClient[Any]) -> None:
    assert_problem(client.post(f"/v1/executions/{uuid4()}/cancel", headers=AUTH), 404)


def poll(probe: Any, timeout: float = 5.0) -> Any:
    from tests.conftest import eventually_sync

    return eventually_sync(probe, timeout=timeout)


# --- retry, delete, purge, ephemeral ---------------------------------------------------------


def test_retry_makes_a_new_execution_linked_both_ways(client: TestClient[Any]) -> None:
    first = submit(client, ttl=9).json()
    running = client.post(f"/v1/executions/{first['id']}/retry", headers=AUTH)
    assert assert_problem(running, 409)["code"] == "illegal-transition"
    client.post(f"/v1/executions/{first['id']}/cancel", headers=AUTH)
    retried = client.post(f"/v1/executions/{first['id']}/retry", headers=AUTH)
    assert retried.status_code == 201, retried.text
    second = retried.json()
    assert second["id"] != first["id"]
    assert (second["retry_of"], second["status"], second["ttl"]) == (first["id"], "PENDING", 9)
    assert retried.headers["location"] == f"/v1/executions/{second['id']}"
    assert client.get(f"/v1/executions/{first['id']}", headers=AUTH).json()["retries"] == [
        second["id"]
    ]
    assert_problem(client.post(f"/v1/executions/{uuid4()}/retry", headers=AUTH), 404)


def test_a_retry_sent_again_with_its_idempotency_key_is_the_same_retry(
    client: TestClient[Any],
) -> None:
    first = submit(client).json()
    client.post(f"/v1/executions/{first['id']}/cancel", headers=AUTH)
    url = f"/v1/executions/{first['id']}/retry"
    keyed = {**AUTH, "Idempotency-Key": "redo-1"}
    made, again = client.post(url, headers=keyed), client.post(url, headers=keyed)
    assert (made.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == made.json()["id"]
    assert again.headers["location"] == f"/v1/executions/{made.json()['id']}"
    assert client.get(f"/v1/executions/{first['id']}", headers=AUTH).json()["retries"] == [
        made.json()["id"]
    ]
    unkeyed = client.post(url, headers=AUTH)
    assert unkeyed.status_code == 201 and unkeyed.json()["id"] != made.json()["id"]
    blank = client.post(url, headers={**AUTH, "Idempotency-Key": " "})
    assert assert_problem(blank, 422)["errors"][0]["field"] == "Idempotency-Key"


def test_a_retry_refuses_a_body_it_would_ignore(client: TestClient[Any]) -> None:
    first = submit(client, ttl=9).json()
    client.post(f"/v1/executions/{first['id']}/cancel", headers=AUTH)
    url = f"/v1/executions/{first['id']}/retry"
    with_ttl = client.post(url, json={"ttl": 5}, headers=AUTH)
    assert [e["field"] for e in assert_problem(with_ttl, 422)["errors"]] == ["ttl"]
    not_json = client.post(
        url, content=b"not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_problem(not_json, 400)
    assert client.get(f"/v1/executions/{first['id']}", headers=AUTH).json()["retries"] == []
    assert client.post(url, json={}, headers=AUTH).status_code == 201


def test_a_deleted_executions_key_is_refused_as_used_not_as_different(
    client: TestClient[Any],
) -> None:
    headers = {**AUTH, "Idempotency-Key": "del-1"}
    url = "/v1/devices/demo-thermostat-1/commands"
    body = {"name": "set_temperature", "params": {"value": 20}}
    made = client.post(url, json=body, headers=headers).json()
    assert client.delete(f"/v1/executions/{made['id']}", headers=ADMIN).status_code == 204
    again = assert_problem(client.post(url, json=body, headers=headers), 409)
    assert again["code"] == "idempotency-conflict"
    assert "since deleted" in again["detail"] and "different" not in again["detail"]


def test_delete_is_for_admins_and_removes_from_every_view(
    client: TestClient[Any], executions: Executions
) -> None:
    execution_id = submit(client).json()["id"]
    forbidden = client.delete(f"/v1/executions/{execution_id}", headers=AUTH)
    assert assert_problem(forbidden, 403)["code"] == "forbidden"
    deleted = client.delete(f"/v1/executions/{execution_id}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text
    assert_problem(client.get(f"/v1/executions/{execution_id}", headers=AUTH), 404)
    assert client.get("/v1/executions", headers=AUTH).json()["total_count"] == 0
    assert_problem(client.delete(f"/v1/executions/{execution_id}", headers=ADMIN), 404)
    # The stream keeps it all: the running execution was canceled, then deleted.
    types = [type(e).__name__ for e in executions.events_of(UUID(execution_id))]
    assert types[-2:] == ["Canceled", "Deleted"]


def test_purge_deletes_what_is_older_than_the_cutoff(client: TestClient[Any]) -> None:
    old = submit(client).json()["id"]
    assert (
        assert_problem(
            client.post("/v1/executions/purge", json={"older_than_days": 1}, headers=AUTH), 403
        )["code"]
        == "forbidden"
    )
    assert_problem(
        client.post("/v1/executions/purge", json={"older_than_days": 0}, headers=ADMIN), 422
    )
    kept = client.post("/v1/executions/purge", json={"older_than_days": 1}, headers=ADMIN)
    assert kept.status_code == 200, kept.text
    assert kept.json()["deleted"] == 0
    # A cutoff a millisecond ago takes everything made before it.
    purged = client.post(
        "/v1/executions/purge", json={"older_than_days": 1e-8}, headers=ADMIN
    ).json()
    assert purged["deleted"] == 1
    assert_problem(client.get(f"/v1/executions/{old}", headers=AUTH), 404)


def test_ephemeral_executions_are_listed_only_when_asked_for(client: TestClient[Any]) -> None:
    kept = submit(client).json()["id"]
    ephemeral = submit(client, ephemeral=True).json()
    assert ephemeral["ephemeral"] is True
    listed = client.get("/v1/executions", headers=AUTH).json()
    assert [i["id"] for i in listed["items"]] == [kept]
    everything = client.get("/v1/executions", params={"show": "ALL"}, headers=AUTH).json()
    assert {i["id"] for i in everything["items"]} == {kept, ephemeral["id"]}
    assert everything["total_count"] == 2
    assert client.get(f"/v1/executions/{ephemeral['id']}", headers=AUTH).status_code == 200


def test_ephemeral_executions_are_purged_after_the_retention(
    tmp_path: Path, executions: Executions
) -> None:
    from baton_api.retention import RetentionSweeper

    with client_for(tmp_path, InMemoryGateway(executions)) as client:
        ephemeral = submit(client, ephemeral=True).json()["id"]
        kept = submit(client).json()["id"]
        service = client.app.dependencies["service"].dependency()  # the app's own service
        later = datetime.now(UTC) + timedelta(days=7, seconds=1)
        sweeper = RetentionSweeper(service, retention_days=7, interval=3600, clock=lambda: later)
        assert client.blocking_portal.call(sweeper.sweep) == 1
        assert_problem(client.get(f"/v1/executions/{ephemeral}", headers=AUTH), 404)
        assert client.get(f"/v1/executions/{kept}", headers=AUTH).status_code == 200
        assert client.blocking_portal.call(sweeper.sweep) == 0


def test_the_query_guard_reads_each_route_once(client: TestClient[Any]) -> None:
    """The guard that refuses unknown query parameters learns a route's parameters once: it
    used to cache them on the handler object, which is new on every request, so every request
    paid Litestar's signature parsing again and left one more entry behind."""
    from baton_api import controllers

    for _ in range(3):
        submit(client)
        listed = client.get("/v1/executions", params={"status": "SENT"}, headers=AUTH)
        assert listed.status_code == 200
    learned = len(controllers._DECLARED)
    for _ in range(5):
        submit(client)
        listed = client.get("/v1/executions", params={"status": "SENT"}, headers=AUTH)
        assert listed.status_code == 200
    assert len(controllers._DECLARED) == learned


# --- the change feed's retention -----------------------------------------------------------


def test_resuming_below_the_pruned_feed_is_410_feed_expired(client: TestClient[Any]) -> None:
    execution_id = submit(client).json()["id"]
    parts = client.app.state.parts
    poll(lambda: parts.views.changes(ChangeFilter(tenant=None), 0, 10) or None)
    assert parts.views.prune_changes(datetime.now(UTC) + timedelta(days=1)) > 0
    floor = parts.views.change_floor()

    for path in ("/v1/events", f"/v1/executions/{execution_id}/events"):
        gone = client.get(path, headers={**AUTH, "Last-Event-ID": str(floor - 1)})
        assert assert_problem(gone, 410)["code"] == "feed-expired", path
        assert f"up to position {floor}" in gone.json()["detail"]
    parts.live.closing.set()  # the streams end at once: their answers can be read whole
    kept = client.get("/v1/events", headers={**AUTH, "Last-Event-ID": str(floor)})
    assert kept.status_code == 200
    assert client.get(f"/v1/executions/{execution_id}/events", headers=AUTH).status_code == 200


def test_the_feed_says_a_time_as_the_execution_does(client: TestClient[Any]) -> None:
    """UTC with `Z` (docs/api.md), not the views' stored `+00:00`: the moment an execution
    was requested reads the same in its `created_at` and in its `Requested` change."""
    execution = submit(client).json()
    client.post(f"/v1/executions/{execution['id']}/cancel", headers=AUTH)  # the stream ends
    parts = client.app.state.parts
    where = ChangeFilter(tenant=None, execution_id=UUID(execution["id"]))
    poll(lambda: [c for c in parts.views.changes(where, 0, 10) if c.status == "CANCELED"] or None)
    feed = client.get(f"/v1/executions/{execution['id']}/events", headers=AUTH)
    data = [
        json.loads(line[len("data: ") :]) for line in feed.text.splitlines() if line[:6] == "data: "
    ]
    requested = next(d for d in data if d["event"] == "Requested")
    assert requested["at"] == execution["created_at"]
    assert all(d["at"].endswith("Z") for d in data)


def test_resuming_after_an_id_the_feed_never_reached_starts_afresh(
    client: TestClient[Any],
) -> None:
    """An id from before the feed was built again (its positions start lower): waiting for
    the positions to pass it would hide every change until then."""
    execution_id = submit(client).json()["id"]
    client.post(f"/v1/executions/{execution_id}/cancel", headers=AUTH)
    parts = client.app.state.parts
    where = ChangeFilter(tenant=None, execution_id=UUID(execution_id))
    poll(lambda: [c for c in parts.views.changes(where, 0, 10) if c.status == "CANCELED"] or None)
    path = f"/v1/executions/{execution_id}/events"
    resumed = client.get(path, headers={**AUTH, "Last-Event-ID": str(10**15)})
    afresh = client.get(path, headers=AUTH)
    assert resumed.status_code == afresh.status_code == 200
    assert "event: Canceled" in resumed.text
    assert resumed.text == afresh.text  # the execution's changes from its first


def test_no_guard_runs_in_a_worker_thread(client: TestClient[Any]) -> None:
    """Litestar runs a plain-function guard in a worker thread: two thread hops on every
    request (the query guard and the role guard) for a comparison each. Every guard of
    every route is a coroutine function, which Litestar awaits in place."""
    guards = [
        guard
        for route in client.app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for guard in handler.resolve_guards()
    ]
    assert guards
    assert [g for g in guards if isinstance(g, AsyncCallable)] == []
