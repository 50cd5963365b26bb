"""Baton's chaos run: `make chaos` (or `python -m tests.chaos`); tests/chaos/test_chaos.py
runs a 60-second one in `make test`.

Starts the whole stack (nats-server, the MQTT broker, the four services, a simulated fleet
writing a journal of what each device received and answered) on free loopback ports,
loads it with commands over the HTTP API and over NATS while killing and restarting every
part of it, waits until every execution has ended, then judges the record
(tests/chaos/verdict.py) and prints one line:

    chaos: accepted=N lost=0 duplicated=0 stuck=0 wrong=0 views_equal=yes

preceded by the detail of every non-zero count and notes on the run. Exit status 0 when
all counts are zero and the views equal a fresh replay, else 1 (the data directory, logs
included, is then kept and named).

`--cluster` runs the replicated topology (`make run-cluster`'s: PostgreSQL, 3 NATS nodes, 2
replicas of each service behind the balancer) and kills one replica of each service and one
NATS node, and restarts PostgreSQL, `--kills` times. `--rolling` (with `--cluster`) restarts
every replica in turn (SIGTERM, one at a time, each ready again before the next) and also
counts every request the load saw fail: a rolling restart must fail none.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from baton_cli.localstack import PostgresServer, Stack, start_postgres
from baton_domain.application import Executions
from baton_platform.eventstore import open_executions
from baton_platform.mapping import read_events
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from baton_platform.sql import Database
from baton_views import rebuild
from baton_views.store import read_position
from tests.chaos.faults import (
    Chaos,
    PlannedFault,
    cluster_kinds,
    plan,
    servers_of,
    single_kinds,
    with_takeovers,
)
from tests.chaos.load import Load, Mix
from tests.chaos.verdict import ENDINGS, Record, Verdict, judge, read_journal
from tests.e2e.conftest import wait_ready

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "catalog" / "demo.yaml"
KEY = "chaos-key"
SILENT = ["demo-silent-1"]  # in the demo catalog `baton catalog fleet` builds on
CATCH_UP_S = 30.0
TAIL_SHARE = 0.15  # of the duration: load after the last fault (faults.plan ends at 85 %)

log = logging.getLogger("chaos")


@dataclass(frozen=True)
class Options:
    duration: float = 300.0
    rate: float = 50.0
    devices: int = 200
    silent_share: float = 0.05
    ttl_min: int = 5
    ttl_max: int = 10
    nats_share: float = 0.5
    kills: int = 3
    server_restarts: int = 1
    max_down: float = 2.0
    grace: float = 30.0
    give_up: float = 60.0
    answer_delay: str = "0.3s"
    progress_delay: str = "0.7s"
    seed: int | None = None
    broker: str | None = None
    cluster: bool = False
    rolling: bool = False
    events_persist: str = "default"  # BATON_NATS_EVENTS_PERSIST


class ChaosStack(Stack):
    """The local stack with a simulated fleet that keeps a journal."""

    def __init__(self, options: Options, journal: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options
        self.journal = journal

    def simulator_args(self) -> list[str]:
        options = self.options
        silent = [arg for device in SILENT for arg in ("--silent", device)]
        return [
            "--fleet", str(options.devices), *silent,
            "--answer-delay", options.answer_delay,
            "--progress-delay", options.progress_delay,
            "--journal", str(self.journal),
        ]  # fmt: skip


def run(options: Options, data_dir: Path) -> Verdict:
    """One chaos run with its data under `data_dir` (its own log in chaos.log); the stack
    is stopped when it returns."""
    data_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(data_dir / "chaos.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(to_file)
    log.setLevel(logging.INFO)  # whatever the root logger's level (under pytest, WARNING)
    try:
        return _run(options, data_dir)
    finally:
        log.removeHandler(to_file)
        to_file.close()


def _run(options: Options, data_dir: Path) -> Verdict:
    seed = options.seed if options.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    run_id = f"{seed:x}"
    log.info("chaos: seed %d, data in %s", seed, data_dir)
    catalog = fleet_catalog(data_dir, options.devices)
    extra: dict[str, Any] = {"broker": options.broker} if options.broker else {}
    postgres: PostgresServer | None = None
    if options.cluster:
        postgres = start_postgres(data_dir / "postgres")
        extra |= {"nats_nodes": 3, "replicas": 2, "database_url": postgres.url}
    stack = ChaosStack(
        options,
        data_dir / "simulator-journal.jsonl",
        data_dir=data_dir / "stack",
        api_key=KEY,
        catalog=catalog,
        **extra,
    )
    if options.events_persist != "default":
        stack.extra_env["BATON_NATS_EVENTS_PERSIST"] = options.events_persist
    settings = Settings(
        data_dir=stack.data_dir,
        catalog_path=catalog,
        database_url=None if postgres is None else postgres.url,
    )
    try:
        stack.start_all()
        wait_ready(stack, timeout=60)
        chaos = Chaos(stack, servers_of(stack, postgres))
        planned = faults_of(options, stack, rng)
        load, ran = asyncio.run(drive(stack, chaos, options, planned, rng, run_id, settings))
        stopped_at = datetime.now(UTC)
        stack.stop_all()
        executions = open_executions(settings)
        try:
            records = read_records(executions, f"chaos-{run_id}-")
            replayed = Database(path=data_dir / "replayed-views.sqlite")
            rebuild(executions, replayed)
        finally:
            executions.close()
        differences = compare_views(settings.views_database, replayed)
        statuses = view_statuses(settings.views_database)
    finally:
        stack.stop_all()
        if postgres is not None:
            postgres.stop()
    verdict = judge(
        load.submissions,
        records,
        statuses,
        read_journal(stack.journal),
        chaos.faults,
        views_equal=not differences,
        stuck_after=stopped_at,
        grace=options.grace,
    )
    if options.rolling:
        failed = [f"{s.key}: {dict(s.errors)}" for s in load.submissions if s.errors or s.refused]
        verdict.failed_requests = len(failed)
        verdict.notes.extend(f"a request failed: {line}" for line in failed[:20])
    verdict.notes[:0] = [f"seed {seed}; rate {options.rate}/s for {options.duration:.0f} s"]
    verdict.notes.extend(recovery_notes(chaos, options.duration, ran))
    verdict.notes.extend(differences)
    return verdict


def faults_of(options: Options, stack: Stack, rng: random.Random) -> list[PlannedFault]:
    if options.rolling:
        # Every replica in turn, in the order a deployment would: evenly over 10-85 %.
        names = stack.names
        start, end = 0.10 * options.duration, 0.85 * options.duration
        slot = (end - start) / len(names)
        return [PlannedFault(n, "SIGTERM", start + i * slot, 0.2) for i, n in enumerate(names)]
    if options.cluster:
        kinds = cluster_kinds(stack, rng, options.kills)
        return with_takeovers(plan(rng, options.duration, kinds, options.max_down))
    kinds = single_kinds(options.kills, options.server_restarts)
    return plan(rng, options.duration, kinds, options.max_down)


async def drive(
    stack: Stack,
    chaos: Chaos,
    options: Options,
    planned: list[PlannedFault],
    rng: random.Random,
    run_id: str,
    settings: Settings,
) -> tuple[Load, float]:
    """Load and faults together, then wait until every execution ended (or its deadline and
    the grace passed) and the api's views caught up with the store. Also returns how long
    the load ran (seconds)."""
    mix = Mix(
        devices=[f"sim-{n:05d}" for n in range(1, options.devices + 1)],
        silent=SILENT,
        silent_share=options.silent_share,
        ttl_min=options.ttl_min,
        ttl_max=options.ttl_max,
        nats_share=options.nats_share,
    )
    async with Load(
        stack.api_url, KEY, stack.nats_urls_as(OPS), mix, rng, run_id, options.give_up
    ) as load:
        loop = asyncio.get_running_loop()
        started = loop.time()
        supervising = asyncio.create_task(chaos.supervise())
        faulting = asyncio.create_task(chaos.run(planned, started))
        progress = asyncio.create_task(report_progress(load, chaos, started))

        def load_for() -> float:
            """The run's duration; longer when slow recoveries pushed the faults late: the
            load goes on while faults remain, and for TAIL_SHARE of the duration after the
            stack recovered from the last one, as planned (faults.plan)."""
            if not faulting.done():
                return max(options.duration, loop.time() - started + 1.0)
            if chaos.done_at is None:  # the faults failed: the plan's length
                return options.duration
            return max(options.duration, chaos.done_at - started + TAIL_SHARE * options.duration)

        try:
            await load.run(options.rate, load_for)
            ran = load_for()
            await faulting
            log.info("chaos: load and faults done; waiting for every execution to end")
            await asyncio.to_thread(settle, settings, f"chaos-{run_id}-", options.grace)
            await asyncio.to_thread(catch_up, settings)
        finally:
            for task in (supervising, faulting, progress):
                task.cancel()
            await asyncio.gather(supervising, faulting, progress, return_exceptions=True)
    return load, ran


def recovery_notes(chaos: Chaos, duration: float, ran: float) -> list[str]:
    """How long the stack took to recover before each fault could come, what never did,
    how late that made the faults, and how much longer the load ran for it."""
    waits = "; ".join(f"{w.after} {w.seconds:.1f} s" for w in chaos.waits)
    notes = [f"one fault at a time; the stack recovered, counted from the restart, after: {waits}"]
    notes += [
        f"NOT recovered {w.seconds:.0f} s after {w.after} (the next fault came anyway): "
        + "; ".join(w.missing)
        for w in chaos.waits
        if w.missing
    ]
    late = [d for d in chaos.delays if d > 0.5]
    if late:
        notes.append(
            f"{len(late)} of {len(chaos.delays)} faults came after their planned moment, "
            f"waiting for the stack to recover (up to {max(late):.1f} s late)"
        )
    if ran > duration + 0.5:
        notes.append(
            f"the load ran {ran:.0f} s, not {duration:.0f}: it went on for "
            f"{TAIL_SHARE:.0%} of the duration after the stack recovered from the last fault"
        )
    return notes


async def report_progress(load: Load, chaos: Chaos, started: float, every: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        accepted = sum(1 for s in load.submissions if s.accepted)
        log.info(
            "chaos: %3.0f s: %d submitted, %d accepted, %d in flight, %d faults",
            loop.time() - started,
            len(load.submissions),
            accepted,
            load.in_flight,
            len(chaos.faults),
        )


def settle(settings: Settings, prefix: str, grace: float) -> None:
    """Follow the store until every execution of the run has ended, or the last deadline
    plus `grace` has passed (what is still running then is stuck)."""
    executions = open_executions(settings)
    deadlines: dict[UUID, datetime] = {}
    ended: set[UUID] = set()
    position = 0
    try:
        while True:
            while batch := read_events(executions, position, 1000):
                for event in batch:
                    if event.type == "Requested":
                        key = event.data.get("idempotency_key") or ""
                        if key.startswith(prefix):
                            deadlines[event.execution_id] = datetime.fromisoformat(
                                event.data["deadline"]
                            )
                    elif event.type in ENDINGS:
                        ended.add(event.execution_id)
                position = batch[-1].notification_id
            running = set(deadlines) - ended
            if not running:
                return
            last = max(deadlines[e] for e in running)
            if (datetime.now(UTC) - last).total_seconds() > grace:
                log.warning("chaos: %d executions still running past the grace", len(running))
                return
            time.sleep(1.0)
    finally:
        executions.close()


def catch_up(settings: Settings) -> None:
    """Wait until the api's views include everything stored (or CATCH_UP_S passed)."""
    executions = open_executions(settings)
    try:
        target = executions.recorder.max_notification_id() or 0
    finally:
        executions.close()
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        try:
            conn = settings.views_database.connect()
        except Exception:  # not made yet
            time.sleep(0.2)
            continue
        try:
            if read_position(conn) >= target:
                return
        except Exception:  # its tables not made yet
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    log.warning("chaos: the api's views did not reach position %d in %.0f s", target, CATCH_UP_S)


def read_records(executions: Executions, prefix: str) -> dict[str, Record]:
    """This run's executions (their idempotency keys start with `prefix`), from the store."""
    ids: list[UUID] = []
    position = 0
    while batch := read_events(executions, position, 1000):
        ids += [
            e.execution_id
            for e in batch
            if e.type == "Requested" and (e.data.get("idempotency_key") or "").startswith(prefix)
        ]
        position = batch[-1].notification_id
    records = {}
    for execution_id in ids:
        execution = executions.get(execution_id)
        events = tuple((type(e).__name__, e.timestamp) for e in executions.events_of(execution_id))
        records[str(execution_id)] = Record(
            execution_id=str(execution_id),
            device_id=execution.device_id,
            name=execution.name,
            status=str(execution.status),
            deadline=execution.deadline,
            idempotency_key=execution.idempotency_key,
            log=tuple(
                (e["status"], e["report_id"], datetime.fromisoformat(e["received_at"]))
                for e in execution.log
            ),
            events=events,
        )
    return records


def view_statuses(views: Database) -> dict[str, str]:
    conn = views.connect()
    try:
        return {row[0]: row[1] for row in conn.execute("SELECT id, status FROM executions")}
    finally:
        conn.close()


def dump_views(views: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row, as plain tuples (the same on SQLite and PostgreSQL)."""
    conn = views.connect()
    try:
        return {
            "executions": [
                tuple(row) for row in conn.execute("SELECT * FROM executions ORDER BY id")
            ],
            "execution_log": [
                tuple(row)
                for row in conn.execute("SELECT * FROM execution_log ORDER BY execution_id, seq")
            ],
        }
    finally:
        conn.close()


def compare_views(live: Database, replayed: Database, shown: int = 10) -> list[str]:
    """How the api's views differ from a fresh replay of the store (nothing: equal)."""
    differences = []
    ours, theirs = dump_views(live), dump_views(replayed)
    for table in ours:
        a = {row[:2] if table == "execution_log" else row[0]: row for row in ours[table]}
        b = {row[:2] if table == "execution_log" else row[0]: row for row in theirs[table]}
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                differences.append(
                    f"views differ from a replay in {table} {key}: api {a.get(key)}; "
                    f"replay {b.get(key)}"
                )
    if len(differences) > shown:
        return [*differences[:shown], f"... {len(differences) - shown} more differences"]
    return differences


def fleet_catalog(data_dir: Path, devices: int) -> Path:
    """The demo catalog plus the fleet, written by `baton catalog fleet`."""
    path = data_dir / "fleet.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "baton_cli.main",
            "catalog",
            "fleet",
            str(devices),
            "--base",
            str(DEMO),
            "-o",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


def parse(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=(__doc__ or "").splitlines()[0]
    )
    add = parser.add_argument
    add("--duration", type=float, default=defaults.duration, help="seconds of load and faults")
    add("--rate", type=float, default=defaults.rate, help="commands per second (half the max)")
    add("--devices", type=int, default=defaults.devices, help="simulated devices")
    add(
        "--silent-share",
        type=float,
        default=defaults.silent_share,
        help="share of commands sent to a device that never answers",
    )
    add("--ttl-min", type=int, default=defaults.ttl_min, help="shortest TTL, seconds")
    add("--ttl-max", type=int, default=defaults.ttl_max, help="longest TTL, seconds")
    add(
        "--nats-share",
        type=float,
        default=defaults.nats_share,
        help="share of commands submitted over NATS (the rest over HTTP)",
    )
    add("--kills", type=int, default=defaults.kills, help="SIGKILLs of each service")
    add(
        "--server-restarts",
        type=int,
        default=defaults.server_restarts,
        help="SIGTERM and SIGKILL restarts of nats-server and the broker, each",
    )
    add(
        "--max-down",
        type=float,
        default=defaults.max_down,
        help="longest pause before a killed process is started again, seconds",
    )
    add(
        "--grace",
        type=float,
        default=defaults.grace,
        help="seconds past its deadline after which a running execution is stuck",
    )
    add(
        "--give-up",
        type=float,
        default=defaults.give_up,
        help="seconds a client retries one command before it gives up",
    )
    add("--answer-delay", default=defaults.answer_delay, help="devices' first answer after")
    add("--progress-delay", default=defaults.progress_delay, help="devices' later answers after")
    add("--seed", type=int, default=None, help="the random choices of a run (printed)")
    add("--broker", choices=["mosquitto", "nats"], default=None, help="the MQTT broker")
    add(
        "--cluster",
        action="store_true",
        help="PostgreSQL, 3 NATS nodes, 2 replicas of each service (make run-cluster's)",
    )
    add(
        "--rolling",
        action="store_true",
        help="with --cluster: restart every replica in turn; no request may fail",
    )
    add(
        "--events-persist",
        choices=["default", "async"],
        default=defaults.events_persist,
        help="the services' BATON_NATS_EVENTS_PERSIST (async: one NATS server only)",
    )
    add(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the run's data and logs here (default: a temporary directory, kept only "
        "when the run fails)",
    )
    args = parser.parse_args(argv)
    options = Options(
        **{k: v for k, v in vars(args).items() if k != "data_dir"},
    )
    return options, args.data_dir


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    options, data_dir = parse(argv)
    keep = data_dir is not None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="baton-chaos-"))
    verdict = run(options, data_dir)
    for line in verdict.report():
        print(line, flush=True)
    if not verdict.passed:
        print(f"data and logs kept in {data_dir}", file=sys.stderr)
        sys.exit(1)
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
