"""Test harness: real servers on free loopback ports, and polling with a deadline.

Integration and end-to-end tests ask for `nats_server` and `mqtt_broker`; each test gets
fresh ones (they start in well under a second), so no test depends on another's state.

Tests of what is stored ask for `database_url`: they run once on SQLite (None) and once on
PostgreSQL, a database of its own per test in one server per test session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client

from baton_cli.localstack import (
    PORT_RANGE,
    PostgresServer,
    Server,
    find_binary,
    free_port,
    start_mosquitto,
    start_nats,
    start_postgres,
)
from baton_contracts.nats import DEFAULT_TENANT
from baton_platform.nats import ensure_streams
from baton_platform.nats_access import OPS, ensure_credentials
from baton_platform.settings import Settings

T = TypeVar("T")

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "catalog" / "demo.yaml"


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker starts its servers on ports of its own part of the range
    (baton_cli.localstack.port_range): two workers once handed the same free port to two
    servers, and the second could not listen."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw"):
        return
    index, count = int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    low, high = PORT_RANGE
    size = (high - low) // count
    os.environ["BATON_PORT_RANGE"] = f"{low + index * size}-{low + (index + 1) * size}"


@pytest.fixture(autouse=True)
def no_dev_stack_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """`baton` fills unset settings from the last `make run` (baton_cli.devstate); a test sees
    only the state it writes itself, never a developer's running stack."""
    path = tmp_path_factory.getbasetemp() / "devstack-state.json"
    path.unlink(missing_ok=True)
    monkeypatch.setenv("BATON_DEV_STATE", str(path))
    return path


@pytest.fixture(autouse=True)
def root_logging_kept() -> Iterator[None]:
    """A command run in-process (`baton simulate` through CliRunner) configures the root
    logger with a handler on the stderr its runner closes afterwards: left there, every later
    test's log line fails ("--- Logging error ---" in the next command's captured stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        # Exactly a StreamHandler: pytest's own capturing handlers are subclasses.
        if type(handler) is logging.StreamHandler and handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def busy() -> Iterator[socket.socket]:
    """A port something else listens on (and accepts connections on)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def start_baton_nats(workdir: Path, port: int | None = None) -> Server:
    """nats-server as Baton's services use it: only its users may connect, each with its
    permissions (the services', `ops` with every right, a client of tenant `default`);
    their passwords in `workdir/credentials.json`, kept when started again there. Its
    streams are in place."""
    credentials = workdir / "credentials.json"
    passwords = ensure_credentials(credentials, [DEFAULT_TENANT])
    server = start_nats(workdir, port, passwords=passwords)
    server.extra["credentials"] = str(credentials)
    with ThreadPoolExecutor(1) as thread:  # its own event loop, whatever runs in this one
        thread.submit(asyncio.run, _create_streams(server)).result()
    return server


async def _create_streams(server: Server) -> None:
    """The streams, as the dispatcher makes them: the other services only wait for them, and
    many tests run one of those alone."""
    client = await nats.connect(server.url_as(OPS))
    try:
        await ensure_streams(client.jetstream())
    finally:
        await client.close()


def nats_access(nats_server: Server) -> dict[str, Any]:
    """The settings a service needs to connect to `nats_server` as its own user."""
    return {"nats_url": nats_server.url, "nats_credentials": Path(nats_server.extra["credentials"])}


def service_settings(nats_server: Server, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for services run in-process against the test's nats-server, each as its own
    NATS user: the demo catalog, data under the test's own directory, and short polls."""
    values: dict[str, Any] = {
        **nats_access(nats_server),
        "data_dir": tmp_path / "data",
        "catalog_path": DEMO,
        "relay_poll_interval": 0.2,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Server]:
    server = start_baton_nats(tmp_path / "nats")
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


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session, started by the first test that needs it
    (`make test` installs the server where it is missing: deploy/local/install-postgres.sh)."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"), durable=False)
    yield server
    server.stop()


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database of `server` (its URL), dropped at the end."""
    name = f"t{next(_databases)}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database of the session's server, dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url


_databases = itertools.count(1)
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each storage test runs on both backends Baton supports."""
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """BATON_DATABASE_URL for the test's backend: None (SQLite files), or a fresh
    PostgreSQL database."""
    if backend == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def nc(nats_server: Server) -> AsyncIterator[Client]:
    """A NATS client of the test's server with every right (user `ops`: the test drives
    and watches the services with it), its JetStream streams in place."""
    client = await nats.connect(nats_server.url_as(OPS))
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
