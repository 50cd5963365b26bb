"""A request body's field may be named anything, including the name of one of the api's
dependencies (`service`, `caller`, `webhooks`, ...): a stray one is the client's error, a 422
naming it, never the 500 Litestar answers for a dependency that failed validation."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar

from tests.unit.dialect_support import ADMIN_KEY, KEY, Stand, assert_problem, stand

__all__ = ["stand"]

AUTH = {"Authorization": f"Bearer {KEY}", "X-Enapter-Auth-Token": KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}

# Each route with a body model, and a body it takes: the only error is the stray field.
VALID_BODIES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "v1 submit": (
        "/v1/devices/fecbbba0-79f2-4e9e-a6f0-69a310ab110b/commands",
        {"name": "change_lux", "params": {}},
        AUTH,
    ),
    "v1 cancel": (f"/v1/executions/{uuid4()}/cancel", {}, AUTH),
    "v1 purge": ("/v1/executions/purge", {"older_than_days": 30}, ADMIN),
    "enapter": (
        "/enapter/v3/devices/fecbbba0-79f2-4e9e-a6f0-69a310ab110b/command_executions",
        {"name": "change_lux"},
        AUTH,
    ),
    "fleets": ("/fleets/api/v1/commands", {"thingId": "t", "action": "setTemperature"}, AUTH),
    "iotee": ("/iotee/devices/ABC123/commands", {"command": "lock"}, {"X-API-Key": KEY}),
    "traxes": (f"/traxes/v1/entities/{uuid4()}/commands", {"type": "StartCharging"}, AUTH),
}


def dependency_names(stand: Stand) -> list[str]:
    app = stand.client.app
    assert isinstance(app, Litestar)
    return sorted(app.dependencies)


def test_the_app_has_the_dependencies_a_body_field_could_be_taken_for(stand: Stand) -> None:
    assert {"service", "caller", "webhooks", "checks"} <= set(dependency_names(stand))


@pytest.mark.parametrize("route", sorted(VALID_BODIES))
def test_a_stray_field_named_like_a_dependency_is_a_422_naming_it(stand: Stand, route: str) -> None:
    url, valid, headers = VALID_BODIES[route]
    for name in [*dependency_names(stand), "args"]:
        response = stand.client.post(url, json={**valid, name: {"x": 1}}, headers=headers)
        body = assert_problem(response, 422)
        assert [e["field"] for e in body["errors"]] == [name], (route, name, body)
        assert body["code"] == "validation-failed"


def test_every_error_of_a_body_is_named_even_beside_one_named_like_a_dependency(
    stand: Stand,
) -> None:
    url, valid, headers = VALID_BODIES["v1 submit"]
    bad = {**valid, "ttl": 0, "service": 1, "webhooks": 2}
    body = assert_problem(stand.client.post(url, json=bad, headers=headers), 422)
    assert sorted(e["field"] for e in body["errors"]) == ["service", "ttl", "webhooks"]
