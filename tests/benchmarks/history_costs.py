"""Do Baton's costs grow with its history? `python -m tests.benchmarks.history_costs`

Fills a views database and an event store in bulk up to each size in turn (10k, 100k and
1M executions by default), and at each size times, on the real SQLite files:

- lists as the api makes them (`ExecutionViews.list`, total_count included), with each
  kind of filter, and a page deep behind a cursor;
- writes: commands through the domain into the event store (request, published, answer:
  three transactions each), and the projection of their events into the views;
- lookups: the views' position, the store's last notification id, a batch of the
  notification log after a position (the projector's and `baton replay`'s read), one
  execution from the views and one loaded from the store.

It prints, at each size, the best of several runs of each (in ms), and for the views the
SQLite virtual machine instructions it took (the work itself, the same on any machine
however busy), then the ratio of the largest size to the smallest. Figures
are printed, never asserted (the plans behind them are asserted in
tests/unit/test_views_costs.py). Everything runs hot in the OS's page cache: these are
the costs of the work, not of a cold disk.

The history is written without the services: views rows straight into the table with a
fleet's mix of devices, commands, statuses and ephemeral ones (one execution a second),
their counters set by `recount`; the store gets copies of a real command's stored events
(Requested, Dispatched, Published, Acknowledged, Succeeded) under new execution ids.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from baton_contracts.nats import LifecycleEvent
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_platform.eventstore import event_store_env
from baton_platform.settings import Settings
from baton_platform.sql import Connection
from baton_views import ExecutionFilter, ExecutionViews, read_events
from baton_views.counts import recount
from baton_views.projection import project
from baton_views.queries import get_execution, list_executions
from baton_views.store import connect, read_position, transaction, write_position
from tests.benchmarks.history import checkpoint

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "deploy" / "catalog" / "demo.yaml"
SIZES = (10_000, 100_000, 1_000_000)
FLEET = 1_000  # devices in the bulk history
BUSY_DEVICE = "fleet-busy"  # and one with a tenth of all executions
NAMES = ("set_temperature", "reboot", "self_test", "read_config", "firmware_update")
# Out of every 100 executions of the bulk history: all ended (the ones in flight are the
# commands written while measuring).
STATUS_SHARES = (
    ("SUCCEEDED", 90),
    ("FAILED", 4),
    ("TIMED_OUT", 3),
    ("EXPIRED", 1),
    ("CANCELED", 1),
    ("REJECTED", 1),
)
EPHEMERAL_EVERY = 10
HISTORY_START = datetime(2024, 1, 1, tzinfo=UTC)  # execution i was created i seconds later
LOAD_BATCH = 100_000
REPEAT = 30  # runs of each read; the median is printed
PAGE = 20  # rows per listed page: every list below fills its page from 10k executions on
WRITES = 200  # commands through the domain at each size
PROJECT_BATCH = 100  # events per transaction of the views when projecting them


# --- a history, in bulk ------------------------------------------------------------------------


def _status_sql() -> str:
    """`status` of the execution hashed to h, by STATUS_SHARES of h % 100."""
    cases, upto = [], 0
    for status, share in STATUS_SHARES:
        upto += share
        cases.append(f"WHEN h % 100 < {upto} THEN '{status}'")
    return f"CASE {' '.join(cases)} END"


def fill_views(conn: Connection, start: int, stop: int, tenant: str = DEFAULT_TENANT) -> None:
    """Executions start..stop-1 of `tenant` as rows of the views, in the caller's transaction.

    Execution i was created HISTORY_START + i seconds. Its id, status, command name,
    device and whether it is ephemeral come from a hash of i (so the id index is written
    all over, as by uuid4s, and the columns do not follow each other); one in ten goes to
    BUSY_DEVICE, the others to FLEET devices. Counters are left to `recount`.
    """
    epoch = int(HISTORY_START.timestamp())

    def moment(seconds: str) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:%S', {epoch} + {seconds}, 'unixepoch') || '.000000+00:00'"

    names = ", ".join(f"'{n}'" for n in NAMES)
    conn.execute(
        f"""
        WITH RECURSIVE seq(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?),
        hashed(i, h) AS (SELECT i, (i * 2654435761) % 4294967296 FROM seq),
        gen(i, h, status, name, device_id) AS (
            SELECT i, h, {_status_sql()},
                json_extract(json_array({names}), '$[' || (h / 100 % {len(NAMES)}) || ']'),
                CASE WHEN h / 5000 % 10 = 0 THEN '{BUSY_DEVICE}'
                     ELSE printf('fleet-%04d', h / 50000 % {FLEET}) END
            FROM hashed
        )
        INSERT INTO executions (id, tenant, device_id, name, params, status, created_at,
            updated_at, ttl, deadline, result, error, requested_name, ephemeral, retry_of,
            retries, outcome)
        SELECT printf('%08x-%04x-4000-8000-%012x', h, i % 65536, i), ?, device_id, name, '{{}}',
            status, {moment("i")}, {moment("i + 2")}, 30, {moment("i + 30")},
            CASE status WHEN 'SUCCEEDED' THEN '{{"ok":true}}' END,
            CASE WHEN status != 'SUCCEEDED' THEN '{{"code":"bench"}}' END,
            name, h / 500 % {EPHEMERAL_EVERY} = 0, NULL, '[]', status
        FROM gen
        """,
        (start, stop, tenant),
    )


def command_events(catalog: Catalog) -> list[tuple[int, str, bytes]]:
    """(version, topic, state) of the stored events of one command that succeeded."""
    app = Executions(catalog, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    execution_id = write_command(app, "demo-thermostat-1")
    stored = [app.mapper.to_stored_event(e) for e in app.events_of(execution_id)]
    return [(s.originator_version, s.topic, s.state) for s in stored]


def fill_store(path: Path, events: list[tuple[int, str, bytes]], start: int, stop: int) -> None:
    """Executions start..stop-1 into the event store at `path`, `events` each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -262144")  # the loader's own: 256 MiB
        for first in range(start, stop, LOAD_BATCH):
            ids = [uuid4().hex for _ in range(first, min(stop, first + LOAD_BATCH))]
            rows = [(execution_id, *event) for execution_id in ids for event in events]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO stored_events VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    finally:
        conn.close()


def grow(
    settings: Settings,
    store: Executions,
    events: list[tuple[int, str, bytes]],
    start: int,
    stop: int,
) -> None:
    """Both databases from `start` to `stop` executions; the views' position then is the
    store's end, so the projection takes only what is written after."""
    conn = connect(settings.views_path)
    try:
        conn.execute("PRAGMA cache_size = -262144")
        for first in range(start, stop, LOAD_BATCH):
            with transaction(conn):
                fill_views(conn, first, min(stop, first + LOAD_BATCH))
        fill_store(settings.event_store_path, events, start, stop)
        with transaction(conn):
            recount(conn)
            write_position(conn, store.recorder.max_notification_id() or 0)
    finally:
        conn.close()
    # A live database's write-ahead log is folded back as it goes; a bulk load's is not,
    # and reading through a large one would be timed instead.
    for path in (settings.views_path, settings.event_store_path):
        checkpoint(path)


# --- what is timed -----------------------------------------------------------------------------


def write_command(app: Executions, device_id: str) -> UUID:
    """One command that succeeds, as the dispatcher writes it: three transactions."""
    execution_id = app.request(
        RequestCommand(device_id, "set_temperature", {"value": 20}, None)
    ).execution.id
    app.record_published(execution_id)
    now = datetime.now(UTC)
    app.record_answer(
        execution_id,
        device_id,
        f"{execution_id}-s",
        AnswerStatus.SUCCEEDED,
        {"current_temperature": 20},
        now,
    )
    return execution_id


@dataclass
class Figure:
    """ms: the best of the runs' wall clock (what the work costs; slower runs waited for
    a core or the disk); steps: SQLite virtual machine instructions, for the views (the
    same on any machine: the work itself)."""

    ms: float
    steps: float | None = None


def once_ms(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def best_ms(run: Callable[[], Any]) -> float:
    run()  # warm
    return min(once_ms(run) for _ in range(REPEAT))


def steps_of(conn: Connection, run: Callable[[], Any]) -> float:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        run()
    finally:
        conn.set_progress_handler(None, 0)
    return count


def deep_cursor(conn: Connection, where: ExecutionFilter, pages: int) -> str | None:
    cursor = None
    for _ in range(pages):
        cursor = list_executions(conn, where, limit=PAGE, cursor=cursor).next_cursor
    return cursor


def measure(conn: Connection, store: Executions, size: int) -> dict[str, Figure]:
    """Each figure at this size. `conn` is a connection to the views, used as
    `ExecutionViews` uses its own (the same functions)."""
    newest = HISTORY_START + timedelta(seconds=size)
    failed = frozenset({ExecutionStatus.FAILED})
    succeeded = frozenset({ExecutionStatus.SUCCEEDED})
    lists = {
        "list: no filter": (ExecutionFilter(), None),
        "list: status=FAILED": (ExecutionFilter(statuses=failed), None),
        "list: device": (ExecutionFilter(device_id=BUSY_DEVICE), None),
        "list: device + status": (ExecutionFilter(device_id=BUSY_DEVICE, statuses=failed), None),
        "list: name + 2 statuses": (
            ExecutionFilter(name="reboot", statuses=failed | {ExecutionStatus.REJECTED}),
            None,
        ),
        "list: device + name + status, show=ALL": (
            ExecutionFilter(
                device_id=BUSY_DEVICE, name="reboot", statuses=succeeded, include_ephemeral=True
            ),
            None,
        ),
        "list: last hour": (ExecutionFilter(created_after=newest - timedelta(hours=1)), None),
        "list: last 30 days (total_count capped)": (
            ExecutionFilter(created_after=newest - timedelta(days=30)),
            None,
        ),
        "list: status=FAILED, page 11 by cursor": (
            ExecutionFilter(statuses=failed),
            deep_cursor(conn, ExecutionFilter(statuses=failed), 10),
        ),
    }
    figures = {}
    for label, (where, cursor) in lists.items():
        page = partial(list_executions, conn, where, limit=PAGE, cursor=cursor)
        figures[label] = Figure(best_ms(page), steps_of(conn, page))

    devices = [f"demo-thermostat-{n}" for n in range(1, 6)]
    ms = [once_ms(partial(write_command, store, devices[n % 5])) for n in range(WRITES)]
    figures["write: one command into the store (3 txns)"] = Figure(min(ms))
    events = read_events(store, read_position(conn), 100_000)
    batches = [events[n : n + PROJECT_BATCH] for n in range(0, len(events), PROJECT_BATCH)]
    timed_batches, counted_batches = batches[: len(batches) // 2], batches[len(batches) // 2 :]

    def apply(batch: list[LifecycleEvent]) -> None:
        with transaction(conn):
            project(conn, batch)

    ms = [once_ms(partial(apply, batch)) for batch in timed_batches]
    steps = [steps_of(conn, partial(apply, batch)) / len(batch) for batch in counted_batches]
    figures[f"write: project one event (in {PROJECT_BATCH}s)"] = Figure(
        min(ms) / PROJECT_BATCH, statistics.median(steps)
    )

    end = store.recorder.max_notification_id() or 0
    some_id = list_executions(conn, ExecutionFilter(device_id="fleet-0007"), limit=1).items[0].id
    views_reads: dict[str, Callable[[], Any]] = {
        "lookup: views position": partial(read_position, conn),
        "lookup: one execution from the views": partial(get_execution, conn, some_id),
    }
    for label, read in views_reads.items():
        figures[label] = Figure(best_ms(read), steps_of(conn, read))
    store_reads: dict[str, Callable[[], Any]] = {
        "lookup: store's last notification id": store.recorder.max_notification_id,
        "lookup: log read, 500 after the middle": partial(read_events, store, end // 2, 500),
        "lookup: log read after the end (caught up)": partial(read_events, store, end, 500),
        "lookup: one execution loaded from the store": partial(store.get, events[0].execution_id),
    }
    for label, read in store_reads.items():
        figures[label] = Figure(best_ms(read))
    return figures


# --- the run -----------------------------------------------------------------------------------


def run(sizes: tuple[int, ...], folder: Path) -> None:
    catalog = Catalog.from_yaml(CATALOG)
    settings = Settings(data_dir=folder)
    store = Executions(catalog, env=event_store_env(settings))
    ExecutionViews(settings.views_path).close()  # the schema
    events = command_events(catalog)
    results: dict[int, dict[str, Figure]] = {}
    loaded = 0
    try:
        for size in sizes:
            start = time.perf_counter()
            grow(settings, store, events, loaded, size)
            loaded = size
            print(
                f"loaded {size:,} executions in {time.perf_counter() - start:.0f} s "
                f"(views {_mib(settings.views_path)}, store {_mib(settings.event_store_path)})",
                flush=True,
            )
            conn = connect(settings.views_path)
            try:
                results[size] = measure(conn, store, size)
            finally:
                conn.close()
    finally:
        store.close()
    report(results)


def report(results: dict[int, dict[str, Figure]]) -> None:
    """A row per figure: ms and SQLite steps at each size, then the ratios of the largest
    size to the smallest."""
    sizes = list(results)
    first, last = sizes[0], sizes[-1]
    width = max(len(label) for label in results[first])
    over = f"{last // 1000}k/{first // 1000}k"
    print(f"\n{'':<{width}}" + "".join(f"{f'{n:,}':>20}" for n in sizes) + f"{over:>16}")
    units = f"{'ms':>10}{'steps':>10}"
    print(f"{f'best of {REPEAT}, pages of {PAGE}':<{width}}{units * (len(sizes) + 1)}")
    for label in results[first]:
        row = [results[n][label] for n in sizes]
        values = "".join(f"{f.ms:>10.3f}{_steps(f.steps):>10}" for f in row)
        ratio = row[-1].ms / row[0].ms
        steps = row[-1].steps / row[0].steps if row[0].steps and row[-1].steps else None
        print(
            f"{label:<{width}}{values}{ratio:>10.2f}{'' if steps is None else f'{steps:.2f}':>10}"
        )


def _steps(steps: float | None) -> str:
    return "" if steps is None else f"{steps:,.0f}"


def _mib(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return f"{total / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="executions stored at each step, ascending (default %(default)s)",
    )
    parser.add_argument("--dir", type=Path, help="keep the databases here (default: a temp dir)")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        run(sizes, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="baton-history-") as folder:
        run(sizes, Path(folder))


if __name__ == "__main__":
    main()
