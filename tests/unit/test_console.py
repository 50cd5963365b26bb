"""The console's edges, without a browser (tests/e2e/test_console.py clicks through it):
who may sign in, that every page needs it, CSRF, roles and tenants as in /v1, the schema
form's params and its problems, the timeline read from the stored events, the live feeds
served to the console's cookie."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.testing import TestClient

from baton_api.console.forms import fields_of, params_of, place_errors
from baton_api.inmemory import InMemoryGateway
from baton_contracts.nats import FieldProblem
from baton_domain.application import Executions
from tests.conftest import eventually_sync
from tests.unit.test_access import new_key, new_tenant
from tests.unit.test_api import ADMIN, ADMIN_KEY, AUTH, KEY, client_for, executions, submit

__all__ = ["executions"]  # the fixture, shared with test_api

CONSOLE = "/console"


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, InMemoryGateway(executions)) as test_client:
        yield test_client


def sign_in(client: TestClient[Any], key: str) -> str:
    """Signs in; returns the pages' CSRF token."""
    response = client.post(f"{CONSOLE}/sign-in", data={"api_key": key})
    assert response.status_code == 200, response.text  # followed to the executions
    found = re.search(r'name="_csrf" value="([0-9a-f]+)"', response.text)
    assert found is not None
    return found.group(1)


def key_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_every_page_needs_a_signed_in_key(client: TestClient[Any]) -> None:
    for path in ("/executions", "/devices", "/device-types", "/send", "/devices/x"):
        response = client.get(CONSOLE + path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/console/sign-in")
    live = client.get(f"{CONSOLE}/executions/rows", headers={"HX-Request": "true"})
    assert live.headers["HX-Redirect"] == "/console/sign-in"  # the page goes, not the region
    wrong = client.post(f"{CONSOLE}/sign-in", data={"api_key": "nope"})
    assert wrong.status_code == 401
    assert "the API key is not valid" in wrong.text
    client.cookies.set("baton_console", "nope", path="/console")
    assert client.get(f"{CONSOLE}/executions", follow_redirects=False).status_code == 303


def test_the_key_is_kept_in_an_http_only_strict_cookie_and_sign_out_drops_it(
    client: TestClient[Any],
) -> None:
    signed = client.post(f"{CONSOLE}/sign-in", data={"api_key": KEY}, follow_redirects=False)
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    token = sign_in(client, KEY)
    page = client.get(f"{CONSOLE}/executions")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    gone = client.post(f"{CONSOLE}/sign-out", data={"_csrf": token}, follow_redirects=False)
    assert "Max-Age=0" in gone.headers["set-cookie"]


def test_a_change_without_the_pages_csrf_token_is_refused(
    client: TestClient[Any], executions: Executions
) -> None:
    sign_in(client, KEY)
    execution_id = submit(client).json()["id"]
    for token in ({}, {"_csrf": "0" * 64}):
        refused = client.post(f"{CONSOLE}/executions/{execution_id}/cancel", data=token)
        assert refused.status_code == 403
    assert client.get(f"/v1/executions/{execution_id}", headers=ADMIN).json()["status"] == "PENDING"


def test_a_form_from_another_site_is_refused_sign_in_included(client: TestClient[Any]) -> None:
    elsewhere = {"Origin": "https://elsewhere.example"}
    signing = client.post(f"{CONSOLE}/sign-in", data={"api_key": KEY}, headers=elsewhere)
    assert signing.status_code == 403 and "set-cookie" not in signing.headers
    token = sign_in(client, KEY)
    execution_id = submit(client).json()["id"]
    cancel = f"{CONSOLE}/executions/{execution_id}/cancel"
    assert client.post(cancel, data={"_csrf": token}, headers=elsewhere).status_code == 403
    here = {"Origin": "http://testserver.local"}
    assert client.post(cancel, data={"_csrf": token}, headers=here).status_code == 200


def test_a_viewer_sees_no_buttons_and_is_refused_anyway(client: TestClient[Any]) -> None:
    execution_id = submit(client).json()["id"]
    token = sign_in(client, key_of(new_key(client, "viewer")))
    page = client.get(f"{CONSOLE}/executions/{execution_id}")
    assert page.status_code == 200
    assert "Cancel</button>" not in page.text and "may look but not" in page.text
    assert (
        "send-form"
        not in client.get(f"{CONSOLE}/send?device=demo-thermostat-1&command=reboot").text
    )
    form = {"_csrf": token, "device": "demo-thermostat-1", "command": "reboot"}
    for path in (
        f"/executions/{execution_id}/cancel",
        f"/executions/{execution_id}/retry",
        "/send",
    ):
        assert client.post(CONSOLE + path, data=form).status_code == 403
    assert client.get(f"/v1/executions/{execution_id}", headers=ADMIN).json()["status"] == "PENDING"


def test_another_tenants_execution_and_device_are_not_found(client: TestClient[Any]) -> None:
    execution_id = submit(client).json()["id"]
    new_tenant(client)
    sign_in(client, key_of(new_key(client, "operator", tenant="acme")))
    assert client.get(f"{CONSOLE}/executions/{execution_id}").status_code == 404
    assert client.get(f"{CONSOLE}/devices/demo-thermostat-1").status_code == 404
    rows = client.get(f"{CONSOLE}/executions/rows").text
    assert execution_id not in rows and "No executions match" in rows


def test_sending_shows_the_servers_problems_beside_the_fields(client: TestClient[Any]) -> None:
    token = sign_in(client, ADMIN_KEY)
    form = {"_csrf": token, "device": "demo-thermostat-1", "command": "set_temperature"}
    refused = client.post(f"{CONSOLE}/send", data={**form, "p.value": "99"})
    assert refused.status_code == 422
    assert re.search(r'id="param-value-error">99 is greater than the maximum of 35<', refused.text)
    assert 'value="99"' in refused.text  # what was typed stays
    sent = client.post(
        f"{CONSOLE}/send", data={**form, "p.value": "21.5", "ttl": "9"}, follow_redirects=False
    )
    assert sent.status_code == 303
    execution = client.get(sent.headers["location"].replace(CONSOLE, "/v1"), headers=ADMIN)
    assert (execution.json()["params"], execution.json()["ttl"]) == ({"value": 21.5}, 9)


def test_cancel_and_retry_and_the_timeline(client: TestClient[Any]) -> None:
    token = sign_in(client, KEY)
    execution_id = submit(client).json()["id"]
    canceled = client.post(f"{CONSOLE}/executions/{execution_id}/cancel", data={"_csrf": token})
    assert re.search(r"<strong>canceled</strong> — canceled in the console", canceled.text)
    retried = client.post(f"{CONSOLE}/executions/{execution_id}/retry", data={"_csrf": token})
    assert "<strong>requested as a retry</strong>" in retried.text
    assert f'href="/console/executions/{execution_id}"' in retried.text
    again = client.post(f"{CONSOLE}/executions/{execution_id}/retry", data={"_csrf": "x"})
    assert again.status_code == 403
    running = client.post(f"{CONSOLE}/executions/{execution_id}/cancel", data={"_csrf": token})
    assert running.status_code == 409  # the dispatcher's problem, as a page


def test_the_live_feeds_are_the_v1_feeds_signed_in_by_the_cookie_and_the_tenants_own(
    tmp_path: Path, executions: Executions
) -> None:
    # A tenant's stream ends after a second here (as it does after an hour), so it reads whole.
    with client_for(
        tmp_path, InMemoryGateway(executions), live_max_seconds=1.0, live_keepalive=0.2
    ) as client:
        for path in ("/events", f"/executions/{UUID(int=1)}/events"):
            out = client.get(CONSOLE + path, follow_redirects=False)  # no stream, no event
            assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
        execution_id = submit(client).json()["id"]
        client.post(f"/v1/executions/{execution_id}/cancel", headers=AUTH)
        eventually_sync(
            lambda: (
                client.get(f"/v1/executions/{execution_id}", headers=AUTH).json()["status"]
                == "CANCELED"
            )
        )

        sign_in(client, KEY)
        page = client.get(f"{CONSOLE}/executions?device=demo-thermostat-1&status=PENDING")
        # The table follows the feed from where the page was read; no polling trigger.
        assert 'hx-trigger="live"' in page.text and 'hx-trigger="every' not in page.text
        found = re.search(r'data-live="([^"]+)" data-live-after="(\d+)"', page.text)
        assert found is not None
        assert found.group(1) == "/console/events?device_id=demo-thermostat-1"  # any status
        assert int(found.group(2)) >= 2  # requested and canceled, before the page
        one = client.get(f"{CONSOLE}/executions/{execution_id}/events")  # ended: it ends too
        assert one.headers["content-type"].startswith("text/event-stream")
        kinds = re.findall(r"^event: (\w+)\r?$", one.text, re.MULTILINE)
        assert kinds[0] == "Requested" and kinds[-1] == "Canceled", one.text
        feed = client.get(f"{CONSOLE}/events", params={"last_event_id": 0})
        assert feed.status_code == 200 and execution_id in feed.text
        resumed = client.get(f"{CONSOLE}/events", headers={"Last-Event-ID": found.group(2)})
        assert execution_id not in resumed.text  # nothing after what the page showed

        new_tenant(client)
        sign_in(client, key_of(new_key(client, "viewer", tenant="acme")))
        assert client.get(f"{CONSOLE}/executions/{execution_id}/events").status_code == 404
        other = client.get(f"{CONSOLE}/events", params={"last_event_id": 0})
        assert other.status_code == 200 and execution_id not in other.text
        # The console's copy is not an API operation: /v1's alone are in the schema.
        paths = client.get("/schema/openapi.json").json()["paths"]
        assert "/v1/events" in paths and not any(p.startswith(CONSOLE) for p in paths)


SCHEMA = {
    "type": "object",
    "required": ["level"],
    "properties": {
        "level": {"type": "integer", "minimum": 0, "maximum": 100},
        "mode": {"type": "string", "enum": ["fade", "snap"]},
        "name": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
        "on": {"type": "boolean"},
        "curve": {"type": "array"},
    },
}


def test_a_schema_becomes_inputs_with_the_constraints_html_can_check() -> None:
    fields = {f.name: f for f in fields_of(SCHEMA)}
    level = fields["level"]
    assert (level.input, level.required, level.attrs) == (
        "number",
        True,
        {"step": "1", "min": "0", "max": "100"},
    )
    assert (fields["mode"].input, fields["mode"].options) == ("select", ["fade", "snap"])
    assert fields["name"].attrs == {"maxlength": "8", "pattern": "^[a-z]+$"}
    assert (fields["on"].input, fields["curve"].input) == ("checkbox", "json")
    assert fields_of({"type": "object", "additionalProperties": False}) == []
    assert [f.input for f in fields_of({"type": "object"})] == ["json"]


def test_the_form_reads_back_as_params_and_problems_land_beside_their_field() -> None:
    form = {"p.level": "40", "p.mode": "", "p.name": "ab", "p.on": "on", "p.curve": "[1, 2]"}
    assert params_of(SCHEMA, form) == (
        {"level": 40, "name": "ab", "on": True, "curve": [1, 2]},
        {},
    )
    assert params_of(SCHEMA, {"p.level": "x", "p.curve": "[1"}) == (
        {"level": "x", "on": False},  # sent as typed: the schema names it
        {"curve": "not valid JSON"},
    )
    assert params_of({"type": "object"}, {"p.*": '{"a": 1}'}) == ({"a": 1}, {})
    fields = fields_of(SCHEMA)
    rest = place_errors(
        fields,
        [
            FieldProblem(field="params.level", reason="too high"),
            FieldProblem(field="params", reason="'level' is a required property"),
        ],
    )
    assert next(f for f in fields if f.name == "level").error == "too high"
    assert rest == ["params: 'level' is a required property"]
