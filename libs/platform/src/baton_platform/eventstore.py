"""Opens the Executions event store: SQLite under the data dir by default, PostgreSQL when
BATON_DATABASE_URL is set."""

from __future__ import annotations

import logging
import sqlite3
import time

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from baton_domain.application import Executions, Recorded
from baton_domain.catalog import Catalog
from baton_platform import pg_recorder
from baton_platform.settings import Settings
from baton_platform.sql import postgres_params

log = logging.getLogger(__name__)


def postgres_env(url: str) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings for a `postgresql://` URL."""
    params = postgres_params(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        # Each insert one statement, the table lock taken (baton_platform.pg_recorder).
        "APPLICATION_RECORDER_TOPIC": pg_recorder.TOPIC,
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": params["port"],
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": params["password"],
        # Connections each process keeps open, and how many more it may open under load:
        # the dispatcher writes from one thread, the api reads from a few.
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_CONNECT_TIMEOUT": "10",
        # A writer waits this long (s) for the table lock that orders notification ids.
        "POSTGRES_LOCK_TIMEOUT": "30",
        # No check of a connection before each use (a round trip: measured, 10-25 % of the
        # store's write rate): the library retries a read or write whose connection the
        # server dropped (it restarted) on another one, 10 times 0.2 s apart.
        "POSTGRES_PRE_PING": "n",
    }


def sqlite_env(settings: Settings) -> dict[str, str]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.event_store_path),
        "SQLITE_LOCK_TIMEOUT": "30",
    }


def event_store_env(settings: Settings, writer: bool = False) -> dict[str, str]:
    """`writer`: the one process that writes the store (the dispatcher)."""
    url = settings.postgres_url
    return {
        **(sqlite_env(settings) if url is None else postgres_env(url)),
        # Recently used aggregates stay in memory, so a device's queue or the catalog is not
        # rebuilt from its snapshot on every request.
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        # A reader brings a cached aggregate up to date with one read of its newer events (the
        # library's fast-forward). The writer needs no read: what it saved is what is stored,
        # and the library caches it on save. That read was the largest single cost of a
        # dispatcher under load (one SELECT per aggregate per command, py-spy). Should
        # another writer move a stream (which Baton never does, but a conflict must not
        # wedge it), the conflict evicts the stale copy (`Executions`).
        "AGGREGATE_CACHE_FASTFORWARD": "n" if writer else "y",
        # Every read of a cached aggregate gets a copy of its own (the library's default,
        # kept whatever it becomes): a change tried without being saved
        # (Executions.preview_catalog_change) must not alter what the cache holds.
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
    }


# How long a process waits at its start for another one that holds the new store's lock.
OPEN_PATIENCE_S = 10.0


def open_executions(
    settings: Settings,
    catalog: Catalog | None = None,
    *,
    writer: bool = False,
    on_recorded: Recorded | None = None,
) -> Executions:
    """The event-sourced application. Readers (api projection, CLI) pass no catalog; the
    dispatcher, the one writer, says so (`writer`).

    Two processes opening a new store at once (the dispatcher and the api of a stack started
    together) race to switch it to WAL and create its tables, and SQLite can answer one of
    them "database is locked" (seen in a test run: a dispatcher exiting at its start on
    `PRAGMA journal_mode=WAL`). That one tries again shortly, by when the store is made,
    rather than exiting. On PostgreSQL the same race is two `CREATE ... IF NOT EXISTS` of
    the same table or type, one of which fails on the catalog's unique index or with
    "relation ... already exists" (seen: a dispatcher replica of a cluster started on a new
    database exiting at its start), and a server still starting refuses connections: those
    are tried again too. Any other error, or one that outlasts OPEN_PATIENCE_S, is raised."""
    deadline = time.monotonic() + OPEN_PATIENCE_S
    while True:
        try:
            return Executions(
                catalog or Catalog(),
                env=event_store_env(settings, writer),
                max_waiting=settings.max_waiting_per_device,
                on_recorded=on_recorded,
            )
        except (
            InterfaceError,
            OperationalError,
            IntegrityError,
            ProgrammingError,
            sqlite3.OperationalError,
        ) as exc:
            transient = _made_meanwhile(exc) or (
                not isinstance(exc, ProgrammingError)
                and (settings.postgres_url is not None or "locked" in str(exc))
            )
            if not transient or time.monotonic() > deadline:
                raise
            log.warning("event store busy at start (%s); trying again", exc)
            time.sleep(0.2)


def _made_meanwhile(exc: Exception) -> bool:
    """Whether another process created the table or type we were creating, a moment before."""
    return isinstance(exc, ProgrammingError) and "already exists" in str(exc)
