"""Executions written straight through the domain, without the services: the event store's
write floor, and a stored history (a million executions) for the growth figures.

Each execution gets the events a command that succeeds writes: Requested and Dispatched,
Published, Acknowledged (the device's STARTED), Succeeded. A dispatcher saves them at four
moments (the request, the broker's `published`, each answer); `write_commands` saves them
the same way, one command per transaction or many. Device queues are left out: they hold
only what is waiting, and every execution here has ended.

A stored history is built once and kept under ./var/bench-cache, keyed by what decides its
bytes (the event classes, the views' schema and projection, the library, the fleet and the
count), with its views rebuilt by `baton_views.rebuild` (the code of `baton replay`). On
SQLite it is the two database files, copied into each stack; on PostgreSQL, a `pg_dump` of
the database that holds both (keyed by the server's major version too), restored with
`pg_restore` into each stack's database.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from uuid import uuid4

from baton_cli.localstack import PostgresServer, find_postgres_bin
from baton_domain import execution as execution_module
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.execution import CommandExecution
from baton_domain.statuses import AnswerStatus
from baton_platform import mapping
from baton_platform.eventstore import event_store_env
from baton_platform.settings import Settings
from baton_platform.sql import Database, conninfo
from baton_views import projection, rebuild, store

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "var" / "bench-cache"
# Bumped when this module changes what it writes.
LOADER_VERSION = 1
LOAD_BATCH = 10_000  # executions per transaction while loading a history
COMMAND = ("set_temperature", {"value": 20})

Say = Callable[[str], None]


def open_store(data_dir: Path, catalog: Catalog, database_url: str | None = None) -> Executions:
    """The event store under `data_dir` (or in the PostgreSQL database `database_url`),
    opened as the dispatcher opens it."""
    settings = Settings(data_dir=data_dir, database_url=database_url)
    return Executions(catalog, env=event_store_env(settings, writer=True))


def requested(app: Executions, device_id: str) -> CommandExecution:
    """A new execution of set_temperature on `device_id`, dispatched (Requested, Dispatched)."""
    name, params = COMMAND
    command = RequestCommand(device_id, name, dict(params), None, source="bench")
    execution, _ = app.new_execution(command, uuid4(), app.clock())
    execution.dispatch()
    return execution


def _published(app: Executions, execution: CommandExecution) -> None:
    execution.mark_published()


def _started(app: Executions, execution: CommandExecution) -> None:
    answer = f"{execution.id}-1"
    execution.record_answer(execution.device_id, answer, AnswerStatus.STARTED, {}, app.clock())


def _succeeded(app: Executions, execution: CommandExecution) -> None:
    answer, payload = f"{execution.id}-2", {"current_temperature": COMMAND[1]["value"]}
    execution.record_answer(
        execution.device_id, answer, AnswerStatus.SUCCEEDED, payload, app.clock()
    )


# After the request, what a succeeding command's reports change, one save each.
LATER_STAGES: tuple[Callable[[Executions, CommandExecution], None], ...] = (
    _published,
    _started,
    _succeeded,
)


def write_commands(app: Executions, devices: list[str], count: int, batch: int) -> float:
    """Write `count` succeeding commands, `batch` of them per transaction at each of their
    four saves; returns commands per second."""
    start = time.perf_counter()
    for first in range(0, count, batch):
        executions = [
            requested(app, devices[n % len(devices)])
            for n in range(first, min(count, first + batch))
        ]
        app.save(*executions)
        for stage in LATER_STAGES:
            for execution in executions:
                stage(app, execution)
            app.save(*executions)
    return count / (time.perf_counter() - start)


def _finished(app: Executions, devices: list[str], first: int, count: int) -> Iterator[object]:
    for n in range(first, first + count):
        execution = requested(app, devices[n % len(devices)])
        for stage in LATER_STAGES:
            stage(app, execution)
        yield execution


# --- a stored history, cached -----------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """A stored history: the event store and its views, ready to copy into a stack."""

    events: Path
    views: Path
    count: int
    built_in: float | None  # seconds, when this run built it; None when it came from the cache


@dataclass(frozen=True)
class PostgresHistory:
    """A stored history on PostgreSQL: a dump of the database holding the event store and
    its views, ready to restore into a stack's."""

    dump: Path
    count: int
    built_in: float | None  # seconds, when this run built it; None when it came from the cache


def history_key(devices: list[str], count: int) -> str:
    """Names what decides a history's bytes; another value means another history."""
    digest = hashlib.sha256()
    for module in (execution_module, projection, store, mapping):
        assert module.__file__ is not None
        digest.update(Path(module.__file__).read_bytes())
    digest.update(f"{LOADER_VERSION}|{version('eventsourcing')}|{store.SCHEMA_VERSION}".encode())
    digest.update("\n".join(devices).encode())
    return f"history-{count}-{digest.hexdigest()[:16]}"


def stored_history(catalog: Catalog, devices: list[str], count: int, say: Say) -> History:
    """The cached history of `count` executions over `devices`, built first if needed."""
    folder = CACHE_DIR / history_key(devices, count)
    done = folder / "complete"
    if done.exists():
        return History(folder / "events.sqlite", folder / "views.sqlite", count, None)
    if folder.exists():
        shutil.rmtree(folder)  # a build that did not finish
    folder.mkdir(parents=True)
    say(f"building a stored history of {count:,} executions in {folder} (once; cached)")
    start = time.perf_counter()
    app = open_store(folder, catalog)
    try:
        _load(app, devices, count, folder / "views.sqlite", say)
    finally:
        app.close()
    for path in (folder / "events.sqlite", folder / "views.sqlite"):
        checkpoint(path)
    done.write_text(f"{count}\n")
    return History(
        folder / "events.sqlite", folder / "views.sqlite", count, time.perf_counter() - start
    )


def _load(
    app: Executions, devices: list[str], count: int, views: Path | Database, say: Say
) -> None:
    """Store `count` finished executions, `LOAD_BATCH` a transaction, and project their views."""
    start = time.perf_counter()
    for first in range(0, count, LOAD_BATCH):
        size = min(LOAD_BATCH, count - first)
        app.save(*_finished(app, devices, first, size))
        if (first // LOAD_BATCH) % 10 == 9:
            say(f"  {first + size:,} executions stored ({time.perf_counter() - start:.0f} s)")
    say(f"  projecting their views ({time.perf_counter() - start:.0f} s so far)")
    rebuild(app, views)


def stored_postgres_history(
    catalog: Catalog, devices: list[str], count: int, server: PostgresServer, say: Say
) -> PostgresHistory:
    """The cached dump of a history of `count` executions over `devices` on PostgreSQL, built
    first if needed in a database of its own on `server` (dropped afterwards)."""
    major = _server_major(server.url)
    folder = CACHE_DIR / f"{history_key(devices, count)}-postgres{major}"
    dump = folder / "baton.dump"
    if (folder / "complete").exists():
        return PostgresHistory(dump, count, None)
    if folder.exists():
        shutil.rmtree(folder)  # a build that did not finish
    folder.mkdir(parents=True)
    say(f"building a stored history of {count:,} executions in {folder} (once; cached)")
    start = time.perf_counter()
    server.drop_database("history_build")  # what a build that did not finish left
    url = server.create_database("history_build")
    try:
        app = open_store(folder, catalog, url)
        try:
            views = Settings(data_dir=folder, database_url=url).views_database
            _load(app, devices, count, views, say)
        finally:
            app.close()
        _postgres_tool("pg_dump", "--format=custom", f"--file={dump}", conninfo(url))
    finally:
        server.drop_database("history_build")
    (folder / "complete").write_text(f"{count}\n")
    return PostgresHistory(dump, count, time.perf_counter() - start)


def restore_postgres_history(history: PostgresHistory, url: str) -> None:
    """The history's event store and views into the empty database `url` (a stack's)."""
    dbname = f"--dbname={conninfo(url)}"
    _postgres_tool("pg_restore", "--no-owner", "--jobs=2", dbname, str(history.dump))


def _server_major(url: str) -> int:
    import psycopg

    with psycopg.connect(conninfo(url)) as db:
        return db.info.server_version // 10_000


def _postgres_tool(name: str, *args: str) -> None:
    """Run PostgreSQL's `name` (pg_dump, pg_restore) of the installed server; raises with its
    error output when it fails."""
    bindir = find_postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's binaries not found (deploy/local/install-postgres.sh)")
    done = subprocess.run(
        [str(bindir / name), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")


def checkpoint(path: Path) -> None:
    """Fold the write-ahead log into the database file, so the one file is the whole copy."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def install_history(history: History, settings: Settings) -> None:
    """Copy the history's files to where a stack of `settings` keeps its store and views."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(history.events, settings.event_store_path)
    shutil.copyfile(history.views, settings.views_path)
