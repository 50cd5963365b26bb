"""The chaos run's wait for recovery between faults (tests/chaos/faults.py, `Recovery`): what
counts as recovered, from made-up logs, a listening socket and a stand-in process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton_cli.localstack import Server, Stack
from baton_platform.nats_access import OPS
from tests.chaos.faults import Recovery


@pytest.fixture
def alive() -> Iterator[subprocess.Popen[bytes]]:
    """A running process, standing for every process of the stack."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def stack(tmp_path: Path, busy: socket.socket, alive: subprocess.Popen[bytes]) -> Stack:
    """Both servers stand on `busy` (a port that accepts connections), every process on
    `alive`."""
    stack = Stack(data_dir=tmp_path, api_key="k", catalog=tmp_path / "catalog.yaml")
    port = busy.getsockname()[1]
    nats = Server("nats", alive, f"nats://127.0.0.1:{port}", port, passwords={OPS: "pw"})
    stack.servers = [nats, Server("mosquitto", alive, "", port)]
    # No api: its /ready is not asked.
    stack.processes = {"dispatcher": alive, "device-bridge": alive}
    stack.log_dir.mkdir()
    return stack


def write(stack: Stack, name: str, line: str) -> None:
    with (stack.log_dir / f"{name}.log").open("a") as log:
        log.write(f"2026-12-01 12:00:00,000 INFO {name} x: {line}\n")


def test_a_restarted_service_has_recovered_once_it_logged_ready_since_the_restart(
    stack: Stack,
) -> None:
    write(stack, "dispatcher", "dispatcher ready: from the process before")
    recovery = Recovery(stack)
    recovery.started("dispatcher")
    assert recovery.missing() == ["dispatcher: no 'dispatcher ready' yet"]
    write(stack, "dispatcher", "dispatcher ready: 1 device types")
    assert recovery.missing() == []


def test_the_bridge_is_recovered_only_when_ready_and_connected_to_mqtt(stack: Stack) -> None:
    recovery = Recovery(stack)
    recovery.started("device-bridge")
    write(stack, "device-bridge", "no MQTT broker yet at 127.0.0.1:1883")
    write(stack, "device-bridge", "device-bridge ready (instance default)")
    assert recovery.missing() == ["device-bridge: no 'connected to MQTT ' yet"]
    write(stack, "device-bridge", "connected to MQTT 127.0.0.1:1883 (MQTT 5) as b")
    assert recovery.missing() == []


def test_after_a_broker_restart_the_bridge_must_connect_again(stack: Stack) -> None:
    recovery = Recovery(stack)
    write(stack, "device-bridge", "connected to MQTT 127.0.0.1:1883 (MQTT 5) as b")
    recovery.server_stopped("mqtt-broker")
    assert recovery.missing() == ["device-bridge: no 'connected to MQTT ' yet"]
    write(stack, "device-bridge", "connected to MQTT 127.0.0.1:1883 (MQTT 5) as b")
    assert recovery.missing() == []


def test_after_a_nats_restart_every_service_must_reconnect_unless_started_since(
    stack: Stack,
) -> None:
    recovery = Recovery(stack)
    recovery.server_stopped("nats-server")
    assert "dispatcher: no 'reconnected to NATS' yet" in recovery.missing()
    write(stack, "dispatcher", "reconnected to NATS")
    # The bridge started again after the restart: its ready lines are what it owes.
    recovery.started("device-bridge")
    write(stack, "device-bridge", "connected to MQTT 127.0.0.1:1883 (MQTT 5) as b")
    write(stack, "device-bridge", "device-bridge ready (instance default)")
    # The api and the scheduler are not running in this stack, but still owe the line.
    assert sorted(recovery.missing()) == [
        "api: no 'reconnected to NATS' yet",
        "timeout-scheduler: no 'reconnected to NATS' yet",
    ]


def test_a_dead_process_or_a_closed_port_is_not_recovered(
    stack: Stack, busy: socket.socket
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stack.processes["dispatcher"] = dead
    busy.close()
    assert Recovery(stack).missing() == [
        "dispatcher not running",
        "nats-server not accepting connections",
        "mqtt-broker not accepting connections",
    ]


def test_the_wait_gives_up_after_its_timeout_naming_what_is_missing(stack: Stack) -> None:
    recovery = Recovery(stack)
    recovery.started("dispatcher")
    waited, first, missing = asyncio.run(recovery.wait(timeout=0.3))
    assert waited >= 0.3
    assert first == missing == ["dispatcher: no 'dispatcher ready' yet"]


def test_after_a_nats_restart_jetstream_must_answer_too(stack: Stack) -> None:
    """Clients reconnect as soon as nats-server listens; JetStream answers only once it has
    recovered its streams. The port here is no NATS at all."""
    recovery = Recovery(stack)
    for name in ("dispatcher", "timeout-scheduler", "device-bridge", "api"):
        write(stack, name, "reconnected to NATS")  # before the stop: does not count
    recovery.server_stopped("nats-server")
    for name in ("dispatcher", "timeout-scheduler", "device-bridge", "api"):
        write(stack, name, "reconnected to NATS")
    stack.nats_port = stack.servers[0].port
    _, _, missing = asyncio.run(recovery.wait(timeout=0.3))
    assert missing == ["nats-server: JetStream not answering"]
