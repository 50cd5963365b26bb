"""Baton's command benchmark: `make bench` (or `python -m tests.benchmarks.commands`).

Starts the whole stack (nats-server, the MQTT broker, the four services, a simulated fleet
of `--devices` devices) in a temporary directory on free loopback ports and prints, from
one run on this machine (docs/benchmarks.md says what each figure means):

- floors: NATS request/reply, MQTT round trips (bare, and to a simulated device), a
  JetStream publish, an HTTP request to the api, the event store's write rate one command
  per transaction and many, each with its latency and the CPU it costs;
- max sustained rate: open-loop offered rates stepped up until fewer than 99 % of the
  commands SUCCEEDED within 1 s of being due; commands/s completed at the best step;
- latency: submit -> SUCCEEDED, p50/p99, unloaded and at half the max rate;
- cost: CPU seconds per command and peak RSS of every process at the best step;
- growth: the max rate with fewer devices (fresh stacks) and with a stored history
  (`--stored` executions, built once and cached under ./var/bench-cache);
- the ratio of each figure to its floor.

Nothing here asserts a speed: the numbers depend on the machine; compare runs on one.
`--quick` runs it all small, in under two minutes. `--database postgres` runs each stack on
a throwaway PostgreSQL cluster of its own (fsync on) instead of SQLite files, and measures
the event store floor there (the history part: its history cached as a `pg_dump`, restored
into the stack's database).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypedDict

from baton_cli.localstack import Stack, mqtt_flavour, raise_open_files_limit
from baton_domain.catalog import Catalog
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from baton_simulator import fleet_ids
from tests.benchmarks import floors
from tests.benchmarks.history import (
    install_history,
    open_store,
    restore_postgres_history,
    stored_history,
    stored_postgres_history,
    write_commands,
)
from tests.benchmarks.load import Load, LoadSettings, Search, StepResult, find_max
from tests.benchmarks.procs import CpuSnapshot, rss_kib, stack_pids
from tests.benchmarks.report import (
    STEP_HEADER,
    Burst,
    Figures,
    Floor,
    Growth,
    StoreFloor,
    fsynced,
    report,
    say,
    step_line,
)
from tests.benchmarks.stacks import (
    add_nats_options,
    api_client,
    database_url,
    fleet_stack,
    postgres_of,
    seed_relay,
    settle,
    start_fleet,
    start_services,
)

PARTS = ("floors", "latency", "max", "devices", "history")
_floors = itertools.count(1)  # the store floors' PostgreSQL databases
EXTRA_PARTS = ("burst",)  # run only when asked for
BURST_TIMEOUT_S = 300
BURST_COMMANDS, BURST_IN_FLIGHT = 500, 20
WARM_UP_IN_FLIGHT = 10

# Each option's value with and without --quick (an option given on the command line wins).
PRESETS: dict[str, tuple[object, object]] = {
    "step_seconds": (60.0, 2.0),
    "devices": (1000, 100),
    "growth_devices": ("10,100", "10"),
    "stored": (1_000_000, 10_000),
    "start_rate": (25.0, 25.0),
    "refine": (2, 1),
    "max_steps": (8, 3),
    "latency_samples": (100, 20),
    "floor_samples": (300, 50),
    "store_commands": (300, 50),
}


# --- the parts ---------------------------------------------------------------------------------


async def measured(
    name: str, stack: Stack, work: Callable[[], Awaitable[list[float]]], figures: Figures
) -> None:
    """Run a floor's `work`, keeping its samples and the CPU every process spent on it."""
    pids = stack_pids(stack)
    before = CpuSnapshot.take(pids)
    samples = await work()
    spent = sum(CpuSnapshot.take(pids).since(before).values())
    figures.floors[name] = Floor(samples, spent / len(samples))


async def wire_floors(stack: Stack, devices: list[str], n: int, figures: Figures) -> None:
    """The floors under Baton, measured before its services run (a device's answers to a
    request of the bench would otherwise reach the device-bridge as well)."""
    port, protocol = stack.mqtt_port or 0, stack.mqtt_protocol
    login = (stack.accounts.simulator.username, stack.accounts.simulator.password)
    await measured(
        "nats", stack, lambda: floors.nats_round_trip(stack.nats_url_as(OPS), n), figures
    )
    await measured("mqtt", stack, lambda: floors.mqtt_round_trip(port, protocol, n, login), figures)
    await measured(
        "device",
        stack,
        lambda: floors.device_round_trip(port, protocol, devices, n, login),
        figures,
    )
    await measured(
        "jetstream", stack, lambda: floors.jetstream_publish(stack.nats_url_as(OPS), n), figures
    )


def store_floor(
    data_dir: Path,
    catalog: Path,
    devices: list[str],
    commands: int,
    batch: int,
    database_url: str | None = None,
) -> StoreFloor:
    """The event store's write rate for succeeding commands in the store under `data_dir`
    (or in the PostgreSQL database `database_url`): `commands` one per transaction, then
    ten times as many `batch` per transaction."""
    app = open_store(data_dir, Catalog.from_yaml(catalog), database_url)
    found: list[float] = []
    try:
        for count, size in ((commands, 1), (commands * 10, batch)):
            cpu = time.process_time()
            found.append(write_commands(app, devices, count, size))
            found.append((time.process_time() - cpu) / count)
    finally:
        app.close()
    single, single_cpu, batched, batched_cpu = found
    return StoreFloor(single, batched, single_cpu, batched_cpu)


async def warm_up(stack: Stack, load: Load, drain: float) -> None:
    """One command to every device, a few at a time, not measured: a device's first
    command also starts its queue's stream, and a cold stack is not a sustained one."""
    say(f"warm-up: a command to each of the {len(load.settings.devices)} devices")
    gate = asyncio.Semaphore(WARM_UP_IN_FLIGHT)

    async def one() -> None:
        async with gate:
            await load.submit()

    await asyncio.gather(*(one() for _ in load.settings.devices))
    await settle(stack, load.client, drain)


async def unloaded_latency(load: Load, n: int) -> list[float]:
    """One command at a time, each waited for: submit -> SUCCEEDED."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        status = await load.submit()
        samples.append(time.perf_counter() - start if status == "SUCCEEDED" else math.inf)
    return samples


async def search_max(
    stack: Stack, load: Load, search: Search, drain: float
) -> tuple[StepResult | None, list[StepResult]]:
    pids = stack_pids(stack)

    async def run_step(rate: float, seconds: float) -> StepResult:
        step = await load.step(rate, seconds, pids, lambda: settle(stack, load.client, drain))
        say("  " + step_line(step, load.settings))
        return step

    say("  " + STEP_HEADER)
    return await find_max(run_step, search, lambda s: s.passed(load.settings))


async def burst(load: Load, commands: int, concurrency: int) -> Burst:
    """Submit `commands` with `concurrency` in flight, not waiting for them, then time
    until the views count them all SUCCEEDED (one count per poll, not one per command)."""

    async def succeeded() -> int:
        path = "/v1/executions?status=SUCCEEDED&limit=1&show=ALL"
        _, body = await load.client.request("GET", path)
        return int(json.loads(body)["total_count"])

    before = await succeeded()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            status = await load.submit(wait=False)
            if status.startswith(("HTTP", "connection")):
                raise RuntimeError(f"a submit failed: {status}")

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(commands)))
    accepted = time.perf_counter() - start
    deadline = start + BURST_TIMEOUT_S
    while time.perf_counter() < deadline:
        if await succeeded() - before >= commands:
            return Burst(commands, concurrency, accepted, time.perf_counter() - start)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"not all {commands} commands SUCCEEDED within {BURST_TIMEOUT_S} s")


# --- the run -----------------------------------------------------------------------------------


class StackSync(TypedDict):
    """How a bench stack's JetStream keeps what it is given (`fleet_stack`'s arguments)."""

    jetstream_fsync: bool
    events_persist: str


class Bench:
    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.parts = set(args.parts.split(","))
        self.figures = Figures()

    def load_settings(self, devices: int) -> LoadSettings:
        a = self.args
        return LoadSettings(fleet_ids(devices), a.threshold, a.target, a.wait, a.ttl)

    def search(self, start_rate: float) -> Search:
        a = self.args
        return Search(start_rate, a.step_factor, a.refine, a.max_steps, a.step_seconds)

    async def store_floor(
        self, data_dir: Path, stack: Stack, in_stack_store: bool = False
    ) -> StoreFloor:
        """On SQLite, the store under `data_dir`; on PostgreSQL, a database of its own on the
        stack's server, or with `in_stack_store` the stack's own database (holding a stored
        history)."""
        a = self.args
        devices = fleet_ids(a.devices)
        server = postgres_of(stack)
        if server is None:
            url = None
        elif in_stack_store:
            url = database_url(stack)
        else:
            url = server.create_database(f"floor{next(_floors)}")
        return await asyncio.to_thread(
            store_floor, data_dir, stack.catalog, devices, a.store_commands, a.store_batch, url
        )

    @property
    def topology(self) -> tuple[int, int]:
        """(NATS nodes, replicas of each service)."""
        return self.args.nats_nodes, self.args.replicas

    @property
    def sync(self) -> StackSync:
        """How the stacks' nats-servers sync JetStream (`--jetstream-sync`) and store the
        events stream (`--events-persist`)."""
        return {"jetstream_fsync": fsynced(self.args), "events_persist": self.args.events_persist}

    async def run(self) -> None:
        if self.parts & {"floors", "latency", "max", "burst"}:
            await self.main_stack()
        if "devices" in self.parts:
            for count in sorted({int(n) for n in self.args.growth_devices.split(",") if n}):
                name, broker, database = f"devices-{count}", self.args.broker, self.args.database
                with fleet_stack(
                    self.scratch, name, count, broker, database, *self.topology, **self.sync
                ) as s:
                    say(f"growth: max sustained rate with {count} devices")
                    s.start_infrastructure()
                    best, bounded = await self.search_on(s, count)
                self.figures.growth[f"{count:,} devices"] = Growth(
                    best, self.figures.store, bounded
                )
        if "history" in self.parts:
            await self.history_stack()

    async def main_stack(self) -> None:
        a, f = self.args, self.figures
        with fleet_stack(
            self.scratch, "main", a.devices, a.broker, a.database, *self.topology, **self.sync
        ) as stack:
            say(f"starting the stack with {a.devices} simulated devices")
            stack.start_infrastructure()
            start_fleet(stack, a.devices)
            if "floors" in self.parts:
                say("floors: NATS, MQTT, a simulated device, JetStream")
                await wire_floors(stack, fleet_ids(a.devices), a.floor_samples, f)
            await start_services(stack)
            with api_client(stack) as client:
                await settle(stack, client, a.drain_timeout)
                f.idle_rss_kib = rss(stack, "VmRSS")
                if "floors" in self.parts:
                    say("floors: HTTP, the event store")
                    await measured(
                        "http", stack, lambda: floors.http_round_trip(client, a.floor_samples), f
                    )
                    f.store = await self.store_floor(self.scratch / "store-floor", stack)
                load = Load(client, self.load_settings(a.devices))
                await warm_up(stack, load, a.drain_timeout)
                if "latency" in self.parts:
                    say(f"latency: {a.latency_samples} commands one at a time")
                    f.unloaded = await unloaded_latency(load, a.latency_samples)
                    await settle(stack, client, a.drain_timeout)
                if "max" in self.parts:
                    await self.max_and_half(stack, load)
                if "burst" in self.parts:
                    say(f"burst: {a.commands} commands, {a.concurrency} in flight")
                    f.burst = await burst(load, a.commands, a.concurrency)
            f.peak_rss_kib = rss(stack, "VmHWM")

    async def max_and_half(self, stack: Stack, load: Load) -> None:
        a, f = self.args, self.figures
        say(f"max sustained rate with {a.devices} devices, steps of {a.step_seconds:g} s")
        f.best, f.steps = await search_max(stack, load, self.search(a.start_rate), a.drain_timeout)
        bounded = any(not step.passed(load.settings) for step in f.steps)
        f.growth[f"{a.devices:,} devices"] = Growth(f.best, f.store, bounded)
        if f.best is None:
            return
        half = f.best.rate / 2
        say(f"latency at half the max rate: {half:.1f}/s for {a.step_seconds:g} s")
        f.half = await load.step(
            half,
            a.step_seconds,
            stack_pids(stack),
            lambda: settle(stack, load.client, a.drain_timeout),
        )
        say("  " + step_line(f.half, load.settings))

    async def search_on(self, stack: Stack, devices: int) -> tuple[StepResult | None, bool]:
        """Start the fleet and the services on `stack` (its infrastructure runs) and find
        its max rate, starting from half the main run's; returns (the best step, whether a
        step failed)."""
        a, best = self.args, self.figures.best
        start_fleet(stack, devices)
        await start_services(stack)
        with api_client(stack) as client:
            await settle(stack, client, a.drain_timeout)
            _, body = await client.request("GET", "/v1/executions?limit=1&show=ALL")
            say(f"  the views hold {json.loads(body)['total_count']:,} executions")
            load = Load(client, self.load_settings(devices))
            await warm_up(stack, load, a.drain_timeout)
            start = best.rate / 2 if best else a.start_rate
            found, steps = await search_max(stack, load, self.search(start), a.drain_timeout)
        return found, any(not step.passed(load.settings) for step in steps)

    async def history_stack(self) -> None:
        a = self.args
        name = f"{a.devices:,} devices + {a.stored:,} stored"
        with fleet_stack(
            self.scratch, "history", a.devices, a.broker, a.database, *self.topology, **self.sync
        ) as stack:
            await self.install_history(stack)
            say(f"growth: {name}; the event store floor on that store")
            store = await self.store_floor(stack.data_dir, stack, in_stack_store=True)
            stack.start_infrastructure()
            await seed_relay(stack, stack.catalog)
            best, bounded = await self.search_on(stack, a.devices)
        self.figures.growth[name] = Growth(best, store, bounded)

    async def install_history(self, stack: Stack) -> None:
        """The cached history of `--stored` executions (built first if needed) as the
        stack's store and views: copied files on SQLite, a restored dump on PostgreSQL."""
        a = self.args
        catalog, devices = Catalog.from_yaml(stack.catalog), fleet_ids(a.devices)
        server = postgres_of(stack)
        if server is None:
            history = await asyncio.to_thread(stored_history, catalog, devices, a.stored, say)
            if history.built_in is not None:
                say(f"  built in {history.built_in:.0f} s")
            await asyncio.to_thread(install_history, history, Settings(data_dir=stack.data_dir))
            return
        dump = await asyncio.to_thread(
            stored_postgres_history, catalog, devices, a.stored, server, say
        )
        if dump.built_in is not None:
            say(f"  built in {dump.built_in:.0f} s")
        start = time.perf_counter()
        await asyncio.to_thread(restore_postgres_history, dump, database_url(stack) or "")
        say(f"  restored in {time.perf_counter() - start:.0f} s")


def rss(stack: Stack, field: str) -> dict[str, int]:
    return {name: rss_kib(pid, field) for name, pid in stack_pids(stack).items()}


# --- the command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="every part, small: under 2 minutes")
    add(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of: {', '.join(PARTS + EXTRA_PARTS)} (all but burst)",
    )
    add("--step-seconds", type=float, help="length of a load step (60; quick 2)")
    add("--devices", type=int, help="simulated devices of the main run (1000; quick 100)")
    add("--growth-devices", help="fleet sizes for growth, comma-separated (10,100; quick 10)")
    add("--stored", type=int, help="executions stored for the history run (1M; quick 10k)")
    add("--start-rate", type=float, help="first offered rate, commands/s (25)")
    add("--step-factor", type=float, default=2.0, help="the step up of the offered rate (2)")
    add("--refine", type=int, help="bisections after the first failure (2; quick 1)")
    add("--max-steps", type=int, help="most steps of one search (8; quick 3)")
    add("--threshold", type=float, default=1.0, help="seconds from due to SUCCEEDED (1)")
    add("--target", type=float, default=0.99, help="share that must make it (0.99)")
    add("--wait", type=float, default=5.0, help="?wait= on every submit, seconds (5)")
    add("--ttl", type=int, default=10, help="the commands' ttl, seconds (10)")
    add("--drain-timeout", type=float, default=60.0, help="most seconds to wait between steps (60)")
    add("--latency-samples", type=int, help="unloaded commands (100; quick 20)")
    add("--floor-samples", type=int, help="round trips per floor (300; quick 50)")
    add(
        "--store-commands",
        type=int,
        help="store floor commands, one per transaction (300; quick 50)",
    )
    add("--store-batch", type=int, default=100, help="commands per batched transaction (100)")
    add("--commands", type=int, help="commands of the burst part (500)")
    add("--concurrency", type=int, help="in flight in the burst part (20)")
    add("--broker", choices=["mosquitto", "nats"], help="the MQTT broker (Mosquitto if installed)")
    add(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="where the stacks store: SQLite files, or a throwaway PostgreSQL cluster per "
        "stack (fsync on); the event store floor is measured there too (sqlite)",
    )
    add("--nats-nodes", type=int, default=1, help="NATS servers: 1, or a cluster of 3 (R3)")
    add_nats_options(parser)
    add(
        "--replicas",
        type=int,
        default=1,
        help="processes of each service (the api's behind the local balancer); more than "
        "one needs --database postgres",
    )
    args = parser.parse_args(argv)
    if args.replicas > 1 and args.database != "postgres":
        parser.error("--replicas above 1 needs --database postgres (replicas share no files)")
    for name, (full, quick) in PRESETS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    unknown = set(args.parts.split(",")) - set(PARTS + EXTRA_PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    burst_options = args.commands is not None or args.concurrency is not None
    if burst_options and "burst" not in args.parts.split(","):
        # The options of the closed-loop bench this one grew from: say where they went.
        parser.error("--commands and --concurrency are the burst part's: add --parts burst")
    args.commands = args.commands or BURST_COMMANDS
    args.concurrency = args.concurrency or BURST_IN_FLIGHT
    return args


def main() -> None:
    args = parse_args()
    raise_open_files_limit()  # a connection per command in flight, a socket per device
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            asyncio.run(bench.run())
        finally:
            report(args, bench.figures, args.broker or mqtt_flavour())


if __name__ == "__main__":
    main()
