"""Webhooks on the whole stack (docs/api.md, "Webhooks"): a real HTTP receiver in this
process checks each delivery's signature; one that fails twice then answers shows the
retries, with their backoff, in the delivery log; one that always fails ends dead; a
delivery pending when the api stops is delivered after it starts again; only operators of
the tenant manage webhooks, and bad input gets a problem."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from baton_cli.localstack import Stack
from baton_contracts.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, WebhookPayload, verify
from tests.conftest import BACKENDS
from tests.e2e.conftest import Baton, database_env, make_stack, running, wait_ready
from tests.e2e.test_live import tenant_key

MAX_ATTEMPTS = 3
# The webhooks' database on both backends: webhooks.sqlite, or the schema `webhooks`.
pytestmark = pytest.mark.parametrize("stack_backend", BACKENDS, scope="module")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_database: str | None) -> Iterator[Stack]:
    made = make_stack(
        tmp_path_factory.mktemp("webhooks"),
        extra_env={
            **database_env(stack_database),
            "BATON_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "BATON_WEBHOOK_BACKOFF_INITIAL": "0.4",
            "BATON_WEBHOOK_BACKOFF_MAX": "2",
            "BATON_WEBHOOK_TIMEOUT": "2",
        },
    )
    with running(made) as started:
        yield started


class Receiver:
    """An HTTP server on loopback: POST /<name> is recorded, and answered as `behaviour`
    says (by how many times that delivery id came before)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes, float]] = []
        self.behaviour: dict[str, Callable[[int], int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                name = self.path.strip("/")
                headers = dict(self.headers.items())
                seen = sum(
                    1
                    for path, h, _, _ in receiver.received
                    if path == name and h.get(DELIVERY_HEADER) == headers.get(DELIVERY_HEADER)
                )
                receiver.received.append((name, headers, body, time.time()))
                answer: Callable[[int], int] = receiver.behaviour.get(name, lambda _: 200)
                status = answer(seen)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def of(self, name: str) -> list[tuple[dict[str, str], bytes, float]]:
        return [(h, b, t) for path, h, b, t in self.received if path == name]


@pytest.fixture(scope="module")
def receiver(stack_backend: str) -> Iterator[Receiver]:
    del stack_backend  # one receiver per stack: what each one received, alone
    made = Receiver()
    yield made
    made.server.shutdown()


def made_webhook(baton: Baton, url: str, events: list[str], device: str) -> dict[str, Any]:
    response = baton.http.post(
        "/v1/webhooks", json={"url": url, "events": events, "device_id": device}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["secret"].startswith("whsec_")
    return body


def deliveries_when(
    baton: Baton, hook_id: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = baton.http.get(f"/v1/webhooks/{hook_id}/deliveries")
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if done(items):
            return items
        time.sleep(0.1)
    raise AssertionError(f"deliveries of {hook_id} never got there: {items}")


def test_a_delivery_is_signed_and_logged(baton: Baton, receiver: Receiver) -> None:
    hook = made_webhook(baton, receiver.url("ok"), ["SUCCEEDED"], "demo-thermostat-1")
    execution_id = baton.send("demo-thermostat-1", "set_temperature", {"value": 21}).json()["id"]

    items = deliveries_when(baton, hook["id"], lambda d: bool(d) and d[0]["state"] == "delivered")
    assert len(items) == 1 and items[0]["execution_id"] == execution_id
    assert items[0]["attempts"] == 1 and items[0]["log"][0]["status_code"] == 200

    [(headers, body, _)] = receiver.of("ok")
    assert verify(hook["secret"], headers[SIGNATURE_HEADER], body)
    assert not verify("whsec_other", headers[SIGNATURE_HEADER], body)
    assert not verify(hook["secret"], headers[SIGNATURE_HEADER], body + b" ")
    payload = WebhookPayload.model_validate_json(body)
    assert (payload.status, payload.event, str(payload.execution_id)) == (
        "SUCCEEDED",
        "Succeeded",
        execution_id,
    )
    assert headers[DELIVERY_HEADER] == str(payload.delivery_id) == items[0]["id"]

    listed = baton.http.get("/v1/webhooks").json()["items"]
    mine = next(h for h in listed if h["id"] == hook["id"])
    assert mine["secret"] is None and mine["deliveries"]["delivered"] == 1


def test_failures_are_retried_with_backoff_then_dead(baton: Baton, receiver: Receiver) -> None:
    receiver.behaviour["flaky"] = lambda seen: 500 if seen < 2 else 204
    receiver.behaviour["down"] = lambda _: 503
    flaky = made_webhook(baton, receiver.url("flaky"), ["Succeeded"], "demo-thermostat-2")
    down = made_webhook(baton, receiver.url("down"), ["SUCCEEDED"], "demo-thermostat-2")
    baton.send("demo-thermostat-2", "set_temperature", {"value": 22})

    [retried] = deliveries_when(
        baton, flaky["id"], lambda d: bool(d) and d[0]["state"] == "delivered"
    )
    assert [a["status_code"] for a in retried["log"]] == [500, 500, 204]
    times = [datetime.fromisoformat(a["at"]).timestamp() for a in retried["log"]]
    # Equal jitter: at least half of each step (0.4 s, then 0.8 s).
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4, times
    assert len({h[DELIVERY_HEADER] for h, _, _ in receiver.of("flaky")}) == 1

    [dead] = deliveries_when(baton, down["id"], lambda d: bool(d) and d[0]["state"] == "dead")
    assert dead["attempts"] == MAX_ATTEMPTS and len(receiver.of("down")) == MAX_ATTEMPTS
    assert all(a["error"] == "answered 503" for a in dead["log"])
    letters = baton.http.get(f"/v1/webhooks/{down['id']}/deliveries", params={"state": "dead"})
    assert [d["id"] for d in letters.json()["items"]] == [dead["id"]]
    assert baton.http.get(f"/v1/webhooks/{down['id']}").json()["deliveries"]["dead"] == 1


def test_a_pending_delivery_survives_an_api_restart(
    baton: Baton, receiver: Receiver, stack: Stack
) -> None:
    gate = {"open": False}
    receiver.behaviour["gate"] = lambda _: 200 if gate["open"] else 503
    hook = made_webhook(baton, receiver.url("gate"), ["SUCCEEDED"], "demo-thermostat-3")
    baton.send("demo-thermostat-3", "set_temperature", {"value": 23})
    deliveries_when(baton, hook["id"], lambda d: bool(d) and d[0]["attempts"] >= 1)

    stack.stop("api")
    gate["open"] = True
    stack.start("api")
    wait_ready(stack)

    [delivered] = deliveries_when(
        baton, hook["id"], lambda d: bool(d) and d[0]["state"] == "delivered"
    )
    assert delivered["log"][-1]["status_code"] == 200
    assert len({h[DELIVERY_HEADER] for h, _, _ in receiver.of("gate")}) == 1


def test_only_operators_of_the_tenant_manage_webhooks(baton: Baton, receiver: Receiver) -> None:
    hook = made_webhook(baton, receiver.url("ok2"), ["*"], "demo-thermostat-4")
    for body, field in (
        ({"url": "ftp://127.0.0.1/x", "events": ["*"]}, "url"),
        ({"url": "file:///etc/passwd", "events": ["*"]}, "url"),
        ({"url": receiver.url("x"), "events": ["DONE"]}, "events"),
        ({"url": receiver.url("x"), "events": []}, "events"),
        ({"url": receiver.url("x"), "events": ["*"], "device_id": " "}, "device_id"),
    ):
        response = baton.http.post("/v1/webhooks", json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert field in json.dumps(response.json())
    api = baton.stack.api_url
    viewer = baton.http.post("/v1/keys", json={"role": "viewer", "name": "hooks viewer"})
    headers = {"Authorization": f"Bearer {viewer.json()['key']}"}
    assert httpx.get(f"{api}/v1/webhooks", headers=headers).status_code == 403
    other = tenant_key(baton, "e2e-hooks-other", "admin")
    assert httpx.get(f"{api}/v1/webhooks/{hook['id']}", headers=other).status_code == 404
    assert httpx.delete(f"{api}/v1/webhooks/{hook['id']}", headers=other).status_code == 404
    assert httpx.get(f"{api}/v1/webhooks", headers=other).json()["items"] == []
    assert baton.http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert baton.http.get(f"/v1/webhooks/{hook['id']}").status_code == 404
