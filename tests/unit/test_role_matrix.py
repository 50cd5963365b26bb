"""Every route (Baton's and every dialect's) x every role x own / other tenant.

A caller whose role is too weak gets 403; with a strong enough role, another tenant's object
is 404, like a missing one, and its own is served. The cases must cover exactly the routes
the app has, so a new route cannot skip the matrix; the table in docs/security.md must be
the one the routes give (baton_api.policy). `-s` prints the figures.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from litestar.testing import TestClient

from baton_api.policy import PUBLIC_PREFIXES, markdown_table, route_roles
from baton_contracts.nats import ExecutionReply, SubmitCommand
from baton_domain.application import RequestCommand
from baton_domain.catalog_document import CatalogDocument
from baton_domain.statuses import AnswerStatus
from baton_domain.tenants import Role
from baton_platform.commands import WIRE
from tests.unit.dialect_support import Stand, stand_with
from tests.unit.test_api import ADMIN_KEY

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
OTHER = "acme"
# The seeds catalog's devices, and their copies in the other tenant (ids are platform-wide).
DEVICES = {
    "traxes": "8667fb97-68f2-485a-87c7-f3bdfa9482e1",
    "fleets": "thermostat-001",
    "enapter": "fecbbba0-79f2-4e9e-a6f0-69a310ab110b",
    "iotee": "a1b2c3d4",
}
COMMANDS = {
    "traxes": ("Reset", {}),
    "fleets": ("setTemperature", {"value": 20}),
    "enapter": ("change_lux", {"temp_kelvins": 2000}),
    "iotee": ("lock", {}),
}


def other_id(device: str) -> str:
    return f"b-{device}"


@dataclass
class World:
    stand: Stand
    keys: dict[Role, dict[str, str]]  # the default tenant's callers, by role

    @property
    def client(self) -> TestClient[Any]:
        return self.stand.client

    def tenant(self, own: bool) -> str:
        return "default" if own else OTHER

    def device(self, kind: str, own: bool) -> str:
        return DEVICES[kind] if own else other_id(DEVICES[kind])

    def execution(self, own: bool, ended: bool = False, kind: str = "fleets") -> str:
        name, params = COMMANDS[kind]
        outcome = self.stand.executions.request(
            RequestCommand(self.device(kind, own), name, params, None, tenant=self.tenant(own))
        )
        if ended:
            self.stand.executions.cancel(outcome.execution.id, "ended for the matrix")
        return str(outcome.execution.id)

    def device_type(self, own: bool) -> str:
        name = f"t{uuid4().hex[:8]}"
        self._change(lambda doc: doc.put_device_type(name, {}, self.tenant(own), wire=WIRE))
        return name

    def spare_device(self, own: bool) -> str:
        device_id = f"spare-{uuid4().hex[:8]}"
        kind = "fleets_thermostat" if own else "b_fleets_thermostat"
        self._change(
            lambda doc: doc.put_device({"id": device_id, "type": kind}, self.tenant(own), wire=WIRE)
        )
        return device_id

    def key(self, own: bool) -> str:
        body = {"role": "viewer", "name": "spare", "tenant": self.tenant(own)}
        created = self.client.post("/v1/keys", json=body, headers=bearer(ADMIN_KEY))
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def webhook(self, own: bool) -> str:
        store = self.client.app.state.parts.webhooks
        return str(store.create(self.tenant(own), "http://127.0.0.1:9/", ["*"], None, "m").id)

    def _change(self, edit: Callable[[Any], None]) -> None:
        self.stand.executions.change_catalog(edit)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# (method, path) -> (least role, successful status, request maker or None when the route
# addresses no object of a tenant: those are tried as "own" only).
Request = tuple[str, Any]  # (path, JSON body or None)
Maker = Callable[[World, bool], Request]


def _submit(kind: str) -> Maker:
    name, params = COMMANDS[kind]
    return lambda w, own: (
        f"/v1/devices/{w.device(kind, own)}/commands",
        {"name": name, "params": params},
    )


CASES: dict[tuple[str, str], tuple[Role, int, Maker]] = {
    # Baton v1
    ("POST", "/v1/devices/{device_id}/commands"): (Role.OPERATOR, 201, _submit("fleets")),
    ("GET", "/v1/devices/{device_id}/executions"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/v1/devices/{w.device('fleets', own)}/executions", None),
    ),
    ("GET", "/v1/executions"): (Role.VIEWER, 200, lambda w, own: ("/v1/executions", None)),
    ("GET", "/v1/executions/{execution_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/v1/executions/{w.execution(own)}", None),
    ),
    ("POST", "/v1/executions/{execution_id}/cancel"): (
        Role.OPERATOR,
        200,
        lambda w, own: (f"/v1/executions/{w.execution(own)}/cancel", None),
    ),
    ("POST", "/v1/executions/{execution_id}/retry"): (
        Role.OPERATOR,
        201,
        lambda w, own: (f"/v1/executions/{w.execution(own, ended=True)}/retry", None),
    ),
    ("DELETE", "/v1/executions/{execution_id}"): (
        Role.ADMIN,
        204,
        lambda w, own: (f"/v1/executions/{w.execution(own)}", None),
    ),
    ("POST", "/v1/executions/purge"): (
        Role.ADMIN,
        200,
        lambda w, own: ("/v1/executions/purge", {"older_than_days": 3650}),
    ),
    # Live streams (ended at once here: the world's api is stopping them, see `world`).
    ("GET", "/v1/events"): (Role.VIEWER, 200, lambda w, own: ("/v1/events", None)),
    ("GET", "/v1/executions/{execution_id}/events"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/v1/executions/{w.execution(own)}/events", None),
    ),
    ("POST", "/v1/webhooks"): (
        Role.OPERATOR,
        201,
        lambda w, own: ("/v1/webhooks", {"url": "http://127.0.0.1:9/", "events": ["*"]}),
    ),
    ("GET", "/v1/webhooks"): (Role.OPERATOR, 200, lambda w, own: ("/v1/webhooks", None)),
    ("GET", "/v1/webhooks/{webhook_id}"): (
        Role.OPERATOR,
        200,
        lambda w, own: (f"/v1/webhooks/{w.webhook(own)}", None),
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): (
        Role.OPERATOR,
        204,
        lambda w, own: (f"/v1/webhooks/{w.webhook(own)}", None),
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): (
        Role.OPERATOR,
        200,
        lambda w, own: (f"/v1/webhooks/{w.webhook(own)}/deliveries", None),
    ),
    ("GET", "/v1/catalog"): (Role.VIEWER, 200, lambda w, own: ("/v1/catalog", None)),
    ("PUT", "/v1/catalog"): (
        Role.ADMIN,
        200,
        lambda w, own: (
            "/v1/catalog",
            w.client.get("/v1/catalog", headers=bearer(ADMIN_KEY)).json(),
        ),
    ),
    ("GET", "/v1/device-types"): (Role.VIEWER, 200, lambda w, own: ("/v1/device-types", None)),
    ("POST", "/v1/device-types"): (
        Role.ADMIN,
        201,
        lambda w, own: ("/v1/device-types", {"name": f"t{uuid4().hex[:8]}", "definition": {}}),
    ),
    ("GET", "/v1/device-types/{name}"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/v1/device-types/{w.device_type(own)}", None),
    ),
    ("PUT", "/v1/device-types/{name}"): (
        Role.ADMIN,
        200,
        lambda w, own: (f"/v1/device-types/{w.device_type(own)}", {}),
    ),
    ("DELETE", "/v1/device-types/{name}"): (
        Role.ADMIN,
        204,
        lambda w, own: (f"/v1/device-types/{w.device_type(own)}", None),
    ),
    ("GET", "/v1/devices"): (Role.VIEWER, 200, lambda w, own: ("/v1/devices", None)),
    ("POST", "/v1/devices"): (
        Role.ADMIN,
        201,
        lambda w, own: ("/v1/devices", {"id": f"d-{uuid4().hex[:8]}", "type": "fleets_thermostat"}),
    ),
    ("GET", "/v1/devices/{device_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/v1/devices/{w.spare_device(own)}", None),
    ),
    ("PUT", "/v1/devices/{device_id}"): (
        Role.ADMIN,
        200,
        lambda w, own: (f"/v1/devices/{w.spare_device(own)}", {"type": "fleets_thermostat"}),
    ),
    ("DELETE", "/v1/devices/{device_id}"): (
        Role.ADMIN,
        204,
        lambda w, own: (f"/v1/devices/{w.spare_device(own)}", None),
    ),
    ("POST", "/v1/devices/{device_id}/credentials"): (
        Role.ADMIN,
        201,
        lambda w, own: (f"/v1/devices/{w.device('fleets', own)}/credentials", None),
    ),
    ("GET", "/v1/keys"): (Role.ADMIN, 200, lambda w, own: ("/v1/keys", None)),
    ("POST", "/v1/keys"): (
        Role.ADMIN,
        201,
        lambda w, own: ("/v1/keys", {"role": "viewer", "name": "matrix"}),
    ),
    ("DELETE", "/v1/keys/{key_id}"): (
        Role.ADMIN,
        204,
        lambda w, own: (f"/v1/keys/{w.key(own)}", None),
    ),
    ("GET", "/v1/tenants"): (Role.OWNER, 200, lambda w, own: ("/v1/tenants", None)),
    ("POST", "/v1/tenants"): (
        Role.OWNER,
        201,
        lambda w, own: ("/v1/tenants", {"id": f"t-{uuid4().hex[:8]}", "name": "matrix"}),
    ),
    # Traxes
    ("POST", "/traxes/v1/entities/{entity_id}/commands"): (
        Role.OPERATOR,
        201,
        lambda w, own: (
            f"/traxes/v1/entities/{w.device('traxes', own)}/commands",
            {"type": "Reset"},
        ),
    ),
    ("GET", "/traxes/v1/entities/{entity_id}/commands/{command_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (
            f"/traxes/v1/entities/{w.device('traxes', own)}/commands/"
            f"{w.execution(own, kind='traxes')}",
            None,
        ),
    ),
    # Fleets
    ("POST", "/fleets/api/v1/commands"): (
        Role.OPERATOR,
        201,
        lambda w, own: (
            "/fleets/api/v1/commands",
            {
                "thingId": w.device("fleets", own),
                "action": "setTemperature",
                "params": {"value": 20},
            },
        ),
    ),
    ("GET", "/fleets/api/v1/commands"): (
        Role.VIEWER,
        200,
        lambda w, own: ("/fleets/api/v1/commands", None),
    ),
    ("GET", "/fleets/api/v1/commands/{execution_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/fleets/api/v1/commands/{w.execution(own)}", None),
    ),
    # Enapter
    ("POST", "/enapter/v3/devices/{device_id}/command_executions"): (
        Role.OPERATOR,
        200,
        lambda w, own: (
            f"/enapter/v3/devices/{w.device('enapter', own)}/command_executions",
            {"name": "change_lux", "arguments": {"temp_kelvins": 2000}},
        ),
    ),
    ("POST", "/enapter/v3/devices/{device_id}/execute_command"): (
        Role.OPERATOR,
        200,
        lambda w, own: (
            f"/enapter/v3/devices/{w.device('enapter', own)}/execute_command",
            {"name": "change_lux", "arguments": {"temp_kelvins": 2000}},
        ),
    ),
    ("GET", "/enapter/v3/devices/{device_id}/command_executions"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/enapter/v3/devices/{w.device('enapter', own)}/command_executions", None),
    ),
    ("GET", "/enapter/v3/devices/{device_id}/command_executions/{execution_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (
            f"/enapter/v3/devices/{w.device('enapter', own)}/command_executions/"
            f"{w.execution(own, kind='enapter')}",
            None,
        ),
    ),
    # iotee
    ("POST", "/iotee/devices/{device_ref}/commands"): (
        Role.OPERATOR,
        201,
        lambda w, own: (f"/iotee/devices/{w.device('iotee', own)}/commands", {"command": "reboot"}),
    ),
    ("GET", "/iotee/devices/{device_ref}/commands"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/iotee/devices/{w.device('iotee', own)}/commands", None),
    ),
    ("GET", "/iotee/commands"): (Role.VIEWER, 200, lambda w, own: ("/iotee/commands", None)),
    ("GET", "/iotee/commands/{command_id}"): (
        Role.VIEWER,
        200,
        lambda w, own: (f"/iotee/commands/{w.execution(own, kind='iotee')}", None),
    ),
    ("DELETE", "/iotee/commands/{command_id}"): (
        Role.ADMIN,
        200,
        lambda w, own: (f"/iotee/commands/{w.execution(own, kind='iotee')}", None),
    ),
    ("POST", "/iotee/commands/{command_id}/retry"): (
        Role.OPERATOR,
        200,
        lambda w, own: (
            f"/iotee/commands/{w.execution(own, ended=True, kind='iotee')}/retry",
            None,
        ),
    ),
    ("POST", "/iotee/commands/purge"): (
        Role.ADMIN,
        200,
        lambda w, own: ("/iotee/commands/purge", {"older_than_days": 3650}),
    ),
}
# Routes that address no tenant's object by path or body: tried for the caller's own tenant.
UNADDRESSED = {
    key
    for key in CASES
    if "{" not in key[1]
    and key
    not in {
        ("POST", "/fleets/api/v1/commands"),  # names the device in its body
    }
}
# Each dialect route and the v1 route it does the same as: the same role must be needed.
EQUIVALENT = {
    ("POST", "/traxes/v1/entities/{entity_id}/commands"): (
        "POST",
        "/v1/devices/{device_id}/commands",
    ),
    ("GET", "/traxes/v1/entities/{entity_id}/commands/{command_id}"): (
        "GET",
        "/v1/executions/{execution_id}",
    ),
    ("POST", "/fleets/api/v1/commands"): ("POST", "/v1/devices/{device_id}/commands"),
    ("GET", "/fleets/api/v1/commands"): ("GET", "/v1/executions"),
    ("GET", "/fleets/api/v1/commands/{execution_id}"): ("GET", "/v1/executions/{execution_id}"),
    ("POST", "/enapter/v3/devices/{device_id}/command_executions"): (
        "POST",
        "/v1/devices/{device_id}/commands",
    ),
    ("POST", "/enapter/v3/devices/{device_id}/execute_command"): (
        "POST",
        "/v1/devices/{device_id}/commands",
    ),
    ("GET", "/enapter/v3/devices/{device_id}/command_executions"): (
        "GET",
        "/v1/devices/{device_id}/executions",
    ),
    ("GET", "/enapter/v3/devices/{device_id}/command_executions/{execution_id}"): (
        "GET",
        "/v1/executions/{execution_id}",
    ),
    ("POST", "/iotee/devices/{device_ref}/commands"): ("POST", "/v1/devices/{device_id}/commands"),
    ("GET", "/iotee/devices/{device_ref}/commands"): ("GET", "/v1/devices/{device_id}/executions"),
    ("GET", "/iotee/commands"): ("GET", "/v1/executions"),
    ("GET", "/iotee/commands/{command_id}"): ("GET", "/v1/executions/{execution_id}"),
    ("DELETE", "/iotee/commands/{command_id}"): ("DELETE", "/v1/executions/{execution_id}"),
    ("POST", "/iotee/commands/{command_id}/retry"): ("POST", "/v1/executions/{execution_id}/retry"),
    ("POST", "/iotee/commands/purge"): ("POST", "/v1/executions/purge"),
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    for stand in stand_with(tmp_path):
        seeds = stand.executions.catalog_document()
        copy = {
            "device_types": {f"b_{n}": t for n, t in seeds["device_types"].items()},
            "devices": [
                {**d, "id": other_id(d["id"]), "type": f"b_{d['type']}"}
                | ({"hardware_id": other_id(d["hardware_id"])} if "hardware_id" in d else {})
                for d in seeds["devices"]
            ],
        }

        def import_copy(doc: CatalogDocument, c: dict[str, Any] = copy) -> None:
            doc.import_document(c, OTHER, wire=WIRE)

        stand.executions.change_catalog(import_copy)
        owner = bearer(ADMIN_KEY)
        made = stand.client.post("/v1/tenants", json={"id": OTHER, "name": "Acme"}, headers=owner)
        assert made.status_code == 201, made.text
        keys = {Role.OWNER: owner}
        for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
            body = {"role": role.label, "name": f"matrix {role.label}"}
            created = stand.client.post("/v1/keys", json=body, headers=owner)
            assert created.status_code == 201, created.text
            keys[role] = bearer(created.json()["key"])
        # Live streams end at once (as when the api stops): the test client reads an answer
        # to its end, and the feed's would not end otherwise.
        stand.client.app.state.parts.live.closing.set()
        yield World(stand, keys)


def _attempt(world: World, method: str, template: str, role: Role, own: bool) -> int:
    least, _ok, make = CASES[(method, template)]
    path, body = make(world, own)
    if template.endswith("execute_command") and role >= least and own:
        return _execute_answered(world, path, body, world.keys[role])
    response = world.client.request(method, path, json=body, headers=world.keys[role])
    return response.status_code


def _execute_answered(world: World, path: str, body: Any, headers: dict[str, str]) -> int:
    """execute_command waits for the end: the device answers as soon as it is stored."""
    gateway = world.stand.gateway
    submit = gateway.submit

    async def submit_and_answer(command: SubmitCommand) -> ExecutionReply:
        reply = await submit(command)
        if reply.execution is not None:
            world.stand.answer(str(reply.execution.id), AnswerStatus.SUCCEEDED)
        return reply

    gateway.submit = submit_and_answer  # type: ignore[method-assign]
    try:
        return world.client.post(path, json=body, headers=headers).status_code
    finally:
        del gateway.submit


def test_every_route_is_in_the_matrix(world: World) -> None:
    routes = {
        (method, re.sub(r":\w+\}", "}", path))
        for method, path, _role in route_roles(world.client.app)
        if not path.startswith(PUBLIC_PREFIXES)
    }
    assert routes == set(CASES)
    declared = {
        (method, re.sub(r":\w+\}", "}", path)): role
        for method, path, role in route_roles(world.client.app)
    }
    assert {key: declared[key] for key in CASES} == {key: case[0] for key, case in CASES.items()}
    for dialect_route, v1_route in EQUIVALENT.items():
        assert declared[dialect_route] == declared[v1_route], dialect_route


def test_the_role_table_in_the_docs_is_the_routes_own(world: World) -> None:
    assert markdown_table(world.client.app) in DOCS.read_text()


def test_every_route_by_every_role_for_own_and_other_tenants(world: World) -> None:
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    for (method, template), (least, ok, _make) in CASES.items():
        for role in Role:
            for own in (True, False):
                if not own and (method, template) in UNADDRESSED:
                    continue
                if not own and role is Role.OWNER and template.startswith("/v1/keys"):
                    continue  # the owner manages every tenant's keys: not another's object
                status = _attempt(world, method, template, role, own)
                if role < least:
                    expected, kind = 403, "denied (role)"
                elif not own:
                    expected, kind = 404, "not found (other tenant)"
                else:
                    expected, kind = ok, "allowed"
                outcomes[kind] += 1
                if status != expected:
                    wrong.append(
                        f"{method} {template} as {role.label} ({'own' if own else 'other'}): "
                        f"{status}, expected {expected}"
                    )
    print(f"\nrole matrix: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert not wrong, "\n".join(wrong)
