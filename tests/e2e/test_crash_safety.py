"""Kill -9 safety: services killed at the worst moment and restarted lose nothing.

On SQLite; the tests marked BOTH on PostgreSQL too (a killed writer's transaction is rolled
back by the server, not by the next opener of a file)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from baton_cli.localstack import PostgresServer, Stack, find_postgres_bin
from baton_platform import leases
from baton_platform.settings import Settings
from baton_platform.sql import Database, conninfo
from baton_views.store import TABLES, connect
from tests.conftest import BACKENDS, fresh_database
from tests.e2e.conftest import TERMINAL, Baton, database_env, make_stack, running, wait_ready

pytestmark = pytest.mark.e2e

# A process killed keeps its lease (relay, projection, timeout-scheduler) until it lapses:
# the one started in its place does that job again within this (docs/operations.md).
LEASE_LAPSE_S = leases.TTL_S + leases.RENEW_S


@pytest.fixture
def backend() -> str:
    return "sqlite"


BOTH = pytest.mark.parametrize("backend", BACKENDS)


@pytest.fixture
def own_stack(tmp_path: Path, database_url: str | None) -> Iterator[Stack]:
    made = make_stack(tmp_path / "stack", extra_env=database_env(database_url))
    with running(made) as started:
        yield started


def test_timeout_scheduler_killed_and_restarted_before_the_deadline(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    execution = baton.send("demo-silent-1", "reboot", ttl=4).json()
    baton.wait_for(execution["id"], {"SENT"}, timeout=5)
    own_stack.kill("timeout-scheduler")
    own_stack.start("timeout-scheduler")
    done = baton.wait_for(execution["id"], TERMINAL, timeout=4 + LEASE_LAPSE_S + 4)
    assert done["status"] == "TIMED_OUT"


@BOTH
def test_timeout_scheduler_down_past_the_deadline_fires_when_back(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    execution = baton.send("demo-silent-1", "reboot", ttl=1).json()
    baton.wait_for(execution["id"], {"SENT"}, timeout=5)
    own_stack.kill("timeout-scheduler")
    # The deadline passes while nobody watches it; nothing may end the execution meanwhile.
    assert baton.get(execution["id"])["status"] == "SENT"
    own_stack.start("timeout-scheduler")
    done = baton.wait_for(execution["id"], TERMINAL, timeout=LEASE_LAPSE_S + 10)
    assert done["status"] == "TIMED_OUT"


@BOTH
def test_dispatcher_killed_mid_flight_and_restarted(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    # reboot answers over ~2 s: kill the dispatcher while the device is still answering.
    execution = baton.send("demo-thermostat-1", "reboot").json()
    baton.wait_for(execution["id"], {"SENT", "ACKNOWLEDGED", "IN_PROGRESS"}, timeout=5)
    own_stack.kill("dispatcher")
    own_stack.start("dispatcher")
    done = baton.wait_for(execution["id"], TERMINAL, timeout=20)
    assert done["status"] == "SUCCEEDED"
    assert [e["status"] for e in done["log"]] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    # And the restarted dispatcher takes new commands.
    after = baton.send(
        "demo-thermostat-2", "set_temperature", {"value": 30}, wait=LEASE_LAPSE_S + 10
    ).json()
    assert after["status"] == "SUCCEEDED"


def test_device_bridge_killed_mid_flight_and_restarted(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    execution = baton.send("demo-thermostat-3", "reboot").json()
    baton.wait_for(execution["id"], {"SENT", "ACKNOWLEDGED"}, timeout=5)
    # The device goes on answering while no bridge listens: the broker keeps the answers in
    # the bridge's persistent session and hands them over when it is back.
    own_stack.kill("device-bridge")
    own_stack.start("device-bridge")
    done = baton.wait_for(execution["id"], TERMINAL, timeout=20)
    assert done["status"] == "SUCCEEDED"
    assert [e["status"] for e in done["log"]] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    after = baton.send("demo-thermostat-4", "set_temperature", {"value": 12}, wait=10).json()
    assert after["status"] == "SUCCEEDED"


def test_api_killed_and_restarted_loses_nothing(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    execution = baton.send("demo-thermostat-5", "reboot").json()
    own_stack.kill("api")
    own_stack.start("api")
    wait_ready(own_stack)
    baton = Baton(own_stack)
    done = baton.wait_for(execution["id"], TERMINAL, timeout=20)
    assert done["status"] == "SUCCEEDED"
    listed = baton.http.get("/v1/devices/demo-thermostat-5/executions").json()
    assert [item["id"] for item in listed["items"]] == [execution["id"]]


def _rows(views: Database) -> dict[str, list[tuple[object, ...]]]:
    db = connect(views)
    try:
        return {t: sorted(map(tuple, db.execute(f"SELECT * FROM {t}")), key=repr) for t in TABLES}
    finally:
        db.close()


def _delete(views: Database) -> None:
    """Every view gone: the SQLite file (and its WAL), or the PostgreSQL schema."""
    if views.url is not None:
        with psycopg.connect(conninfo(views.url), autocommit=True) as db:
            db.execute(f"DROP SCHEMA {views.schema} CASCADE")
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{views}{suffix}").unlink(missing_ok=True)


@BOTH
def test_views_deleted_and_replayed_are_identical(own_stack: Stack) -> None:
    baton = Baton(own_stack)
    ids = [
        baton.send("demo-thermostat-1", "set_temperature", {"value": 25}, wait=10).json()["id"],
        baton.send("demo-thermostat-2", "self_test", wait=10).json()["id"],
        baton.send("demo-thermostat-3", "factory_reset", wait=10).json()["id"],
        baton.send("demo-silent-1", "reboot", ttl=1).json()["id"],
    ]
    for execution_id in ids:
        baton.wait_for(execution_id, TERMINAL, timeout=10)
    own_stack.stop("api")  # the api runs the projection: stop it so the views are at rest
    url = own_stack.env().get("BATON_DATABASE_URL")
    views = Settings(data_dir=own_stack.data_dir, database_url=url).views_database
    before = _rows(views)
    assert len(before["executions"]) == len(ids)
    _delete(views)
    replay = subprocess.run(
        [sys.executable, "-m", "baton_cli.main", "replay"],
        env={**os.environ, **own_stack.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    assert _rows(views) == before
    own_stack.start("api")
    wait_ready(own_stack)
    assert Baton(own_stack).get(ids[0])["status"] == "SUCCEEDED"


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_store_backed_up_and_restored_as_the_docs_say_replays_to_the_same_views(
    own_stack: Stack, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """docs/operations.md, "Backup and restore": `pg_dump` without the views while everything
    runs, `pg_restore` into an empty database, `baton replay`: the same record, the same
    views."""
    baton = Baton(own_stack)
    ids = [
        baton.send("demo-thermostat-1", "set_temperature", {"value": 21}, wait=10).json()["id"],
        baton.send("demo-thermostat-2", "self_test", wait=10).json()["id"],
        baton.send("demo-silent-1", "reboot", ttl=1).json()["id"],
    ]
    for execution_id in ids:
        baton.wait_for(execution_id, TERMINAL, timeout=10)
    source = own_stack.env()["BATON_DATABASE_URL"]
    bindir = find_postgres_bin()
    assert bindir is not None
    dump = tmp_path / "baton.dump"
    backup = [str(bindir / "pg_dump"), "--format=custom", "--exclude-schema=views"]
    _ran([*backup, f"--file={dump}", conninfo(source)])  # while everything runs
    own_stack.stop("api")  # the api runs the projection: stop it so the views are at rest
    original = Settings(data_dir=own_stack.data_dir, database_url=source)
    views_before, store_before = _rows(original.views_database), _store(source)
    assert len(views_before["executions"]) == len(ids)

    with fresh_database(postgres_server) as target:
        _ran([str(bindir / "pg_restore"), f"--dbname={conninfo(target)}", str(dump)])
        assert _schemas(target) >= {"public", "scheduler"} and "views" not in _schemas(target)
        env = {**os.environ, **own_stack.env(), "BATON_DATABASE_URL": target}
        replay = subprocess.run(
            [sys.executable, "-m", "baton_cli.main", "replay"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr + replay.stdout
        restored = Settings(data_dir=own_stack.data_dir, database_url=target)
        assert _store(target) == store_before
        assert _rows(restored.views_database) == views_before


def _ran(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{command[0]}: {done.stderr}"


def _store(url: str) -> list[tuple[object, ...]]:
    """The event store's records, in their order."""
    with psycopg.connect(conninfo(url)) as db:
        rows = db.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM executions_events ORDER BY notification_id"
        )
        return [tuple(row) for row in rows]


def _schemas(url: str) -> set[str]:
    with psycopg.connect(conninfo(url)) as db:
        rows = db.execute("SELECT schema_name FROM information_schema.schemata")
        return {str(name) for (name,) in rows}
