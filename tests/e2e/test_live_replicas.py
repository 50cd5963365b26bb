"""Live updates and webhooks with two api replicas (docs/architecture.md, "Live updates and
webhooks"): a replica that does not project streams the feed from the projecting one's
announcements; a client resumes on another replica with Last-Event-ID and misses nothing;
webhooks are sent by the lease holder only, once, and by the other after it is killed."""

# The replicas tests' fixtures are imported, and their names are then the tests' parameters.
# ruff: noqa: F811

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from baton_cli.live import Event
from baton_cli.localstack import Stack
from baton_contracts.nats import PROJECTION_LEASE
from baton_contracts.webhooks import WebhookPayload
from tests.conftest import eventually_sync
from tests.e2e.conftest import TERMINAL, Baton
from tests.e2e.test_live import read
from tests.e2e.test_replicas import (  # noqa: F401  # fixtures
    TAKEOVER_S,
    Replica,
    held_by,
    own_stack,
    replicas,
    second_api,
)
from tests.e2e.test_webhooks import Receiver

DEVICE = "demo-thermostat-1"


def test_streams_and_webhooks_across_api_replicas(
    own_stack: Stack, replicas: list[Replica]
) -> None:
    baton = Baton(own_stack)
    other = second_api(own_stack, replicas, BATON_LIVE_KEEPALIVE="0.5")
    receiver = Receiver()
    try:
        hook = baton.http.post(
            "/v1/webhooks", json={"url": receiver.url("all"), "events": ["*"], "device_id": DEVICE}
        )
        assert hook.status_code == 201, hook.text
        sent: list[str] = []

        def send_two() -> None:
            for _ in range(2):
                response = baton.send(DEVICE, "reboot")
                assert response.status_code == 201, response.text
                sent.append(response.json()["id"])

        def ended(ids: list[str]) -> Callable[[list[Event]], bool]:
            return lambda got: (
                {e.data["execution_id"] for e in got if e.data["status"] in TERMINAL} >= set(ids)
            )

        started = time.monotonic()
        first, _ = read(
            f"{other}/v1/events", ended(sent), params={"device_id": DEVICE}, started=send_two
        )
        assert time.monotonic() - started < 15, "the feed waited for a poll, not an announcement"
        assert {e.data["execution_id"] for e in first} == set(sent)

        def positions() -> list[int]:
            return [
                WebhookPayload.model_validate_json(b).position for _, b, _ in receiver.of("all")
            ]

        def delivered() -> int:
            counts = baton.http.get(f"/v1/webhooks/{hook.json()['id']}").json()["deliveries"]
            return int(counts["delivered"]) if counts["pending"] == 0 else -1

        # Recorded as delivered before the kill (a delivery sent but not yet recorded by a
        # killed sender is sent again by the next: at least once).
        eventually_sync(
            lambda: delivered() == len(first), timeout=20, interval=0.1, what="all delivered"
        )
        assert sorted(positions()) == sorted({int(e.id or 0) for e in first})

        # The projecting replica dies; the other takes the lease, streams on, and sends.
        own_stack.kill("api")
        held_by(own_stack, PROJECTION_LEASE, "b", timeout=TAKEOVER_S)
        third = httpx.post(
            f"{other}/v1/devices/{DEVICE}/commands",
            json={"name": "reboot"},
            headers=dict(baton.http.headers),
        )
        assert third.status_code == 201, third.text
        rest, _ = read(
            f"{other}/v1/events",
            ended([third.json()["id"]]),
            headers={"Last-Event-ID": first[1].id or ""},
            params={"device_id": DEVICE},
        )
        mine = [e for e in rest if e.data["execution_id"] != third.json()["id"]]
        assert [e.id for e in mine] == [e.id for e in first[2:]]
        every = [int(e.id or 0) for e in first[:2] + rest]
        assert every == sorted(set(every))
        eventually_sync(
            lambda: set(positions()) >= set(every),
            timeout=20,
            interval=0.1,
            what="the new holder delivered the rest",
        )
        assert sorted(positions()) == sorted(set(positions())), "each change sent once"
    finally:
        receiver.server.shutdown()
