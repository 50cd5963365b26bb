"""A rate limit per API key (baton_platform.rate_limits): a token bucket per principal, and the
api's answer over it, `429 rate-limited` with `Retry-After`, before anything is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from baton_api.app import create_app
from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.rate_limits import RateLimits
from baton_platform.settings import Settings
from tests.conftest import DEMO
from tests.unit.test_api import ADMIN_KEY, KEY, assert_problem


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_may_send_its_burst_then_its_rate() -> None:
    clock = Clock()
    limits = RateLimits(rate=10, burst=3, clock=clock)
    assert [limits.take("key:a") for _ in range(3)] == [None, None, None]
    assert limits.take("key:a") == pytest.approx(0.1)  # one token comes every 0.1 s
    assert limits.take("key:b") is None  # every key has its own bucket
    clock.now += 0.1
    assert limits.take("key:a") is None
    assert limits.take("key:a") == pytest.approx(0.1)
    clock.now += 60  # idle: the bucket fills up to the burst, no further
    assert [limits.take("key:a") for _ in range(4)][3] == pytest.approx(0.1)


def test_a_refused_request_spends_nothing() -> None:
    clock = Clock()
    limits = RateLimits(rate=2, burst=1, clock=clock)
    assert limits.take("key:a") is None
    assert limits.take("key:a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limits.take("key:a") == pytest.approx(0.25)  # the refusal did not push it back
    clock.now += 0.25
    assert limits.take("key:a") is None


def test_rate_zero_is_no_limit() -> None:
    limits = RateLimits(rate=0, burst=1)
    assert all(limits.take("key:a") is None for _ in range(10_000))


def test_over_its_limit_a_key_gets_a_429_problem_and_others_do_not(tmp_path: Path) -> None:
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    settings = Settings(
        data_dir=tmp_path,
        api_keys=KEY,
        admin_api_keys=ADMIN_KEY,
        rate_limit=0.5,  # one token every 2 s: the test is over long before the next
        rate_burst=2,
    )
    app = create_app(settings, gateway=InMemoryGateway(executions), executions=executions)
    refused_before = REJECTED_MESSAGES.labels(service="api", reason="rate-limited")._value.get()
    with TestClient(app, raise_server_exceptions=False) as client:
        key: dict[str, Any] = {"Authorization": f"Bearer {KEY}"}
        assert [client.get("/v1/executions", headers=key).status_code for _ in range(2)] == [
            200
        ] * 2
        refused = client.post(
            "/v1/devices/demo-thermostat-1/commands",
            json={"name": "set_temperature", "params": {"value": 21}},
            headers=key,
        )
        body = assert_problem(refused, 429)
        assert body["code"] == "rate-limited"
        assert refused.headers["retry-after"] == "2"
        assert executions.recorder.max_notification_id() in (None, 0)  # nothing was stored
        # The dialects share the key's bucket.
        assert_problem(client.get("/fleets/api/v1/commands", headers=key), 429)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert client.get("/v1/executions", headers=admin).status_code == 200
        assert client.get("/health").status_code == 200  # no key, no limit
    refused_after = REJECTED_MESSAGES.labels(service="api", reason="rate-limited")._value.get()
    assert refused_after == refused_before + 2  # the submit and the dialect's list
