"""A stopping api drains (BATON_API_DRAIN_SECONDS): `/ready` says 503 while every request is
still served, and each answer then closes its connection, so a client that keeps connections
alive (through a TCP balancer too) opens a new one, which goes to another replica, instead of
being cut off under a request when the api finally stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import API_KEY, make_stack, running

pytestmark = pytest.mark.e2e

DRAIN_S = 4.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(
        make_stack(
            tmp_path_factory.mktemp("drain"),
            extra_env={"BATON_API_DRAIN_SECONDS": str(DRAIN_S)},
        )
    ) as stack:
        yield stack


def test_a_draining_api_serves_not_ready_and_closes_each_connection(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as client:
        before = client.get("/v1/executions", params={"limit": 1})
        assert before.status_code == 200
        assert before.headers.get("connection", "keep-alive") != "close"

        api = stack.processes["api"]
        api.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_S
        while client.get("/ready").status_code != 503:
            assert time.monotonic() < deadline, "/ready never said 503 while draining"
            time.sleep(0.05)

        sent = client.post(
            "/v1/devices/demo-thermostat-1/commands",
            json={"name": "set_temperature", "params": {"value": 21}},
        )
        assert sent.status_code == 201, sent.text  # still served
        assert sent.headers["connection"] == "close"
        assert api.poll() is None  # the drain is not over yet
    api.wait(DRAIN_S + 10)
    # uvicorn, stopped gracefully, ends by the signal it was asked to stop with.
    assert api.returncode in (0, -signal.SIGTERM)
    stack.processes.pop("api")
