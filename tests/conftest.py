"""Test harness: real servers on free loopback ports, and polling with a deadline.

Integration and end-to-end tests ask for `nats_server` and `mqtt_broker`; each test gets
fresh ones (they start in well under a second), so no test depends on another's state.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client

from baton_cli.localstack import Server, find_binary, free_port, start_mosquitto, start_nats
from baton_platform.nats import ensure_streams
from baton_platform.settings import Settings

T = TypeVar("T")

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "catalog" / "demo.yaml"


@pytest.fixture
def busy() -> Iterator[socket.socket]:
    """A port something else listens on (and accepts connections on)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def service_settings(nats_server: Server, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for services run in-process against the test's nats-server: the demo
    catalog, data under the test's own directory, and short polls."""
    values: dict[str, Any] = {
        "nats_url": nats_server.url,
        "data_dir": tmp_path / "data",
        "catalog_path": DEMO,
        "relay_poll_interval": 0.2,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Server]:
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture(params=["mosquitto", "nats"])
def mqtt_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """Each MQTT test runs on both brokers Baton supports: Mosquitto (MQTT 5) and
    nats-server's MQTT 3.1.1 listener (`make test` installs Mosquitto where it can)."""
    if request.param == "mosquitto":
        if find_binary("mosquitto") is None:
            pytest.skip("Mosquitto is not installed (deploy/local/install-broker.sh)")
        server = start_mosquitto(tmp_path / "mosquitto")
    else:
        mqtt_port = free_port()
        nats = start_nats(tmp_path / "nats-mqtt", mqtt_port=mqtt_port)
        server = Server(
            "nats-mqtt",
            nats.proc,
            f"mqtt://127.0.0.1:{mqtt_port}",
            mqtt_port,
            {"protocol": "3.1.1"},
        )
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: Server) -> AsyncIterator[Client]:
    """A plain NATS client of the test's server, its JetStream streams in place."""
    client = await nats.connect(nats_server.url)
    await ensure_streams(client.jetstream())
    yield client
    await client.close()


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def eventually_sync(
    probe: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
