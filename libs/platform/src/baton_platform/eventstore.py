"""Opens the Executions event store. SQLite under the data dir by default."""

from __future__ import annotations

import logging
import sqlite3
import time

from eventsourcing.persistence import InterfaceError, OperationalError

from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.settings import Settings

log = logging.getLogger(__name__)


def event_store_env(settings: Settings, writer: bool = False) -> dict[str, str]:
    """`writer`: the one process that writes the store (the dispatcher)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.event_store_path),
        "SQLITE_LOCK_TIMEOUT": "30",
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
    }


# How long a process waits at its start for another one that holds the new store's lock.
OPEN_PATIENCE_S = 10.0


def open_executions(
    settings: Settings, catalog: Catalog | None = None, *, writer: bool = False
) -> Executions:
    """The event-sourced application. Readers (api projection, CLI) pass no catalog; the
    dispatcher, the one writer, says so (`writer`).

    Two processes opening a new store at once (the dispatcher and the api of a stack started
    together) race to switch it to WAL and create its tables, and SQLite can answer one of
    them "database is locked" (seen in a test run: a dispatcher exiting at its start on
    `PRAGMA journal_mode=WAL`). That one tries again shortly, by when the store is made,
    rather than exiting; any other error, or a lock that outlasts OPEN_PATIENCE_S, is
    raised."""
    deadline = time.monotonic() + OPEN_PATIENCE_S
    while True:
        try:
            return Executions(
                catalog or Catalog(),
                env=event_store_env(settings, writer),
                max_waiting=settings.max_waiting_per_device,
            )
        except (InterfaceError, OperationalError, sqlite3.OperationalError) as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            log.warning("event store busy at start (%s); trying again", exc)
            time.sleep(0.2)
