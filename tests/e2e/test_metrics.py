"""Every service's metrics, scraped from a running stack: what the executions did is what the
counters and histograms say, the consumers' lag and the executions per device type are
sampled, and each lease is held once.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from baton_cli.localstack import SERVICE_MODULES, Stack
from tests.conftest import eventually_sync
from tests.e2e.conftest import Baton, make_stack, running
from tests.e2e.test_waiters import consecutive_free_ports

SUCCEEDING = 10
DEVICES = [f"demo-thermostat-{n}" for n in range(1, 6)]
COMMAND = "set_temperature"
# Sampled every metrics.SAMPLE_INTERVAL_S (5 s): a few rounds, on a loaded machine.
SAMPLED_WITHIN = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = make_stack(
        tmp_path_factory.mktemp("stack"),
        metrics_port=consecutive_free_ports(len(SERVICE_MODULES)),
    )
    with running(made) as started:
        yield started


def scrape(stack: Stack, service: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The service's samples: (name, labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_ports()[service]}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(stack: Stack, service: str, name: str, **labels: str) -> float | None:
    return scrape(stack, service).get((name, frozenset(labels.items())))


def test_counters_and_stage_histograms_say_what_the_executions_did(stack: Stack) -> None:
    baton = Baton(stack)
    # One the device never answers: it times out, and in the meantime is in flight.
    silent = baton.send("demo-silent-1", COMMAND, {"value": 20}, ttl=12)
    assert silent.status_code == 201, silent.text
    eventually_sync(
        lambda: value(stack, "api", "baton_executions_in_flight", device_type="thermostat") == 1,
        timeout=SAMPLED_WITHIN,
        what="the silent execution counted in flight",
    )
    for n in range(SUCCEEDING):
        response = baton.send(DEVICES[n % len(DEVICES)], COMMAND, {"value": 20 + n}, wait=20)
        assert response.status_code in (200, 201), response.text
        assert response.json()["status"] == "SUCCEEDED", response.text
    baton.wait_for(silent.json()["id"], {"TIMED_OUT"}, timeout=40)

    def dispatcher(name: str, **labels: str) -> float | None:
        return value(stack, "dispatcher", name, **labels)

    eventually_sync(
        lambda: dispatcher("baton_executions_total", command=COMMAND, status="TIMED_OUT") == 1,
        what="the time-out counted",
    )
    assert dispatcher("baton_executions_total", command=COMMAND, status="SUCCEEDED") == SUCCEEDING
    stages = {
        stage: dispatcher("baton_execution_stage_seconds_count", stage=stage)
        for stage in ("stored", "sent", "acknowledged", "terminal")
    }
    # Every execution was stored and sent; only the answered ones were acknowledged and ended
    # after an answer.
    assert stages == {
        "stored": SUCCEEDING + 1,
        "sent": SUCCEEDING + 1,
        "acknowledged": SUCCEEDING,
        "terminal": SUCCEEDING,
    }
    durations = dispatcher("baton_execution_duration_seconds_count", status="SUCCEEDED")
    assert durations == SUCCEEDING
    assert dispatcher("baton_execution_duration_seconds_count", status="TIMED_OUT") == 1
    total = dispatcher("baton_execution_stage_seconds_sum", stage="sent")
    assert total is not None and 0 < total < 60 * (SUCCEEDING + 1)
    # Nothing is left waiting or in flight once the views have them ended.
    eventually_sync(
        lambda: (
            (
                value(stack, "api", "baton_executions_in_flight", device_type="thermostat"),
                value(stack, "api", "baton_executions_waiting", device_type="thermostat"),
            )
            == (0, 0)
        ),
        timeout=SAMPLED_WITHIN,
        what="no execution in flight or waiting",
    )


@pytest.mark.parametrize(
    ("service", "stream", "consumer"),
    [
        ("timeout-scheduler", "BATON_EVENTS", "baton-timeout-scheduler"),
        ("device-bridge", "BATON_EVENTS", "baton-device-bridge"),
    ],
)
def test_each_service_says_the_lag_of_its_consumers(
    stack: Stack, service: str, stream: str, consumer: str
) -> None:
    def lag() -> tuple[float | None, float | None]:
        return (
            value(
                stack, service, "baton_consumer_pending_messages", stream=stream, consumer=consumer
            ),
            value(
                stack,
                service,
                "baton_consumer_ack_pending_messages",
                stream=stream,
                consumer=consumer,
            ),
        )

    # An idle stack has delivered and acknowledged everything.
    eventually_sync(lambda: lag() == (0, 0), timeout=SAMPLED_WITHIN, what=f"{consumer}'s lag")


def test_the_dispatcher_says_the_lag_of_its_reports_consumers(stack: Stack) -> None:
    def reports() -> list[float]:
        return [
            sample
            for (name, labels), sample in scrape(stack, "dispatcher").items()
            if name == "baton_consumer_pending_messages" and ("stream", "BATON_REPORTS") in labels
        ]

    found = eventually_sync(reports, timeout=SAMPLED_WITHIN, what="the reports consumers' lag")
    assert set(found) == {0}


def test_each_lease_is_held_by_its_one_process(stack: Stack) -> None:
    for service, lease in (
        ("dispatcher", "relay"),
        ("api", "projection"),
        ("timeout-scheduler", "timeout-scheduler"),
    ):

        def held(service: str = service, lease: str = lease) -> bool:
            return value(stack, service, "baton_lease_held", lease=lease) == 1

        eventually_sync(held, what=f"{service} holding {lease}")
