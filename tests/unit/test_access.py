"""Tenants, roles, managed keys and JWT bearer tokens, through the HTTP API (docs/security.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.testing import TestClient

from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from tests.unit.test_api import ADMIN, AUTH, assert_problem, client_for, executions, submit

__all__ = ["executions"]  # the fixture

SECRET = "a-shared-secret-of-at-least-32-bytes!"
AUDIENCE = "baton-tests"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_tenant(client: TestClient[Any], tenant: str = "acme") -> None:
    response = client.post(
        "/v1/tenants", json={"id": tenant, "name": tenant.title()}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == tenant


def new_key(
    client: TestClient[Any], role: str, tenant: str | None = None, by: dict[str, str] = ADMIN
) -> dict[str, str]:
    body = {"role": role, "name": f"{role} for tests", **({"tenant": tenant} if tenant else {})}
    response = client.post("/v1/keys", json=body, headers=by)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert set(created) == {"id", "key", "role", "tenant", "name", "created_at"}
    return bearer(created["key"])


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, InMemoryGateway(executions)) as test_client:
        yield test_client


def test_a_new_tenant_sees_nothing_of_another_and_its_ids_are_not_found(
    client: TestClient[Any],
) -> None:
    execution = submit(client).json()["id"]
    new_tenant(client)
    acme = new_key(client, "admin", tenant="acme")

    assert client.get("/v1/devices", headers=acme).json()["items"] == []
    assert client.get("/v1/executions", headers=acme).json()["items"] == []
    assert client.get("/v1/executions", headers=acme).json()["total_count"] == 0
    for path in (
        f"/v1/executions/{execution}",
        "/v1/devices/demo-thermostat-1",
        "/v1/device-types/thermostat",
        "/v1/devices/demo-thermostat-1/executions",
    ):
        assert_problem(client.get(path, headers=acme), 404)
    assert_problem(client.post(f"/v1/executions/{execution}/cancel", headers=acme), 404)
    refused = client.post(
        "/v1/devices/demo-thermostat-1/commands",
        json={"name": "set_temperature", "params": {"value": 21}},
        headers=acme,
    )
    assert assert_problem(refused, 404)["code"] == "unknown-device"
    # ... and the execution is untouched.
    assert client.get(f"/v1/executions/{execution}", headers=AUTH).json()["status"] != "CANCELED"


def test_each_tenant_has_its_own_catalog_with_platform_wide_ids(client: TestClient[Any]) -> None:
    new_tenant(client)
    acme = new_key(client, "admin", tenant="acme")
    definition = {"commands": {"ping": {"params": {"type": "object"}}}}
    created = client.post(
        "/v1/device-types", json={"name": "pinger", "definition": definition}, headers=acme
    )
    assert created.status_code == 201, created.text
    device = client.post("/v1/devices", json={"id": "acme-1", "type": "pinger"}, headers=acme)
    assert device.status_code == 201, device.text

    assert [d["id"] for d in client.get("/v1/devices", headers=acme).json()["items"]] == ["acme-1"]
    default_ids = [d["id"] for d in client.get("/v1/devices", headers=AUTH).json()["items"]]
    assert "acme-1" not in default_ids and "demo-thermostat-1" in default_ids
    assert_problem(client.get("/v1/device-types/pinger", headers=ADMIN), 404)
    # A device of another tenant's type is unknown; an id another tenant uses is taken.
    mixed = client.post("/v1/devices", json={"id": "acme-2", "type": "thermostat"}, headers=acme)
    assert_problem(mixed, 422)
    taken = client.post(
        "/v1/devices", json={"id": "demo-thermostat-1", "type": "pinger"}, headers=acme
    )
    assert assert_problem(taken, 409)["code"] == "catalog-conflict"
    # Nobody removes or replaces another tenant's device.
    assert_problem(client.delete("/v1/devices/acme-1", headers=ADMIN), 404)
    assert_problem(
        client.put("/v1/devices/acme-1", json={"type": "thermostat"}, headers=ADMIN), 404
    )
    # Importing its catalog replaces the tenant's part only.
    imported = client.put("/v1/catalog", json={"device_types": {}, "devices": []}, headers=acme)
    assert imported.status_code == 200, imported.text
    assert client.get("/v1/devices", headers=acme).json()["items"] == []
    assert "demo-thermostat-1" in [
        d["id"] for d in client.get("/v1/devices", headers=AUTH).json()["items"]
    ]

    sent = client.post(
        "/v1/devices/demo-thermostat-1/commands",
        json={"name": "set_temperature", "params": {"value": 20}},
        headers=AUTH,
    )
    assert sent.status_code == 201


def test_a_name_another_tenants_device_goes_by_on_the_wire_is_taken(
    client: TestClient[Any],
) -> None:
    """Outside Baton's own profile a device's topics and MQTT account follow its hardware id:
    a device of one tenant going by another's name would get that one's requests."""
    new_tenant(client)
    acme = new_key(client, "admin", tenant="acme")
    definition = {
        "commands": {"ping": {"params": {"type": "object"}}},
        "wire_profile": "emqx-fleets",
    }
    pinger = client.post(
        "/v1/device-types", json={"name": "pinger", "definition": definition}, headers=acme
    )
    assert pinger.status_code == 201, pinger.text
    own = {"id": "acme-1", "type": "pinger", "hardware_id": "plant-7"}
    assert client.post("/v1/devices", json=own, headers=acme).status_code == 201

    for device in (
        {"id": "acme-2", "type": "pinger", "hardware_id": "demo-thermostat-1"},
        {"id": "plant-7", "type": "thermostat"},
    ):
        by = ADMIN if device["type"] == "thermostat" else acme
        taken = client.post("/v1/devices", json=device, headers=by)
        assert assert_problem(taken, 409)["code"] == "catalog-conflict", device
    types = client.get("/v1/catalog", headers=ADMIN).json()["device_types"]
    stolen = {"device_types": types, "devices": [{**own, "id": "x-1", "type": "thermostat"}]}
    imported = client.put("/v1/catalog", json=stolen, headers=ADMIN)
    assert "'plant-7'" in assert_problem(imported, 409)["detail"]
    # Within a tenant it stays the tenant's own choice.
    twin = {"id": "acme-3", "type": "pinger", "hardware_id": "plant-7"}
    assert client.post("/v1/devices", json=twin, headers=acme).status_code == 201


def test_a_topic_another_tenants_device_uses_is_taken(client: TestClient[Any]) -> None:
    """A raw-mapped type's templates can spell any topic: one giving, from another hardware
    id, a topic of another tenant's device would get that one's requests or answer for it."""
    new_tenant(client)
    acme = new_key(client, "admin", tenant="acme")
    definition = {
        "wire_profile": "raw-mapped",
        "wire": {"topic": "baton/v1/devices/demo-thermostat-1/{hardware_id}"},
        "commands": {"lock": {"wire": {"payload": "1"}}},
    }
    spy = client.post(
        "/v1/device-types", json={"name": "spy", "definition": definition}, headers=acme
    )
    assert spy.status_code == 201, spy.text

    device = {"id": "acme-spy", "type": "spy", "hardware_id": "status"}
    problem = assert_problem(client.post("/v1/devices", json=device, headers=acme), 409)
    assert problem["code"] == "catalog-conflict"
    assert problem["title"] == "Catalog conflict"
    assert problem["detail"] == (
        "device 'acme-spy' would use MQTT topic 'baton/v1/devices/demo-thermostat-1/status', "
        "which is taken: choose another hardware_id or topic"
    )
    assert client.get("/v1/devices", headers=acme).json()["items"] == []
    # Another hardware id gives a topic nobody else uses.
    device["hardware_id"] = "config"
    assert client.post("/v1/devices", json=device, headers=acme).status_code == 201


def test_a_body_naming_another_tenant_is_refused(client: TestClient[Any]) -> None:
    body = {"id": "x-1", "type": "thermostat", "tenant": "acme"}
    problem = assert_problem(client.post("/v1/devices", json=body, headers=ADMIN), 422)
    assert problem["errors"][0]["field"] == "device.tenant"


def test_roles_viewer_operator_admin(client: TestClient[Any]) -> None:
    viewer, operator, admin = (new_key(client, r) for r in ("viewer", "operator", "admin"))
    execution = submit(client).json()["id"]
    assert client.get(f"/v1/executions/{execution}", headers=viewer).status_code == 200
    refused = client.post(
        "/v1/devices/demo-thermostat-1/commands",
        json={"name": "set_temperature", "params": {"value": 21}},
        headers=viewer,
    )
    assert assert_problem(refused, 403)["code"] == "forbidden"
    assert_problem(client.post(f"/v1/executions/{execution}/cancel", headers=viewer), 403)
    assert client.post(f"/v1/executions/{execution}/cancel", headers=operator).status_code == 200
    assert_problem(client.delete(f"/v1/executions/{execution}", headers=operator), 403)
    assert_problem(
        client.post("/v1/keys", json={"role": "viewer", "name": "x"}, headers=operator), 403
    )
    assert client.delete(f"/v1/executions/{execution}", headers=admin).status_code == 204
    assert_problem(client.post("/v1/tenants", json={"id": "x", "name": "x"}, headers=admin), 403)


def test_an_admin_manages_its_own_tenants_keys_up_to_its_own_role(client: TestClient[Any]) -> None:
    new_tenant(client)
    acme = new_key(client, "admin", tenant="acme")
    operator = new_key(client, "operator", by=acme)
    assert_problem(client.post("/v1/keys", json={"role": "owner", "name": "x"}, headers=acme), 403)
    other = client.post(
        "/v1/keys", json={"role": "viewer", "name": "x", "tenant": "default"}, headers=acme
    )
    assert assert_problem(other, 404)["code"] == "tenant-not-found"
    listed = client.get("/v1/keys", headers=acme).json()
    assert {k["tenant"] for k in listed["items"]} == {"acme"}
    assert all("key" not in k and "digest" not in k for k in listed["items"])
    assert listed["total_count"] == 2
    # The owner sees every tenant's keys; an admin cannot revoke another tenant's.
    owners_view = client.get("/v1/keys", headers=ADMIN).json()["items"]
    assert len(owners_view) == 2
    assert client.get("/v1/executions", headers=operator).status_code == 200
    default_admin = new_key(client, "admin")
    operator_id = next(k["id"] for k in listed["items"] if k["role"] == "operator")
    assert_problem(client.delete(f"/v1/keys/{operator_id}", headers=default_admin), 404)


def test_a_revoked_key_is_refused_at_once(client: TestClient[Any]) -> None:
    operator = new_key(client, "operator")
    assert client.get("/v1/executions", headers=operator).status_code == 200
    key_id = client.get("/v1/keys", headers=ADMIN).json()["items"][0]["id"]
    assert client.delete(f"/v1/keys/{key_id}", headers=ADMIN).status_code == 204
    assert_problem(client.get("/v1/executions", headers=operator), 401)
    assert_problem(client.delete(f"/v1/keys/{key_id}", headers=ADMIN), 404)


def test_a_key_for_a_tenant_that_does_not_exist_is_refused(client: TestClient[Any]) -> None:
    refused = client.post(
        "/v1/keys", json={"role": "admin", "name": "x", "tenant": "nope"}, headers=ADMIN
    )
    assert assert_problem(refused, 404)["code"] == "tenant-not-found"
    new_tenant(client)
    again = client.post("/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=ADMIN)
    assert assert_problem(again, 409)["code"] == "tenant-exists"
    bad = client.post("/v1/tenants", json={"id": "Not A Tenant", "name": "x"}, headers=ADMIN)
    assert assert_problem(bad, 422)["errors"][0]["field"] == "id"
    assert [t["id"] for t in client.get("/v1/tenants", headers=ADMIN).json()["items"]] == ["acme"]


def test_who_asked_is_the_managed_keys_id(client: TestClient[Any], executions: Executions) -> None:
    operator = new_key(client, "operator")
    key_id = client.get("/v1/keys", headers=ADMIN).json()["items"][0]["id"]
    sent = client.post(
        "/v1/devices/demo-thermostat-1/commands",
        json={"name": "set_temperature", "params": {"value": 21}},
        headers=operator,
    )
    assert executions.get(UUID(sent.json()["id"])).requested_by == f"key:{key_id}"


# --- JWT -------------------------------------------------------------------------------------


def token(
    key: Any, algorithm: str = "HS256", kid: str | None = None, **claims: Any
) -> dict[str, str]:
    body = {
        "sub": "alice",
        "tenant": "default",
        "role": "operator",
        "exp": time.time() + 60,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return bearer(jwt.encode(body, key, algorithm=algorithm, headers=headers))


@pytest.fixture
def jwks(tmp_path: Path) -> tuple[Path, Any, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, private, algorithm in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        public = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(private.public_key())
        jwk = json.loads(public)
        keys.append({**jwk, "kid": kid, "alg": algorithm, "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path, rsa_key, ec_key


@pytest.fixture
def jwt_client(
    tmp_path: Path, executions: Executions, jwks: tuple[Path, Any, Any]
) -> Iterator[TestClient[Any]]:
    settings = {"jwt_secret": SECRET, "jwt_jwks_path": jwks[0], "jwt_audience": AUDIENCE}
    with client_for(tmp_path / "api", InMemoryGateway(executions), **settings) as test_client:
        yield test_client


def test_jwt_hs256_rs256_es256_map_claims_to_tenant_and_role(
    jwt_client: TestClient[Any], jwks: tuple[Path, Any, Any]
) -> None:
    _path, rsa_key, ec_key = jwks
    for headers in (
        token(SECRET, aud=AUDIENCE),
        token(rsa_key, "RS256", "r1", aud=AUDIENCE),
        token(ec_key, "ES256", "e1", aud=AUDIENCE),
    ):
        sent = jwt_client.post(
            "/v1/devices/demo-thermostat-1/commands",
            json={"name": "set_temperature", "params": {"value": 21}},
            headers=headers,
        )
        assert sent.status_code == 201, sent.text
    viewer = token(SECRET, aud=AUDIENCE, role="viewer")
    assert jwt_client.get("/v1/executions", headers=viewer).json()["total_count"] == 3
    assert_problem(
        jwt_client.post("/v1/keys", json={"role": "viewer", "name": "x"}, headers=viewer), 403
    )
    other = token(SECRET, aud=AUDIENCE, tenant="acme")
    assert jwt_client.get("/v1/executions", headers=other).json()["total_count"] == 0


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": time.time() - 60}, "expired"),
        ({"aud": "someone-else"}, "Audience"),
        ({"aud": None}, "aud"),
        ({"tenant": None}, "tenant"),
        ({"tenant": "Not/A/Tenant"}, "tenant"),
        ({"role": "superuser"}, "role"),
        ({"sub": None}, "sub"),
    ],
)
def test_jwt_refused(jwt_client: TestClient[Any], claims: dict[str, Any], why: str) -> None:
    body = {"aud": AUDIENCE, **claims}
    problem = assert_problem(jwt_client.get("/v1/executions", headers=token(SECRET, **body)), 401)
    assert why in problem["detail"]


def test_jwt_with_a_wrong_key_or_algorithm_is_refused(
    jwt_client: TestClient[Any], jwks: tuple[Path, Any, Any]
) -> None:
    _path, rsa_key, _ec = jwks
    forged = token("another-secret-of-at-least-32-bytes!!", aud=AUDIENCE)
    assert_problem(jwt_client.get("/v1/executions", headers=forged), 401)
    unknown_kid = token(rsa_key, "RS256", "nope", aud=AUDIENCE)
    assert_problem(jwt_client.get("/v1/executions", headers=unknown_kid), 401)
    unsigned = bearer(
        jwt.encode(
            {
                "sub": "a",
                "tenant": "default",
                "role": "owner",
                "aud": AUDIENCE,
                "exp": time.time() + 60,
            },
            "",  # no key; typed as str, taken as None by the "none" algorithm
            algorithm="none",
        )
    )
    assert_problem(jwt_client.get("/v1/executions", headers=unsigned), 401)


def test_without_jwt_settings_a_token_is_just_a_wrong_key(client: TestClient[Any]) -> None:
    assert_problem(client.get("/v1/executions", headers=token(SECRET)), 401)


# --- the cap on commands waiting per tenant ----------------------------------------------------


def test_a_tenant_with_its_cap_of_pending_commands_gets_429_and_others_do_not(
    tmp_path: Path, executions: Executions
) -> None:
    with client_for(tmp_path, InMemoryGateway(executions), max_waiting_per_tenant=2) as client:
        first, _second = (submit(client).json()["id"] for _ in range(2))
        refused = submit(client)
        problem = assert_problem(refused, 429)
        assert problem["code"] == "tenant-busy" and refused.headers["retry-after"] == "1"
        assert client.get("/v1/executions", headers=AUTH).json()["total_count"] == 2
        # Another tenant is not held back by this one.
        new_tenant(client)
        acme = new_key(client, "admin", tenant="acme")
        definition: dict[str, Any] = {"commands": {"ping": {}}}
        client.post(
            "/v1/device-types", json={"name": "pinger", "definition": definition}, headers=acme
        )
        client.post("/v1/devices", json={"id": "acme-1", "type": "pinger"}, headers=acme)
        sent = client.post("/v1/devices/acme-1/commands", json={"name": "ping"}, headers=acme)
        assert sent.status_code == 201, sent.text
        # Once one has left PENDING, the tenant may send again.
        assert client.post(f"/v1/executions/{first}/cancel", headers=AUTH).status_code == 200
        assert submit(client).status_code == 201
