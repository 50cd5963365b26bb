"""The stacks the bench runs: a simulated fleet, started in the order the floors need, and
ways to tell when a stack has finished what it was given."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from baton_cli.catalog import fleet as write_fleet_catalog
from baton_cli.localstack import (
    PostgresServer,
    Stack,
    mqtt_flavour,
    start_postgres,
    start_simulator,
)
from baton_dispatcher.relay import OutboxRelay
from baton_domain.catalog import Catalog
from baton_platform.mapping import read_events
from baton_platform.nats import ensure_streams
from baton_platform.nats_access import OPS
from tests.benchmarks.history import open_store
from tests.benchmarks.lean_http import LeanClient
from tests.benchmarks.load import UNFINISHED
from tests.benchmarks.procs import busy_cores, stack_pids
from tests.benchmarks.report import BENCH, say

ROOT = Path(__file__).resolve().parents[2]
BASE_CATALOG = ROOT / "deploy" / "catalog" / "demo.yaml"
KEY = "bench-key"
IDLE_CORES = 0.15  # the stack counts as idle below this many busy cores


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """The stacks' NATS settings a run may change: `--jetstream-sync` (read it with
    `report.fsynced`) and `--events-persist`."""
    parser.add_argument(
        "--jetstream-sync",
        choices=["always", "default"],
        default="always",
        help="always: an fsync per JetStream write, as Baton runs; default: nats-server's own "
        "(every 2 minutes), to see what that durability costs (always)",
    )
    parser.add_argument(
        "--events-persist",
        choices=["default", "async"],
        default="default",
        help="the services' BATON_NATS_EVENTS_PERSIST: the events stream's persist mode (default)",
    )


@dataclass
class BenchStack(Stack):
    """A stack that may store in a PostgreSQL cluster of its own (stopped with the rest)."""

    postgres: PostgresServer | None = None

    def stop_all(self) -> None:
        super().stop_all()
        if self.postgres is not None:
            self.postgres.stop()


@contextmanager
def fleet_stack(
    scratch: Path,
    name: str,
    devices: int,
    broker: str | None,
    database: str = "sqlite",
    nats_nodes: int = 1,
    replicas: int = 1,
    postgres_settings: Sequence[str] = (),
    jetstream_fsync: bool = True,
    events_persist: str = "default",
) -> Iterator[Stack]:
    """A stack (not started) whose catalog is the demo's plus `devices` generated ones.
    With `database` postgres, its storage is a new PostgreSQL cluster of its own (durable:
    fsync on), already running, which the stack stops with the rest. `nats_nodes` and
    `replicas`: the topology (`make run-cluster`'s is 3 and 2). `jetstream_fsync` False:
    nats-server's default sync, for the comparison only. `events_persist`: the services'
    BATON_NATS_EVENTS_PERSIST."""
    folder = scratch / name
    folder.mkdir(parents=True)
    catalog = folder / "catalog.yaml"
    write_fleet_catalog(devices, base=BASE_CATALOG, output=catalog)
    stack = BenchStack(
        data_dir=folder / "stack",
        api_key=KEY,
        catalog=catalog,
        broker=broker or mqtt_flavour(),
        simulate=False,
        nats_nodes=nats_nodes,
        replicas=replicas,
        jetstream_fsync=jetstream_fsync,
    )
    # The bench drives each simulated device far harder than a real one (10 devices at 100
    # commands/s: 30 messages/s each, more at the steps above): the devices' rate limit
    # would drop their answers and set the max, not the pipeline.
    stack.extra_env["BATON_DEVICE_MESSAGE_RATE"] = "0"
    if events_persist != "default":
        stack.extra_env["BATON_NATS_EVENTS_PERSIST"] = events_persist
    try:
        if database == "postgres":
            stack.postgres = start_postgres(folder / "postgres", extra_settings=postgres_settings)
            stack.extra_env["BATON_DATABASE_URL"] = stack.postgres.create_database("baton")
        yield stack
    finally:
        stack.stop_all()


@contextmanager
def api_client(stack: Stack) -> Iterator[LeanClient]:
    """The bench's HTTP client of the stack's api, with its key."""
    client = LeanClient("127.0.0.1", stack.api_port or 0, {"Authorization": f"Bearer {KEY}"})
    try:
        yield client
    finally:
        client.close()


def database_url(stack: Stack) -> str | None:
    return stack.extra_env.get("BATON_DATABASE_URL")


def postgres_of(stack: Stack) -> PostgresServer | None:
    server: PostgresServer | None = getattr(stack, "postgres", None)
    return server


def start_fleet(stack: Stack, devices: int) -> None:
    """`baton simulate --fleet N`, returned once every device is online."""
    stack.processes["simulator"] = start_simulator(
        stack.env(), stack.log_dir, ["--fleet", str(devices)]
    )


async def start_services(stack: Stack) -> None:
    """The four services (each replica of them, and the api's balancer), returned once the
    api says it is ready."""
    for name in stack.names:
        stack.start(name)
    if stack.replicas > 1:
        stack.start("balancer")
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(base_url=stack.api_url) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/ready", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if stack.dead():
                break
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the stack did not become ready; logs in {stack.log_dir}")


def baton_pids(stack: Stack) -> dict[str, int]:
    return {k: v for k, v in stack_pids(stack).items() if k != BENCH}


async def settle(stack: Stack, client: LeanClient, timeout: float) -> None:
    """Wait until no execution is unfinished in the views and the stack is idle."""
    deadline = time.monotonic() + timeout
    path = f"/v1/executions?status={UNFINISHED}&limit=1&show=ALL"
    while time.monotonic() < deadline:
        status, body = await client.request("GET", path)
        if status == 200 and json.loads(body)["total_count"] == 0:
            break
        await asyncio.sleep(0.5)
    else:
        say(f"  (still unfinished executions after {timeout:.0f} s; going on)")
    while time.monotonic() < deadline and await busy_cores(baton_pids(stack)) > IDLE_CORES:
        pass


async def seed_relay(stack: Stack, catalog: Path) -> None:
    """Put the store's last event on BATON_EVENTS, as the outbox relay would have: the relay
    resumes after the last event the stream holds, so a store copied in with a history does
    not have all of it published again (a running stack's stream holds its tail too)."""
    app = open_store(stack.data_dir, Catalog.from_yaml(catalog), database_url(stack))
    try:
        last = app.recorder.max_notification_id() or 0
        events = read_events(app, last - 1, 1)
        nc = await nats.connect(stack.nats_url_as(OPS))
        try:
            persist = stack.extra_env.get("BATON_NATS_EVENTS_PERSIST", "default")
            await ensure_streams(nc.jetstream(), stack.nats_replicas, persist)
            await OutboxRelay(app, nc, 1.0).publish(events)
        finally:
            await nc.close()
    finally:
        app.close()
