"""`GET /v1/devices`: each device with its presence, when it was last seen and its queue, a
`type` filter, and pages by id with a cursor; a cursor that is not one is a 422."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from tests.unit.test_api import ADMIN, AUTH, assert_problem, client_for, executions, submit

__all__ = ["executions"]  # the fixture, shared with test_api

SEEN = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, InMemoryGateway(executions)) as test_client:
        yield test_client


def test_each_device_has_its_presence_last_seen_and_queue(
    client: TestClient[Any], executions: Executions
) -> None:
    executions.record_presence("demo-thermostat-1", True, SEEN)
    executions.record_presence("demo-thermostat-2", False, SEEN)
    assert submit(client, "demo-thermostat-1").status_code == 201
    assert submit(client, "demo-thermostat-2").status_code == 201  # waits: offline

    devices = {d["id"]: d for d in client.get("/v1/devices", headers=AUTH).json()["items"]}

    first, second, third = (devices[f"demo-thermostat-{n}"] for n in (1, 2, 3))
    assert (first["presence"], first["last_seen"]) == ("online", "2026-05-01T12:00:00Z")
    assert first["queue"] == {"waiting": 0, "in_flight": 1, "cooldowns": {}}
    assert (second["presence"], second["last_seen"]) == ("offline", "2026-05-01T12:00:00Z")
    assert second["queue"] == {"waiting": 1, "in_flight": 0, "cooldowns": {}}
    assert (third["presence"], third["last_seen"]) == ("unknown", None)
    one = client.get("/v1/devices/demo-thermostat-2", headers=AUTH).json()
    assert one == second


def test_a_command_cooling_down_shows_when_it_may_run_again(
    client: TestClient[Any], executions: Executions
) -> None:
    lamp = {"commands": {"blink": {"cooldown": 600}}}
    created = client.post(
        "/v1/device-types", json={"name": "lamp", "definition": lamp}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    device = client.post("/v1/devices", json={"id": "lamp-1", "type": "lamp"}, headers=ADMIN)
    assert device.status_code == 201, device.text
    assert submit(client, "lamp-1", name="blink", params={}).status_code == 201

    lamp_1 = client.get("/v1/devices/lamp-1", headers=AUTH).json()

    ends = datetime.fromisoformat(lamp_1["queue"]["cooldowns"]["blink"])
    assert 590 < (ends - datetime.now(UTC)).total_seconds() <= 600


def test_devices_page_by_id_with_a_cursor_and_filter_by_type(
    client: TestClient[Any],
) -> None:
    lamp: dict[str, Any] = {"commands": {"blink": {}}}
    assert client.post(
        "/v1/device-types", json={"name": "lamp", "definition": lamp}, headers=ADMIN
    ).is_success
    assert client.post(
        "/v1/devices", json={"id": "a-lamp", "type": "lamp"}, headers=ADMIN
    ).is_success

    seen: list[str] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/devices", params=query, headers=AUTH).json()
        assert page["total_count"] == 7
        assert len(page["items"]) <= 3
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == 7 and seen[0] == "a-lamp"

    lamps = client.get("/v1/devices", params={"type": "lamp"}, headers=AUTH).json()
    assert ([d["id"] for d in lamps["items"]], lamps["total_count"]) == (["a-lamp"], 1)
    none = client.get("/v1/devices", params={"type": "nope"}, headers=AUTH).json()
    assert none == {"items": [], "total_count": 0, "next_cursor": None}


@pytest.mark.parametrize("query", [{"cursor": "%%%"}, {"limit": 0}, {"limit": 501}, {"typ": "x"}])
def test_bad_paging_is_a_problem(client: TestClient[Any], query: dict[str, Any]) -> None:
    assert_problem(client.get("/v1/devices", params=query, headers=AUTH), 422)


@pytest.mark.parametrize("blank", ["", "%20", "%09%20"])
def test_an_empty_type_filter_is_a_422_naming_it(client: TestClient[Any], blank: str) -> None:
    """Not a list of the devices whose type is "" or " " (none): as `?name=` of executions."""
    refused = assert_problem(client.get(f"/v1/devices?type={blank}", headers=AUTH), 422)
    assert refused["code"] == "validation-failed"
    assert [e["field"] for e in refused["errors"]] == ["type"]


@pytest.mark.parametrize(
    "cursor",
    [
        "",  # empty
        "%%%",  # not base64
        "WyJuZXdlc3QiLDEsMl0",  # base64 of JSON, not a devices cursor
        "ZGVtby10aGVybW9zdGF0LTE",  # base64 of a bare device id
        "WyJkZXZpY2VzIiwiIl0",  # a devices cursor with no id
    ],
)
def test_a_cursor_the_devices_list_did_not_give_is_refused(
    client: TestClient[Any], cursor: str
) -> None:
    answer = client.get("/v1/devices", params={"cursor": cursor}, headers=AUTH)
    refused = assert_problem(answer, 422)
    assert refused["code"] == "invalid-query"
    assert [e["field"] for e in refused["errors"]] == ["cursor"]


def test_a_device_as_get_gives_it_can_be_written_back(
    client: TestClient[Any], executions: Executions
) -> None:
    executions.record_presence("demo-thermostat-1", True, SEEN)
    device = client.get("/v1/devices/demo-thermostat-1", headers=AUTH).json()
    device["labels"] = {"room": "attic"}

    replaced = client.put("/v1/devices/demo-thermostat-1", json=device, headers=ADMIN)

    assert replaced.status_code == 200, replaced.text
    assert replaced.json() == {
        "id": "demo-thermostat-1",
        "type": device["type"],
        "hardware_id": device["hardware_id"],
        "labels": {"room": "attic"},
        "tenant": device["tenant"],
    }
    again = client.get("/v1/devices/demo-thermostat-1", headers=AUTH).json()
    assert (again["labels"], again["presence"]) == ({"room": "attic"}, "online")
