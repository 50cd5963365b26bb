"""The bench's stored stores on a real PostgreSQL: the history of its growth part, cached as a
`pg_dump` and restored into a stack's database, and the ceilings of the parts that run once
per event store (`python -m tests.benchmarks.ceilings`). Their figures are not asserted
(docs/benchmarks.md); that they measure the whole store is."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from baton_cli.localstack import PostgresServer
from baton_domain.catalog import Catalog
from baton_platform.settings import Settings
from baton_platform.sql import conninfo
from baton_views.store import connect, read_position
from tests.benchmarks import ceilings, history
from tests.benchmarks.history import (
    open_store,
    restore_postgres_history,
    stored_postgres_history,
)
from tests.conftest import DEMO, fresh_database

pytestmark = pytest.mark.integration

COUNT = 30
EVENTS = 5 * COUNT  # Requested, Dispatched, Published and two answers each


def _databases(server: PostgresServer) -> set[str]:
    with psycopg.connect(conninfo(server.url)) as db:
        return {name for (name,) in db.execute("SELECT datname FROM pg_database")}


def test_a_postgres_history_is_built_once_and_restored_whole(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "CACHE_DIR", tmp_path / "cache")
    catalog = Catalog.from_yaml(DEMO)
    devices = ["demo-thermostat-1", "demo-thermostat-2"]
    said: list[str] = []
    before = _databases(postgres_server)

    built = stored_postgres_history(catalog, devices, COUNT, postgres_server, said.append)
    cached = stored_postgres_history(catalog, devices, COUNT, postgres_server, said.append)

    assert built.built_in is not None and cached.built_in is None
    assert cached.dump == built.dump and built.dump.stat().st_size > 0
    assert sum("building" in line for line in said) == 1
    assert _databases(postgres_server) == before  # the build's database is gone
    with fresh_database(postgres_server) as url:
        restore_postgres_history(cached, url)
        app = open_store(tmp_path / "data", catalog, url)
        try:
            assert app.recorder.max_notification_id() == EVENTS
        finally:
            app.close()
        views = connect(Settings(data_dir=tmp_path / "data", database_url=url).views_database)
        try:
            (executions,) = views.execute("SELECT COUNT(*) FROM executions").fetchone()
            outcomes = views.execute("SELECT DISTINCT outcome FROM executions").fetchall()
            assert executions == COUNT and [tuple(o) for o in outcomes] == [("SUCCEEDED",)]
            assert read_position(views) == EVENTS
        finally:
            views.close()


@pytest.mark.parametrize(("nodes", "relay"), [(1, ""), (3, ", R3")])
def test_the_ceilings_go_through_the_whole_store(tmp_path: Path, nodes: int, relay: str) -> None:
    options = ["--commands", str(COUNT), "--batches", "8,500", "--nats-nodes", str(nodes)]
    found = ceilings.run(ceilings.parse_args(options), tmp_path)

    assert [c.what for c in found] == [
        f"relay (fsync each write{relay})",
        "projection, 8 per step",
        "projection, 500 per step",
    ]
    assert all(c.events == EVENTS and c.seconds > 0 for c in found)
    assert set(found[0].cpu) == {"bench (relay)", "nats-server"}
    assert set(found[1].cpu) == {"bench (projection)", "postgres"}
    assert found[0].per_command == 7 and found[1].per_command == 5
