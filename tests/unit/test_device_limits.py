"""Messages per device at the bridge (baton_device_bridge.limits): past its rate a device's
messages are dropped before JetStream and counted; other devices and what waited in the
broker while the bridge was away go on."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from baton_contracts.mqtt import response_topic
from baton_contracts.nats import DeviceReport, PresenceReport, StateReport
from baton_device_bridge.answers import SERVICE, AnswerForwarder
from baton_device_bridge.limits import LOG_EVERY_S, REASON, DeviceLimits
from baton_device_bridge.reports import ReportSink
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog
from baton_platform.metrics import REJECTED_MESSAGES

WIRING = Wiring(Catalog.from_yaml(Path(__file__).parents[2] / "deploy/catalog/demo.yaml"))
FLOODER, QUIET = "demo-thermostat-1", "demo-thermostat-2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stored(ReportSink):
    """The reports that would have gone to JetStream."""

    def __init__(self) -> None:
        self.reports: list[DeviceReport | PresenceReport | StateReport] = []

    async def store(self, report: DeviceReport | PresenceReport | StateReport) -> None:
        self.reports.append(report)


def rejected() -> float:
    value: float = REJECTED_MESSAGES.labels(service=SERVICE, reason=REASON)._value.get()
    return value


def answer(device_id: str, n: int) -> tuple[str, bytes]:
    body = {"status": "IN_PROGRESS", "payload": {"n": n}, "answer_id": str(n)}
    return response_topic(device_id, uuid4()), json.dumps(body).encode()


def test_a_device_gets_its_burst_then_its_rate() -> None:
    clock = Clock()
    limits = DeviceLimits(rate=10, burst=5, service=SERVICE, clock=clock)
    before = rejected()
    assert [limits.admit(FLOODER) for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.1  # one token back at 10/s
    assert [limits.admit(FLOODER) for _ in range(2)] == [True, False]
    assert limits.admit(QUIET)  # each device its own bucket
    assert rejected() - before == 3


def test_rate_zero_admits_everything() -> None:
    limits = DeviceLimits(rate=0, burst=1, service=SERVICE)
    assert all(limits.admit(FLOODER) for _ in range(10_000))


def test_a_flooding_device_is_logged_once_a_minute_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limits = DeviceLimits(rate=1, burst=1, service=SERVICE, clock=clock)
    with caplog.at_level(logging.WARNING, logger="baton_device_bridge.limits"):
        limits.admit(FLOODER)  # its one token
        for _ in range(100):  # no time passes: 100 refused, the first one logged
            limits.admit(FLOODER)
        clock.now += LOG_EVERY_S / 2
        for _ in range(50):  # one token back (the burst is 1): 49 refused, not logged
            limits.admit(FLOODER)
        clock.now += LOG_EVERY_S / 2
        limits.admit(FLOODER)  # one token back: admitted
        limits.admit(FLOODER)  # refused, a minute after the first line: logged
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert FLOODER in lines[0] and "dropped 1 message(s)" in lines[0]
    assert "dropped 149 message(s) in the last 60 s" in lines[1]


async def test_the_forwarder_drops_a_flood_before_jetstream_and_keeps_other_devices() -> None:
    clock = Clock()
    stored = Stored()
    limits = DeviceLimits(rate=10, burst=20, service=SERVICE, clock=clock)
    forwarder = AnswerForwarder(stored, WIRING, lambda _: None, limits=limits)
    for n in range(200):  # live: nothing waited in the broker (taken_since None)
        await forwarder.handle(*answer(FLOODER, n))
    await forwarder.handle(*answer(QUIET, 1))
    assert [r.device_id for r in stored.reports] == [FLOODER] * 20 + [QUIET]


async def test_what_waited_in_the_broker_while_the_bridge_was_away_is_never_dropped() -> None:
    stored = Stored()
    limits = DeviceLimits(rate=10, burst=20, service=SERVICE, clock=Clock())
    forwarder = AnswerForwarder(stored, WIRING, lambda _: None, limits=limits)
    away_since = datetime.now(UTC) - timedelta(seconds=30)
    for n in range(200):  # a resumed session's backlog: stamped with the last watermark
        await forwarder.handle(*answer(FLOODER, n), taken_since=away_since)
    assert len(stored.reports) == 200
    for n in range(200, 230):  # live again: the bucket still has its whole burst
        await forwarder.handle(*answer(FLOODER, n))
    assert len(stored.reports) == 220
