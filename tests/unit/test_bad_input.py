"""Bad input never reaches a 5xx, and every refusal is a problem document that names a real
field with a real reason (issue 6: defects 1, 2, 3, 8, 9, 11, 16, 18, 19).

The api over the in-memory stand-ins with the seeds catalog (dialect_support), so the v1
routes and every dialect are reached with the same keys.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from baton_contracts.nats import CatalogChange, CatalogQuery
from baton_domain.catalog_document import CatalogDocument
from baton_domain.errors import CatalogConflict, InvalidCatalog
from baton_platform.commands import WIRE, CommandHandlers
from tests.unit.dialect_support import (
    ADMIN_KEY,
    Clock,
    Stand,
    assert_problem,
    seeds_executions,
    stand,
)

__all__ = ["stand"]  # the fixture

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
JSON = {**ADMIN, "Content-Type": "application/json"}
IOTEE = "a1b2c3d4"
FLEETS = "thermostat-001"
ENAPTER = "fecbbba0-79f2-4e9e-a6f0-69a310ab110b"
TRAXES = "8667fb97-68f2-485a-87c7-f3bdfa9482e1"

# What each path parameter is filled with, so the request reaches the body decode.
PATH_VALUES = {
    "device_id": IOTEE,
    "device_ref": IOTEE,
    "entity_id": TRAXES,
    "execution_id": str(uuid4()),
    "command_id": str(uuid4()),
    "webhook_id": str(uuid4()),
    "name": "iotee_device",
    "path": "openapi.json",
    "file_path": "swagger-ui/swagger-ui.css",  # the doc pages' assets (apidocs.py)
}
# Where one parameter name means different files: the console's static files.
PATH_VALUES_UNDER = {"/console": {"file_path": "console.css"}}


def filled(path: str) -> str:
    """`path` with each parameter filled from PATH_VALUES (PATH_VALUES_UNDER first)."""
    values = dict(PATH_VALUES)
    for prefix, under in PATH_VALUES_UNDER.items():
        if path.startswith(prefix):
            values |= under
    return re.sub(r"{(\w+):\w+}", lambda m: values[m.group(1)], path)


def json_body_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every route whose handler takes a JSON body (`data`)."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if "data" not in handler.parsed_fn_signature.parameters:
                continue
            path = filled(route.path)
            found += [(method, path) for method in sorted(handler.http_methods)]
    return sorted(found)


def get_routes(app: Litestar) -> list[str]:
    """The path of every GET route, its parameters filled in."""
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute) and "GET" in route.methods:
            found.append(filled(route.path))
    return sorted(found)


# --- 1: undecodable bodies are 400 ----------------------------------------------------------

INVALID_UTF8 = b'{"name":"reboot","x":"\xff"}'
DEEPLY_NESTED = b"[" * 10_000


def test_every_json_body_route_is_covered(stand: Stand) -> None:
    routes = json_body_routes(stand.client.app)
    assert ("POST", f"/v1/devices/{IOTEE}/commands") in routes
    assert ("POST", "/iotee/commands/purge") in routes
    assert ("POST", "/fleets/api/v1/commands") in routes
    assert ("POST", f"/traxes/v1/entities/{TRAXES}/commands") in routes
    assert ("POST", f"/enapter/v3/devices/{IOTEE}/execute_command") in routes
    assert ("PUT", "/v1/catalog") in routes
    assert len(routes) >= 14


@pytest.mark.parametrize(
    "body",
    [INVALID_UTF8, DEEPLY_NESTED, b'{"name":'],
    ids=["invalid-utf8", "nested", "not-json"],
)
def test_an_undecodable_body_is_a_400_on_every_json_route(stand: Stand, body: bytes) -> None:
    for method, path in json_body_routes(stand.client.app):
        response = stand.client.request(method, path, content=body, headers=JSON)
        problem = assert_problem(response, 400)
        assert problem["code"] == "malformed-request", (method, path, problem)
        assert "body" in problem["detail"]


def test_nothing_was_submitted_for_an_undecodable_body(stand: Stand) -> None:
    stand.client.post(f"/v1/devices/{IOTEE}/commands", content=INVALID_UTF8, headers=JSON)
    assert stand.gateway.submitted == []


# --- 2: purge's age is bounded ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/executions/purge", "/iotee/commands/purge"])
@pytest.mark.parametrize("days", [b"1e308", b"99999999999999999999", b"36501"])
def test_a_huge_purge_age_is_a_422_naming_the_field(stand: Stand, path: str, days: bytes) -> None:
    body = b'{"older_than_days": ' + days + b"}"
    problem = assert_problem(stand.client.post(path, content=body, headers=JSON), 422)
    assert [e["field"] for e in problem["errors"]] == ["older_than_days"]
    assert "36500" in problem["errors"][0]["reason"]


@pytest.mark.parametrize("path", ["/v1/executions/purge", "/iotee/commands/purge"])
def test_the_largest_purge_age_is_accepted(stand: Stand, path: str) -> None:
    response = stand.client.post(path, json={"older_than_days": 36500}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] == 0


# --- 3: huge page numbers and offsets ---------------------------------------------------------


def test_a_huge_fleets_page_is_a_422_naming_it(stand: Stand) -> None:
    response = stand.client.get("/fleets/api/v1/commands?page=99999999999999999999", headers=ADMIN)
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == ["page"]


def test_the_largest_fleets_page_is_an_empty_page(stand: Stand) -> None:
    response = stand.client.get("/fleets/api/v1/commands?page=2147483647&limit=500", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []
    assert response.json()["meta"]["hasnext"] is False


def test_an_enapter_offset_past_the_end_is_an_empty_list(stand: Stand) -> None:
    """The seed: "If offset is greater than total_count, an empty list is returned"."""
    stand.client.post(
        f"/enapter/v3/devices/{ENAPTER}/command_executions",
        json={"name": "change_lux", "arguments": {"temp_kelvins": 2000}},
        headers=ADMIN,
    )
    for offset in ["100000000000000000000", str(2**63), "5"]:
        response = stand.client.get(
            f"/enapter/v3/devices/{ENAPTER}/command_executions?offset={offset}", headers=ADMIN
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"executions": [], "total_count": 1}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/executions?limit=99999999999999999999",
        f"/v1/devices/{IOTEE}/executions?limit=99999999999999999999",
        "/fleets/api/v1/commands?limit=99999999999999999999",
        f"/enapter/v3/devices/{ENAPTER}/command_executions?limit=99999999999999999999",
        f"/iotee/devices/{IOTEE}/commands?limit=99999999999999999999",
        "/iotee/commands?limit=99999999999999999999",
        "/v1/executions?created_after=9999-12-31T23:59:59-14:00",
    ],
)
def test_other_huge_numbers_in_queries_are_no_server_error(stand: Stand, path: str) -> None:
    response = stand.client.get(path, headers=ADMIN)
    assert response.status_code in (200, 422), response.text


# --- 8: device-type names have a pattern ------------------------------------------------------

BAD_TYPE_NAME = "bad\u0000name\n<script>"


def test_a_device_type_name_outside_the_pattern_is_a_422_naming_it(stand: Stand) -> None:
    response = stand.client.post(
        "/v1/device-types", json={"name": BAD_TYPE_NAME, "definition": {}}, headers=ADMIN
    )
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == ["name"]
    names = stand.client.get("/v1/device-types", headers=ADMIN).json()["items"]
    assert BAD_TYPE_NAME not in [t["name"] for t in names]


def test_the_http_schema_declares_the_device_type_pattern(stand: Stand) -> None:
    schema = stand.client.get("/schema/openapi.json").json()
    named = schema["components"]["schemas"]["NamedDeviceType"]["properties"]["name"]
    assert named["pattern"].startswith("^[A-Za-z]")


@pytest.mark.parametrize(
    "change",
    [
        {"op": "put-device-type", "name": BAD_TYPE_NAME, "definition": {}},
        {"op": "create-device-type", "name": "a b", "definition": {}},
        {"op": "import", "document": {"device_types": {BAD_TYPE_NAME: {}}}},
    ],
    ids=["put", "create", "import"],
)
def test_the_domain_refuses_a_device_type_name_outside_the_pattern(change: dict[str, Any]) -> None:
    """NATS and `baton catalog import` reach the same check as HTTP."""
    handlers = CommandHandlers(seeds_executions(Clock()))
    reply = handlers.change_catalog(CatalogChange.model_validate(change))
    assert reply.problem is not None and reply.problem.status == 422
    fields = {e.field for e in reply.problem.errors}
    assert fields in ({"name"}, {"device_types"}), fields
    assert all(BAD_TYPE_NAME in e.reason or "must match" in e.reason for e in reply.problem.errors)


def test_a_device_type_path_name_outside_the_pattern_is_a_422(stand: Stand) -> None:
    response = stand.client.put("/v1/device-types/bad name", json={}, headers=ADMIN)
    assert [e["field"] for e in assert_problem(response, 422)["errors"]] == ["name"]


# --- 9: public request bodies are strict -----------------------------------------------------

SUBMIT = f"/v1/devices/{FLEETS}/commands"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (SUBMIT, {"name": "setTemperature", "params": {"value": 20}, "ttl": True}, "ttl"),
        (SUBMIT, {"name": "setTemperature", "params": {"value": 20}, "ttl": "30"}, "ttl"),
        (SUBMIT, {"name": "setTemperature", "ephemeral": "true"}, "ephemeral"),
        (SUBMIT, {"name": "setTemperature", "ephemeral": 1}, "ephemeral"),
        (SUBMIT, {"name": 5}, "name"),
        ("/v1/executions/purge", {"older_than_days": "30"}, "older_than_days"),
        ("/v1/executions/purge", {"older_than_days": True}, "older_than_days"),
        ("/v1/device-types", {"name": 7, "definition": {}}, "name"),
        (
            "/fleets/api/v1/commands",
            {"thingId": FLEETS, "action": "setTemperature", "ttl": True},
            "ttl",
        ),
        ("/fleets/api/v1/commands", {"thingId": FLEETS, "action": "x", "ttl": "30"}, "ttl"),
        ("/fleets/api/v1/commands", {"thingId": 5, "action": "x"}, "thingId"),
        (
            f"/enapter/v3/devices/{ENAPTER}/command_executions",
            {"name": "change_lux", "ephemeral": "yes"},
            "ephemeral",
        ),
        (f"/traxes/v1/entities/{TRAXES}/commands", {"type": "Reset", "value": 5}, "value"),
        (f"/iotee/devices/{IOTEE}/commands", {"command": "lock", "device_type": 1}, "device_type"),
        ("/iotee/commands/purge", {"older_than_days": "90"}, "older_than_days"),
        ("/iotee/commands/purge", {"older_than_days": True}, "older_than_days"),
    ],
)
def test_no_coercion_in_request_bodies(
    stand: Stand, path: str, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(stand.client.post(path, json=body, headers=ADMIN), 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert stand.gateway.submitted == []


def test_an_integral_float_is_still_a_number_of_days(stand: Stand) -> None:
    response = stand.client.post("/v1/executions/purge", json={"older_than_days": 1}, headers=ADMIN)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/device-types", {"name": "lamp", "definition": {"ttl": "30"}}, ".lamp.ttl"),
        ("/v1/device-types", {"name": "lamp", "definition": {"ttl": True}}, ".lamp.ttl"),
        ("/v1/devices", {"id": "d-1", "type": "iotee_device", "labels": {"a": 1}}, ".labels.a"),
    ],
)
def test_no_coercion_in_catalog_bodies(
    stand: Stand, path: str, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(stand.client.post(path, json=body, headers=ADMIN), 422)
    assert any(e["field"].endswith(field) for e in problem["errors"]), problem


def test_stored_catalog_documents_are_still_read_leniently() -> None:
    """Strictness is for changes: a catalog stored before (a lax type, an unchecked name)
    keeps loading, and a change names what has to be fixed."""
    document = CatalogDocument({"device_types": {"lamp": {"ttl": "30"}, "my lamp": {}}})
    assert document.catalog.device_types["lamp"].ttl == 30
    assert "my lamp" in document.catalog.device_types
    with pytest.raises(InvalidCatalog) as refused:
        document.put_device_type("relay", {}, wire=WIRE)
    assert [e.field for e in refused.value.errors] == ["device_types.lamp.ttl"]
    with pytest.raises(InvalidCatalog) as refused:
        document.put_device_type("lamp", {"ttl": 30}, wire=WIRE)  # only the stored name is left
    assert [e.field for e in refused.value.errors] == ["device_types"]
    assert "'my lamp'" in refused.value.errors[0].reason
    document.remove_device_type("my lamp")
    document.put_device_type("lamp", {"ttl": 30}, wire=WIRE)
    document.put_device_type("relay", {}, wire=WIRE)


def test_no_catalog_change_holds_a_number_json_cannot_carry(stand: Stand) -> None:
    """1e400 (like NaN and the infinities) is no JSON number: the api's decode refuses it,
    and a change that reaches the dispatcher otherwise (NATS, whose decoder reads NaN) is
    refused naming the field, as `baton catalog import --dry-run` names it."""
    body = b'{"name": "lamp", "definition": {"wire": {"gain": 1e400}}}'
    assert_problem(stand.client.post("/v1/device-types", content=body, headers=JSON), 400)
    handlers = CommandHandlers(seeds_executions(Clock()))
    change = CatalogChange.model_validate_json(
        b'{"op": "put-device-type", "name": "lamp", "definition": {"wire": {"gain": NaN}}}'
    )
    problem = handlers.change_catalog(change).problem
    assert problem is not None and problem.code == "invalid-catalog"
    assert [e.field for e in problem.errors] == ["device_types.lamp.wire.gain"]
    assert "lamp" not in (handlers.get_catalog(CatalogQuery()).document or {})["device_types"]
    stored = CatalogDocument({"device_types": {"lamp": {"wire": {"gain": float("nan")}}}})
    assert stored.catalog.device_types["lamp"].wire  # what is stored stays readable


# --- 11: HEAD answers like GET, without a body ------------------------------------------------


def test_head_answers_like_get_on_every_get_route(stand: Stand) -> None:
    paths = get_routes(stand.client.app)
    assert "/health" in paths and "/schema" in paths and "/v1/executions" in paths
    assert any(p.startswith("/fleets") for p in paths) and any(
        p.startswith("/iotee") for p in paths
    )
    stand.client.app.state.parts.live.closing.set()  # live streams end (the client reads to
    # the end of an answer, and /v1/events has none otherwise)
    for path in paths:
        got = stand.client.get(path, headers=ADMIN)
        head = stand.client.head(path, headers=ADMIN)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path


def test_head_needs_the_key_like_get(stand: Stand) -> None:
    assert stand.client.head("/v1/executions").status_code == 401


# --- 16: POST creates, PUT replaces ----------------------------------------------------------

LAMP: dict[str, Any] = {"commands": {"on": {}, "off": {}}}


def test_posting_an_existing_device_type_is_a_409_and_keeps_it(stand: Stand) -> None:
    created = stand.client.post(
        "/v1/device-types", json={"name": "lamp", "definition": LAMP}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    again = stand.client.post(
        "/v1/device-types", json={"name": "lamp", "definition": {}}, headers=ADMIN
    )
    assert assert_problem(again, 409)["code"] == "catalog-conflict"
    kept = stand.client.get("/v1/device-types/lamp", headers=ADMIN).json()
    assert sorted(kept["commands"]) == ["off", "on"]
    replaced = stand.client.put("/v1/device-types/lamp", json={}, headers=ADMIN)
    assert replaced.status_code == 200 and replaced.json()["commands"] == {}


def test_posting_an_existing_device_is_a_409_and_keeps_it(stand: Stand) -> None:
    device = {"id": "lock-2", "type": "iotee_device", "labels": {"site": "x"}}
    assert stand.client.post("/v1/devices", json=device, headers=ADMIN).status_code == 201
    again = stand.client.post(
        "/v1/devices", json={"id": "lock-2", "type": "iotee_device"}, headers=ADMIN
    )
    assert assert_problem(again, 409)["code"] == "catalog-conflict"
    assert stand.client.get("/v1/devices/lock-2", headers=ADMIN).json()["labels"] == {"site": "x"}
    seeded = stand.client.post(
        "/v1/devices", json={"id": IOTEE, "type": "iotee_device"}, headers=ADMIN
    )
    assert assert_problem(seeded, 409)["code"] == "catalog-conflict"
    replaced = stand.client.put("/v1/devices/lock-2", json={"type": "iotee_device"}, headers=ADMIN)
    assert replaced.status_code == 200 and replaced.json()["labels"] == {}


def test_create_in_the_domain_refuses_what_exists() -> None:
    document = CatalogDocument({"device_types": {"lamp": {}}, "devices": []})
    document.create_device({"id": "l-1", "type": "lamp"}, wire=WIRE)
    with pytest.raises(CatalogConflict):
        document.create_device_type("lamp", {"ttl": 5}, wire=WIRE)
    with pytest.raises(CatalogConflict):
        document.create_device({"id": "l-1", "type": "lamp", "labels": {"a": "b"}}, wire=WIRE)
    document.create_device_type("relay", {}, wire=WIRE)
    assert sorted(document.document["device_types"]) == ["lamp", "relay"]
    assert document.document["devices"] == [{"id": "l-1", "type": "lamp"}]
    with pytest.raises(InvalidCatalog):
        document.create_device({"type": "lamp"}, wire=WIRE)


def test_two_creates_of_one_name_settle_in_the_writer() -> None:
    """Two racing creates, one after the other on the single writer: the second is a 409."""
    handlers = CommandHandlers(seeds_executions(Clock()))
    first = handlers.change_catalog(
        CatalogChange(op="create-device-type", name="lamp", definition=LAMP)
    )
    second = handlers.change_catalog(
        CatalogChange(op="create-device-type", name="lamp", definition={})
    )
    assert first.problem is None
    assert second.problem is not None and second.problem.code == "catalog-conflict"
    catalog = handlers.get_catalog(CatalogQuery()).document
    assert catalog is not None
    assert sorted(catalog["device_types"]["lamp"]["commands"]) == ["off", "on"]
    device = {"id": "lamp-1", "type": "lamp"}
    assert handlers.change_catalog(CatalogChange(op="create-device", device=device)).problem is None
    again = handlers.change_catalog(CatalogChange(op="create-device", device=device))
    assert again.problem is not None and again.problem.status == 409


# --- 18: every errors entry names a real field ------------------------------------------------


def test_a_bad_id_and_no_body_name_only_the_id(stand: Stand) -> None:
    problem = assert_problem(stand.client.post("/v1/executions/xyz/cancel", headers=ADMIN), 422)
    assert [e["field"] for e in problem["errors"]] == ["execution_id"]


def test_a_body_of_the_wrong_shape_names_the_body(stand: Stand) -> None:
    problem = assert_problem(stand.client.put("/v1/catalog", json=[1], headers=ADMIN), 422)
    assert [e["field"] for e in problem["errors"]] == ["body"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/executions/purge",
        f"/v1/devices/{FLEETS}/commands",
        "/v1/device-types",
        "/v1/devices",
        "/fleets/api/v1/commands",
        "/iotee/commands/purge",
        f"/iotee/devices/{IOTEE}/commands",
    ],
)
def test_a_missing_body_says_a_body_is_required(stand: Stand, path: str) -> None:
    problem = assert_problem(stand.client.post(path, headers=ADMIN), 422)
    assert problem["errors"] == [{"field": "body", "reason": "a JSON body is required"}]


def test_a_missing_body_beside_a_bad_query_names_both(stand: Stand) -> None:
    response = stand.client.post(f"/v1/devices/{FLEETS}/commands?wait=abc", headers=ADMIN)
    problem = assert_problem(response, 422)
    assert sorted(e["field"] for e in problem["errors"]) == ["body", "wait"]
    assert all(e["reason"] and e["reason"] != f"'{e['field']}'" for e in problem["errors"])


# --- 19: unknown query parameters and unknown devices -----------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/executions?stauts=FAILED",
        f"/v1/devices/{FLEETS}/executions?limt=5",
        "/v1/executions/0b7c2f0e-5c1e-4d8a-9a77-3f4e1e2d9c10?expnad=log",
        "/v1/device-types?page=2",
        "/v1/catalog?x=1",
    ],
)
def test_an_unknown_query_parameter_is_a_422_naming_it(stand: Stand, path: str) -> None:
    problem = assert_problem(stand.client.get(path, headers=ADMIN), 422)
    name = path.split("?")[1].split("=")[0]
    assert [e["field"] for e in problem["errors"]] == [name]
    assert "unknown query parameter" in problem["errors"][0]["reason"]


def test_known_query_parameters_still_pass(stand: Stand) -> None:
    response = stand.client.get(
        "/v1/executions?status=FAILED&limit=5&order=oldest&show=ALL&device_id=x", headers=ADMIN
    )
    assert response.status_code == 200, response.text
    sent = stand.client.post(
        f"/v1/devices/{FLEETS}/commands?wait=0.1",
        json={"name": "setTemperature", "params": {"value": 20}},
        headers=ADMIN,
    )
    assert sent.status_code == 201, sent.text


def test_dialects_stay_lenient_about_query_parameters(stand: Stand) -> None:
    assert stand.client.get("/fleets/api/v1/commands?foo=1", headers=ADMIN).status_code == 200


def test_the_executions_of_an_unknown_device_are_a_404(stand: Stand) -> None:
    problem = assert_problem(stand.client.get("/v1/devices/nope/executions", headers=ADMIN), 404)
    assert problem["code"] == "unknown-device"
    known = stand.client.get(f"/v1/devices/{FLEETS}/executions", headers=ADMIN)
    assert known.status_code == 200
