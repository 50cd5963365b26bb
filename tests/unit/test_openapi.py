"""The OpenAPI document declares every problem document an operation can answer (issue 6,
defect 10): each error status as `application/problem+json` with the `ProblemOut` schema,
and none of Litestar's own `application/json` error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from baton_api.app import create_app
from baton_api.inmemory import InMemoryGateway
from baton_api.openapi import SUBMITS
from baton_api.schemas import ProblemOut
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/ProblemOut"
USER = {"X-API-Key": "user-key"}
WRITES = {"post", "put", "patch", "delete"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("openapi"), api_keys="user-key", admin_api_keys="admin"
    )
    app = create_app(settings, gateway=InMemoryGateway(executions), executions=executions)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def document(client: TestClient[Any]) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def declared(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if code[0] in "45"}


def expected_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """What the rules of docs/api.md say the operation can answer, from its shape alone."""
    params = operation.get("parameters", [])
    body = "requestBody" in operation
    path_params = any(p["in"] == "path" for p in params)
    writes = method in WRITES
    wanted = set()
    if body or params:
        wanted |= {400, 422}
    if path.startswith("/v1/"):
        wanted |= {422, 503}  # 503: the database unreachable
    if any(p["name"] == "Last-Event-ID" for p in operation.get("parameters", [])):
        wanted.add(410)  # a live stream resumed below the pruned feed
    if operation.get("security"):
        wanted.add(401)
    if path_params or writes:
        wanted.add(404)
    if writes:
        wanted |= {409, 503}
    if body:
        wanted.add(413)
    return wanted


def test_every_error_response_is_a_problem_document(document: dict[str, Any]) -> None:
    checked = 0
    for path, method, operation in operations(document):
        for code, response in operation["responses"].items():
            if code[0] not in "45" or (path, code) == ("/ready", "503"):
                continue  # /ready's 503 has the 200's shape (the readiness checks)
            checked += 1
            assert set(response["content"]) == {PROBLEM}, (method, path, code)
            assert response["content"][PROBLEM]["schema"] == {"$ref": PROBLEM_REF}
            assert response["description"]
    assert checked > 100


def test_every_operation_declares_the_problems_its_shape_can_give(
    document: dict[str, Any],
) -> None:
    missing = {
        f"{method.upper()} {path}": sorted(expected_statuses(path, method, op) - declared(op))
        for path, method, op in operations(document)
    }
    assert {op: codes for op, codes in missing.items() if codes} == {}


def test_litestar_default_400_is_gone(document: dict[str, Any]) -> None:
    shapes = [
        (method, path)
        for path, method, op in operations(document)
        for response in op["responses"].values()
        if "application/json" in response.get("content", {})
        and "status_code" in str(response["content"]["application/json"])
    ]
    assert shapes == []


def test_routes_above_viewer_declare_403_and_the_others_do_not(
    client: TestClient[Any], document: dict[str, Any]
) -> None:
    above_viewer = {
        ("DELETE", "/v1/executions/{execution_id}"),
        ("POST", "/v1/executions/purge"),
        ("POST", "/v1/executions/{execution_id}/cancel"),
        ("PUT", "/v1/catalog"),
        ("POST", "/v1/device-types"),
        ("DELETE", "/v1/devices/{device_id}"),
        ("POST", "/v1/keys"),
        ("POST", "/v1/tenants"),
        ("POST", "/iotee/commands/purge"),
        ("POST", "/iotee/commands/{command_id}/retry"),
        ("DELETE", "/iotee/commands/{command_id}"),
    }
    with_403 = {
        (method.upper(), path) for path, method, op in operations(document) if 403 in declared(op)
    }
    assert above_viewer <= with_403
    assert ("GET", "/v1/executions") not in with_403
    assert ("GET", "/iotee/commands") not in with_403
    # and the answer is what the document says
    response = client.delete("/iotee/commands/x", headers=USER)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith(PROBLEM)


def test_submits_declare_429(client: TestClient[Any], document: dict[str, Any]) -> None:
    submits = [
        ("post", "/v1/devices/{device_id}/commands"),
        ("post", "/v1/executions/{execution_id}/retry"),
        ("post", "/fleets/api/v1/commands"),
        ("post", "/traxes/v1/entities/{entity_id}/commands"),
        ("post", "/enapter/v3/devices/{device_id}/execute_command"),
        ("post", "/enapter/v3/devices/{device_id}/command_executions"),
        ("post", "/iotee/devices/{device_ref}/commands"),
        ("post", "/iotee/commands/{command_id}/retry"),
    ]
    for method, path in submits:
        assert 429 in declared(document["paths"][path][method]), path
    # Any keyed route may meet the key's rate limit; an open one never does.
    assert 429 in declared(document["paths"]["/v1/executions"]["get"])
    assert 429 not in declared(document["paths"]["/health"]["get"])
    # Every handler the rule names exists: a renamed submit route would lose its 429.
    names = {
        handler.handler_name
        for route in client.app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
    }
    assert names >= SUBMITS


def test_the_problem_schema_is_problem_out(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ProblemOut"]
    assert set(schema["properties"]) == set(ProblemOut.model_fields)
    assert set(schema["required"]) == {"type", "title", "status", "detail", "instance", "code"}
    errors = schema["properties"]["errors"]["anyOf"][0]
    assert errors["items"] == {"$ref": "#/components/schemas/FieldProblemOut"}
    assert set(document["components"]["schemas"]["FieldProblemOut"]["properties"]) == {
        "field",
        "reason",
    }


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "operation"),
    [
        ("get", "/v1/executions", {}, ("/v1/executions", "get")),
        (
            "get",
            "/v1/executions/not-a-uuid",
            {"headers": USER},
            ("/v1/executions/{execution_id}", "get"),
        ),
        (
            "get",
            f"/v1/executions/{'0' * 8}-0000-0000-0000-{'0' * 12}",
            {"headers": USER},
            ("/v1/executions/{execution_id}", "get"),
        ),
        (
            "post",
            "/v1/devices/nope/commands",
            {"headers": USER, "json": {"name": "reboot"}},
            ("/v1/devices/{device_id}/commands", "post"),
        ),
        (
            "post",
            "/v1/devices/demo-thermostat-1/commands",
            {"headers": USER, "content": b"{not json"},
            ("/v1/devices/{device_id}/commands", "post"),
        ),
        (
            "post",
            "/v1/executions/purge",
            {"headers": USER, "json": {"older_than_days": 1}},
            ("/v1/executions/purge", "post"),
        ),
    ],
)
def test_real_error_answers_are_declared_for_their_operation(
    client: TestClient[Any],
    document: dict[str, Any],
    method: str,
    url: str,
    kwargs: dict[str, Any],
    operation: tuple[str, str],
) -> None:
    response = client.request(method, url, **kwargs)
    assert response.status_code >= 400
    assert response.headers["content-type"].startswith(PROBLEM)
    path, verb = operation
    assert response.status_code in declared(document["paths"][path][verb]), response.text


def test_ready_declares_its_503_with_the_checks(document: dict[str, Any]) -> None:
    """A probe reads `checks` from the 503: it is declared as the health shape, not a problem."""
    answer = document["paths"]["/ready"]["get"]["responses"]["503"]
    (schema,) = (media["schema"] for media in answer["content"].values())
    assert (
        schema
        == document["paths"]["/ready"]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]
    )


def test_a_repeated_submit_answers_a_declared_200(
    client: TestClient[Any], document: dict[str, Any]
) -> None:
    """Found by `make fuzz`: the same Idempotency-Key and body again is 200, undeclared."""
    url = "/v1/devices/demo-thermostat-1/commands"
    body = {"name": "reboot"}
    headers = {**USER, "Idempotency-Key": "openapi-repeat"}
    assert client.post(url, json=body, headers=headers).status_code == 201
    assert client.post(url, json=body, headers=headers).status_code == 200
    responses = document["paths"]["/v1/devices/{device_id}/commands"]["post"]["responses"]
    assert {"200", "201"} <= set(responses)
    assert responses["200"]["content"] == responses["201"]["content"]


def test_an_answer_of_either_model_is_any_of_them(document: dict[str, Any]) -> None:
    """Found by `make fuzz`: `?expand=log` answers ExecutionWithLogOut, which is valid under
    ExecutionOut too (objects are open), so `oneOf` failed every such answer."""
    for path, method, operation in operations(document):
        for code, response in operation["responses"].items():
            for media in response.get("content", {}).values():
                assert "oneOf" not in media["schema"], (method, path, code)
    get_one = document["paths"]["/v1/executions/{execution_id}"]["get"]["responses"]["200"]
    (media,) = get_one["content"].values()
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in media["schema"]["anyOf"]} == {
        "ExecutionOut",
        "ExecutionWithLogOut",
    }


def test_the_document_is_built_on_its_first_request_not_at_start(tmp_path: Path) -> None:
    # Building it took ~0.6 s of an api's start: time a restarted replica is not serving.
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    settings = Settings(data_dir=tmp_path, api_keys="user-key")
    app = create_app(settings, gateway=InMemoryGateway(executions), executions=executions)
    plugin = app.plugins.get(OpenAPIPlugin)
    assert plugin._openapi is None
    with TestClient(app, raise_server_exceptions=False) as client:
        first = client.get("/schema/openapi.json").json()
        assert plugin._openapi is not None
        assert client.get("/schema/openapi.json").json() == first  # built once
    submit = first["paths"]["/v1/devices/{device_id}/commands"]["post"]["responses"]
    assert set(submit["422"]["content"]) == {PROBLEM}  # the problems rewritten in
