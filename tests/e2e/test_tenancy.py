"""Tenants, roles and managed keys on the whole stack (real NATS, its key bucket, the api as
its own process): another tenant sees nothing of `default`, a weaker role is refused, and a
key revoked through the API is refused within a second."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.conftest import Baton


def created_key(baton: Baton, **body: Any) -> dict[str, str]:
    response = baton.http.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def test_a_tenant_sees_only_its_own_and_a_revoked_key_stops_at_once(baton: Baton) -> None:
    execution = baton.send("demo-thermostat-1", "set_temperature", {"value": 21}).json()
    made = baton.http.post("/v1/tenants", json={"id": "e2e-acme", "name": "Acme"})
    assert made.status_code == 201, made.text
    acme = created_key(baton, role="admin", name="acme ops", tenant="e2e-acme")
    viewer = created_key(baton, role="viewer", name="dashboard")

    api = str(baton.http.base_url).rstrip("/") + "/"
    assert httpx.get(f"{api}v1/executions/{execution['id']}", headers=acme).status_code == 404
    assert httpx.get(f"{api}v1/executions", headers=acme).json()["total_count"] == 0
    assert httpx.get(f"{api}v1/devices", headers=acme).json()["items"] == []
    sent = httpx.post(
        f"{api}v1/devices/demo-thermostat-1/commands",
        json={"name": "set_temperature", "params": {"value": 20}},
        headers=acme,
    )
    assert sent.status_code == 404, sent.text

    assert httpx.get(f"{api}v1/executions/{execution['id']}", headers=viewer).status_code == 200
    refused = httpx.post(f"{api}v1/executions/{execution['id']}/cancel", headers=viewer)
    assert refused.status_code == 403, refused.text

    key_id = next(
        k["id"] for k in baton.http.get("/v1/keys").json()["items"] if k["name"] == "dashboard"
    )
    revoked_at = time.monotonic()
    assert baton.http.delete(f"/v1/keys/{key_id}").status_code == 204
    status = httpx.get(f"{api}v1/executions", headers=viewer).status_code
    while status != 401 and time.monotonic() - revoked_at < 1.0:
        time.sleep(0.01)
        status = httpx.get(f"{api}v1/executions", headers=viewer).status_code
    assert status == 401, "the revoked key still worked a second later"
