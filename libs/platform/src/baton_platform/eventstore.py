"""Opens the Executions event store. SQLite under the data dir by default."""

from __future__ import annotations

from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.settings import Settings


def event_store_env(settings: Settings) -> dict[str, str]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(settings.event_store_path),
        "SQLITE_LOCK_TIMEOUT": "30",
        # Recently used aggregates stay in memory and are brought up to date from the store
        # with one read of their newer events (the library's fast-forward), so a device's
        # queue or the catalog is not rebuilt from its snapshot on every request.
        "AGGREGATE_CACHE_MAXSIZE": "10000",
    }


def open_executions(settings: Settings, catalog: Catalog | None = None) -> Executions:
    """The event-sourced application. Readers (api projection, CLI) pass no catalog."""
    return Executions(
        catalog or Catalog(),
        env=event_store_env(settings),
        max_waiting=settings.max_waiting_per_device,
    )
