"""What the parts that run once per event store can carry: `python -m tests.benchmarks.ceilings`.

Replicas share every part of a command's path except three, which run once per event
store however many machines there are: the store's ordered inserts (the bench's store
floor), the outbox relay (one publisher onto BATON_EVENTS, each write fsynced) and the
views' projection (docs/architecture.md, "Replicas"). Their rates bound what adding
machines can give (docs/benchmarks.md, "how throughput grows with machines").

On a store of `--commands` succeeding commands written through the domain (five events
each, as the store floor writes them), on a throwaway PostgreSQL (fsync on) or SQLite files,
and a nats-server as Baton runs it, this measures:

- the relay publishing the whole store onto BATON_EVENTS, as it catches up on a backlog
  (rounds of its `BATCH`, `WINDOW` in flight), with its process's and nats-server's CPU
  (`--nats-nodes 3`: a cluster's, the stream replicated on the three);
- the projection applying the whole store to empty views, `--batches` events per step
  (the live projection's steps hold up to 500; under load, what came in during its linger),
  with its process's and the database's CPU.

A command in a running stack stores seven events: the five here and its device queue's two
(Admitted, Finished), which the relay publishes and the projection reads and skips. So the
relay's commands/s are its events/s over seven; the projection's are over five.

Nothing asserts a speed: compare the lines of one run, and across machines the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats

from baton_cli.catalog import fleet as write_fleet_catalog
from baton_cli.localstack import Server, start_nats, start_nats_cluster, start_postgres
from baton_contracts.nats import EVENTS_STREAM, event_subject
from baton_dispatcher.relay import OutboxRelay
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.mapping import read_events
from baton_platform.nats import ensure_streams, until_writable
from baton_platform.settings import Settings
from baton_simulator import fleet_ids
from baton_views.projection import project
from baton_views.store import TABLES, connect, create_schema, read_position, transaction
from tests.benchmarks.history import open_store, write_commands
from tests.benchmarks.jetstream_costs import EVENTS_PER_COMMAND
from tests.benchmarks.procs import POSTGRES, CpuSnapshot
from tests.benchmarks.stacks import BASE_CATALOG

EVENTS_WRITTEN = 5  # per command written here: Requested, Dispatched, Published, two answers
DEVICES = 200
WRITE_BATCH = 100  # commands per transaction while filling the store


@dataclass(frozen=True)
class Ceiling:
    """One part's run over the whole store."""

    what: str
    events: int
    seconds: float
    cpu: dict[str, float]  # process -> CPU seconds over the run
    per_command: int  # events that make one command, for this part

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def line(self) -> str:
        commands = self.events / self.per_command
        cpu = ", ".join(f"{name} {1000 * s / commands:.2f}" for name, s in self.cpu.items())
        total = 1000 * sum(self.cpu.values()) / commands
        return (
            f"{self.what:<28} {self.events_per_s:8,.0f} events/s = "
            f"{self.events_per_s / self.per_command:6,.0f} commands/s;"
            f" ms CPU per command: {total:.2f} ({cpu})"
        )


@contextmanager
def measured_cpu(pids: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """Fills `into` with each process's CPU seconds spent inside the block (`postgres`: with
    its children, one per connection)."""
    before = CpuSnapshot.take(pids)
    yield
    into.update(CpuSnapshot.take(pids).since(before))


async def relay_ceiling(executions: Executions, servers: list[Server]) -> Ceiling:
    """The relay publishing every stored event, from an empty stream kept on each of
    `servers` (one nats-server, or a cluster's nodes: then replicated on all of them)."""
    nc = await nats.connect(servers=[server.url for server in servers])
    try:
        await ensure_streams(nc.jetstream(), replicas=len(servers))
        # The relay publishes once, not again after a pause as the dispatcher's does.
        await until_writable(nc.jetstream(), event_subject("writable", "Probe"))
        relay = OutboxRelay(executions, nc, poll_interval=1.0)
        await relay.read_stream_end()
        last = executions.recorder.max_notification_id() or 0
        cpu: dict[str, float] = {}
        pids = {"bench (relay)": os.getpid()}
        pids |= {f"nats-server {server.name}": server.proc.pid for server in servers}
        start = time.perf_counter()
        with measured_cpu(pids, cpu):
            while relay.position < last:
                after = relay.position
                events = await asyncio.to_thread(read_events, executions, after, 500)
                await relay.publish(events, after)
        seconds = time.perf_counter() - start
        stored = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.messages
        if stored != last:
            raise RuntimeError(f"{EVENTS_STREAM} holds {stored} events, the store {last}")
    finally:
        await nc.close()
    # The nodes as one: a cluster's CPU per command against one server's.
    nodes = sum(cpu.pop(f"nats-server {server.name}") for server in servers)
    cpu["nats-server"] = nodes
    where = "" if len(servers) == 1 else f", R{len(servers)}"
    return Ceiling(f"relay (fsync each write{where})", last, seconds, cpu, EVENTS_PER_COMMAND)


def projection_ceiling(
    executions: Executions, settings: Settings, batch: int, database_pid: int | None
) -> Ceiling:
    """The projection applying every stored event to empty views, `batch` per step, each
    step one transaction as the api's projector commits it."""
    conn = connect(settings.views_database)
    try:
        create_schema(conn)
        with transaction(conn):
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}")
        pids = {"bench (projection)": os.getpid()}
        if database_pid is not None:
            pids[POSTGRES] = database_pid
        cpu: dict[str, float] = {}
        position = events = 0
        start = time.perf_counter()
        with measured_cpu(pids, cpu):
            while found := read_events(executions, position, batch):
                with transaction(conn):
                    _, position = project(conn, found)
                events += len(found)
        seconds = time.perf_counter() - start
        if read_position(conn) != position or not position:
            raise RuntimeError(f"the views stopped at {read_position(conn)}, not {position}")
    finally:
        conn.close()
    return Ceiling(f"projection, {batch} per step", events, seconds, cpu, EVENTS_WRITTEN)


def run(args: argparse.Namespace, scratch: Path) -> list[Ceiling]:
    catalog = scratch / "catalog.yaml"
    write_fleet_catalog(DEVICES, base=BASE_CATALOG, output=catalog)
    database = None
    url = None
    if args.database == "postgres":
        database = start_postgres(scratch / "postgres")
        url = database.url
    if args.nats_nodes == 1:
        servers = [start_nats(scratch / "nats")]
    else:
        servers = start_nats_cluster(scratch / "nats", args.nats_nodes)
    try:
        settings = Settings(data_dir=scratch / "data", database_url=url)
        executions = open_store(settings.data_dir, Catalog.from_yaml(catalog), url)
        try:
            print(f"writing {args.commands:,} succeeding commands ({WRITE_BATCH} a transaction)")
            write_commands(executions, fleet_ids(DEVICES), args.commands, WRITE_BATCH)
            found = [asyncio.run(relay_ceiling(executions, servers))]
            print(found[-1].line())
            database_pid = None if database is None else database.proc.pid
            for batch in args.batches:
                found.append(projection_ceiling(executions, settings, batch, database_pid))
                print(found[-1].line())
        finally:
            executions.close()
    finally:
        for server in servers:
            server.stop()
        if database is not None:
            database.stop()
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--commands", type=int, default=10_000, help="commands stored (10,000)")
    parser.add_argument(
        "--nats-nodes",
        type=int,
        choices=[1, 3],
        default=1,
        help="one nats-server, or a cluster of 3 with the stream on all three (1)",
    )
    parser.add_argument(
        "--batches",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[8, 32, 128, 500],
        help="events per projection step, comma-separated (8,32,128,500)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-ceilings-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
