"""The same commands end to end where no Mosquitto is installed: nats-server's MQTT 3.1.1
listener is the broker (no MQTT 5 properties, no message expiry)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import TERMINAL, Baton, make_stack, running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def nats_mqtt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("nats-mqtt"), broker="nats")) as started:
        yield started


def test_mqtt_protocol_is_3_1_1(nats_mqtt_stack: Stack) -> None:
    assert nats_mqtt_stack.env()["BATON_MQTT_PROTOCOL"] == "3.1.1"


def test_success_progress_and_failure(nats_mqtt_stack: Stack) -> None:
    baton = Baton(nats_mqtt_stack)
    ok = baton.send("demo-thermostat-1", "set_temperature", {"value": 18}, wait=10).json()
    assert ok["status"] == "SUCCEEDED"
    assert ok["result"] == {"current_temperature": 18}
    rebooted = baton.wait_for(baton.send("demo-thermostat-2", "reboot").json()["id"], TERMINAL)
    assert [e["status"] for e in rebooted["log"]] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    failed = baton.send("demo-thermostat-3", "self_test", wait=10).json()
    assert failed["status"] == "FAILED"


def test_silent_device_times_out(nats_mqtt_stack: Stack) -> None:
    baton = Baton(nats_mqtt_stack)
    execution = baton.send("demo-silent-1", "reboot", ttl=2).json()
    done = baton.wait_for(execution["id"], TERMINAL, timeout=2 + 2)
    assert done["status"] == "TIMED_OUT"
