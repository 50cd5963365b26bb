"""The catalog as managed data, through Baton v1: device types and devices are created,
read, updated, listed and deleted; every change is checked against the whole catalog
(422 naming the field), needs an admin key, and takes effect for new commands at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from baton_domain.catalog_document import CATALOG_ID
from tests.unit.test_api import ADMIN, AUTH, assert_problem, client_for, executions, submit

__all__ = ["executions"]  # the fixture, shared with test_api

LAMP = {
    "ttl": 12,
    "commands": {
        "change_lux": {
            "aliases": ["change_color_temperature"],
            "params": {"type": "object", "properties": {"temp_kelvins": {"type": "integer"}}},
        }
    },
}


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, InMemoryGateway(executions)) as test_client:
        yield test_client


def test_the_catalog_starts_as_the_seed(client: TestClient[Any]) -> None:
    types = client.get("/v1/device-types", headers=AUTH).json()
    assert [t["name"] for t in types["items"]] == ["thermostat"]
    assert types["total_count"] == 1
    devices = client.get("/v1/devices", headers=AUTH).json()
    assert devices["total_count"] == 6
    device = client.get("/v1/devices/demo-thermostat-1", headers=AUTH).json()
    assert (device["id"], device["type"]) == ("demo-thermostat-1", "thermostat")
    assert_problem(client.get("/v1/devices/nope", headers=AUTH), 404)
    assert_problem(client.get("/v1/device-types/nope", headers=AUTH), 404)


def test_create_update_and_delete_a_type_and_a_device(
    client: TestClient[Any], executions: Executions
) -> None:
    created = client.post(
        "/v1/device-types", json={"name": "lamp", "definition": LAMP}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    assert created.json()["ttl"] == 12
    device = client.post(
        "/v1/devices", json={"id": "lamp-1", "type": "lamp", "labels": {"site": "x"}}, headers=ADMIN
    )
    assert device.status_code == 201, device.text
    # New commands see it at once, aliases included.
    sent = submit(client, device="lamp-1", name="change_color_temperature", params={})
    assert sent.status_code == 201, sent.text
    assert sent.json()["name"] == "change_lux"

    updated = client.put("/v1/device-types/lamp", json={**LAMP, "ttl": 20}, headers=ADMIN)
    assert updated.json()["ttl"] == 20
    moved = client.put("/v1/devices/lamp-1", json={"type": "thermostat"}, headers=ADMIN)
    assert moved.json()["type"] == "thermostat"
    assert client.delete("/v1/device-types/lamp", headers=ADMIN).status_code == 204
    assert client.delete("/v1/devices/lamp-1", headers=ADMIN).status_code == 204
    assert_problem(submit(client, device="lamp-1"), 404)
    # Every change is an event on the catalog's own stream.
    kinds = [type(e).__name__ for e in executions.repository.event_store.get(CATALOG_ID)]
    assert kinds == [
        "Started", "DeviceTypePut", "DevicePut", "DeviceTypePut", "DevicePut",
        "DeviceTypeRemoved", "DeviceRemoved",
    ]  # fmt: skip


def test_wrong_changes_are_422_naming_the_field_and_change_nothing(
    client: TestClient[Any], executions: Executions
) -> None:
    before = client.get("/v1/catalog", headers=AUTH).json()
    bad_ttl = client.put("/v1/device-types/lamp", json={"ttl": 0}, headers=ADMIN)
    assert assert_problem(bad_ttl, 422)["errors"][0]["field"] == "device_types.lamp.ttl"
    bad_schema = client.put(
        "/v1/device-types/lamp", json={"commands": {"x": {"params": {"type": 5}}}}, headers=ADMIN
    )
    assert "params" in assert_problem(bad_schema, 422)["errors"][0]["field"]
    unknown_type = client.post("/v1/devices", json={"id": "d-1", "type": "nope"}, headers=ADMIN)
    assert "unknown type 'nope'" in assert_problem(unknown_type, 422)["errors"][0]["reason"]
    bad_id = client.post("/v1/devices", json={"id": "bad id!", "type": "thermostat"}, headers=ADMIN)
    assert assert_problem(bad_id, 422)["errors"][0]["field"] == "devices.6.id"
    in_use = client.delete("/v1/device-types/thermostat", headers=ADMIN)
    assert assert_problem(in_use, 409)["code"] == "catalog-conflict"
    assert_problem(client.delete("/v1/devices/nope", headers=ADMIN), 404)
    assert client.get("/v1/catalog", headers=AUTH).json() == before


def test_changing_the_catalog_needs_an_admin_key(client: TestClient[Any]) -> None:
    assert_problem(client.put("/v1/device-types/lamp", json=LAMP, headers=AUTH), 403)
    assert_problem(
        client.post("/v1/devices", json={"id": "x", "type": "thermostat"}, headers=AUTH), 403
    )
    assert_problem(client.put("/v1/catalog", json={}, headers=AUTH), 403)


def test_import_replaces_the_whole_document(client: TestClient[Any]) -> None:
    document = {"device_types": {"lamp": LAMP}, "devices": [{"id": "lamp-1", "type": "lamp"}]}
    imported = client.put("/v1/catalog", json=document, headers=ADMIN)
    assert imported.status_code == 200, imported.text
    assert client.get("/v1/catalog", headers=AUTH).json() == document
    assert [d["id"] for d in client.get("/v1/devices", headers=AUTH).json()["items"]] == ["lamp-1"]
    wrong = client.put("/v1/catalog", json={"devices": [{"id": "a", "type": "x"}]}, headers=ADMIN)
    assert_problem(wrong, 422)
    assert client.get("/v1/catalog", headers=AUTH).json() == document


def test_a_params_schema_baton_would_not_run_is_422_naming_the_field(
    client: TestClient[Any],
) -> None:
    """A regex RE2 cannot run, or a $ref out of the schema, is refused when the type is saved,
    by PUT and by import alike; a catastrophic pattern RE2 can run is accepted and fast."""
    before = client.get("/v1/catalog", headers=AUTH).json()
    for params, field in [
        ({"properties": {"s": {"pattern": "^(?=a)"}}}, "properties.s.pattern"),
        ({"$ref": "http://127.0.0.1:29997/s.json"}, "$ref"),
        ({"$ref": "file:///etc/passwd"}, "$ref"),
    ]:
        definition = {"commands": {"c": {"params": params}}}
        put = client.put("/v1/device-types/bad", json=definition, headers=ADMIN)
        problem = assert_problem(put, 422)
        assert problem["code"] == "invalid-catalog"
        assert problem["errors"][0]["field"] == f"device_types.bad.commands.c.params.{field}"
        imported = client.put(
            "/v1/catalog", json={"device_types": {"bad": definition}}, headers=ADMIN
        )
        assert assert_problem(imported, 422)["errors"][0]["field"].endswith(field)
    assert client.get("/v1/catalog", headers=AUTH).json() == before

    redos = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    put = client.put(
        "/v1/device-types/redos", json={"commands": {"c": {"params": redos}}}, headers=ADMIN
    )
    assert put.status_code == 200, put.text
    added = client.post("/v1/devices", json={"id": "r-1", "type": "redos"}, headers=ADMIN)
    assert added.status_code == 201, added.text
    refused = submit(client, device="r-1", name="c", params={"s": "a" * 5000 + "!"})
    assert assert_problem(refused, 422)["errors"][0]["field"] == "params.s"
