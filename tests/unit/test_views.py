"""The execution views: each event type, at-least-once safety, and replay byte for byte.

Each test runs on SQLite and on PostgreSQL (the `backend` fixture): the views in files, or in
schemas of a PostgreSQL database whose event store the application writes too."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from baton_contracts.nats import LifecycleEvent
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.errors import ExecutionNotFound
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_platform.eventstore import postgres_env
from baton_platform.mapping import execution_state
from baton_platform.sql import Database
from baton_views import ExecutionFilter, ExecutionViews, read_events, rebuild, replay
from baton_views.projection import DEVICE_QUEUE_TYPES, PROJECTED_TYPES
from baton_views.store import SCHEMA_VERSION, TABLES, connect

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
DEVICE = "demo-thermostat-1"
OTHER = "acme"  # a tenant besides the default one
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


Place = Callable[[str], "Path | Database"]


@pytest.fixture
def place(tmp_path: Path, database_url: str | None) -> Place:
    """Where views named `name` live: a SQLite file, or a schema of the test's database."""

    def named(name: str) -> Path | Database:
        if database_url is None:
            return tmp_path / f"{name}.sqlite"
        return Database(url=database_url, schema=name)

    return named


@pytest.fixture
def app(clock: Clock, database_url: str | None) -> Executions:
    """In memory beside SQLite views; in the same PostgreSQL database beside theirs."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if database_url is not None:
        env = postgres_env(database_url)
    return Executions(Catalog.from_yaml(DEMO), env=env, clock=clock)


@pytest.fixture
def views(place: Place) -> Iterator[ExecutionViews]:
    views = ExecutionViews(place("views"))
    yield views
    views.close()


def request(app: Executions, name: str = "reboot", params: dict[str, Any] | None = None) -> UUID:
    return app.request(RequestCommand(DEVICE, name, params or {}, None)).execution.id


def answer(
    app: Executions,
    execution_id: UUID,
    report: str,
    status: AnswerStatus,
    payload: dict[str, Any] | None = None,
) -> None:
    app.record_answer(execution_id, DEVICE, report, status, payload or {}, datetime.now(UTC))


def every_ending(app: Executions, clock: Clock) -> dict[str, UUID]:
    """One execution per way an execution can go, between them every event type."""
    ids = {
        name: request(app)
        for name in ("succeeded", "failed", "rejected", "timed_out", "expired", "canceled", "sent")
    }
    for name in ("succeeded", "failed", "rejected", "timed_out", "sent"):
        app.record_published(ids[name])
    answer(app, ids["succeeded"], "s1", AnswerStatus.STARTED)
    answer(app, ids["succeeded"], "s2", AnswerStatus.IN_PROGRESS, {"percent": 50})
    answer(app, ids["succeeded"], "s3", AnswerStatus.SUCCEEDED, {"ok": True, "a": [1, "é"]})
    answer(app, ids["succeeded"], "s4", AnswerStatus.STARTED)  # late: AnswerRecorded
    answer(app, ids["failed"], "f1", AnswerStatus.FAILED, {"code": "jammed"})
    answer(app, ids["rejected"], "r1", AnswerStatus.REJECTED, {"reason": "busy"})
    app.cancel(ids["canceled"], "changed my mind")
    clock.now += timedelta(seconds=31)
    app.reach_deadline(ids["timed_out"])
    app.reach_deadline(ids["expired"])
    ids["retry"] = app.retry(ids["failed"], "test", "test").execution.id  # Retried
    doomed = request(app)
    answer(app, doomed, "d1", AnswerStatus.STARTED)
    app.delete(doomed, "by test")  # Canceled + Deleted: no rows left
    return ids


class Tenancy:
    """Whose each execution is, written into its `Requested` event as it is read.

    The events are the domain's, and say whose they are in `data["tenant"]`; here tests
    choose it per execution (the others' are the default tenant's). A retry is its
    original's tenant's, as the domain makes it.
    """

    def __init__(self) -> None:
        self.of: dict[UUID, str] = {}

    def claim(self, app: Executions, after: int, tenant: str) -> None:
        """Every execution requested after notification `after` is `tenant`'s."""
        for event in read_events(app, after, 100_000):
            if event.type == "Requested":
                self.of[event.execution_id] = tenant

    def read(self, app: Executions, after: int, limit: int) -> list[LifecycleEvent]:
        """`read_events`, with each execution's tenant in its `Requested`."""
        return [self._tagged(e) for e in read_events(app, after, limit)]

    def _tagged(self, event: LifecycleEvent) -> LifecycleEvent:
        if event.type != "Requested":
            return event
        retry_of = event.data.get("retry_of")
        original = self.of.get(UUID(str(retry_of))) if retry_of else None
        tenant = self.of.setdefault(event.execution_id, original or DEFAULT_TENANT)
        return event.model_copy(update={"data": {**event.data, "tenant": tenant}})


def project_all(
    app: Executions, views: ExecutionViews, batch: int = 1000, tenancy: Tenancy | None = None
) -> None:
    read = tenancy.read if tenancy is not None else read_events
    while events := read(app, views.position(), batch):
        views.apply(events)


def in_two_tenants(app: Executions, clock: Clock) -> Tenancy:
    """`every_ending` three times: in the default tenant, in OTHER, in the default again
    (so OTHER's executions are both newer and older than some of the default's)."""
    tenancy = Tenancy()
    every_ending(app, clock)
    mark = app.recorder.max_notification_id() or 0
    every_ending(app, clock)
    tenancy.claim(app, mark, OTHER)
    every_ending(app, clock)
    return tenancy


def dump(where: Path | Database) -> list[tuple[Any, ...]]:
    """Every row of every table, as the database holds it, in the order of their values
    (PostgreSQL returns a table's rows in the order it wrote them, SQLite in its key's)."""
    conn = connect(where)
    try:
        return [
            (table, *row)
            for table in TABLES
            for row in sorted(
                (tuple(row) for row in conn.execute(f"SELECT * FROM {table}")),
                key=lambda row: tuple((value is not None, value) for value in row),
            )
        ]
    finally:
        conn.close()


def test_every_event_type_projects_what_the_aggregate_says(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    ids = every_ending(app, clock)
    project_all(app, views, batch=3)  # small batches: positions carry across calls

    types = {e.type for e in read_events(app, 0, 1000)} - DEVICE_QUEUE_TYPES
    assert types == {
        "Requested",
        "Dispatched",
        "Published",
        "Acknowledged",
        "Progressed",
        "Succeeded",
        "Failed",
        "Rejected",
        "AnswerRecorded",
        "TimedOut",
        "Expired",
        "Canceled",
        "Retried",
        "Deleted",
    }
    # The verification events are projected in tests/unit/test_verification.py.
    assert types == PROJECTED_TYPES - {
        "VerificationRequired", "Verified", "VerificationFailed", "VerificationCanceled",
    }  # fmt: skip
    for execution_id in ids.values():
        row = views.get(execution_id)
        assert row is not None
        state = execution_state(app.get(execution_id))
        assert (row.status.value, row.result, row.error) == (
            state.status,
            state.result,
            state.error,
        )
        assert (row.created_at, row.updated_at, row.deadline) == (
            state.created_at,
            state.updated_at,
            state.deadline,
        )
        assert (row.device_id, row.name, row.params, row.ttl) == (
            state.device_id,
            state.name,
            state.params,
            state.ttl,
        )
        assert (row.ephemeral, row.retry_of, row.retries) == (
            state.ephemeral,
            state.retry_of,
            state.retries,
        )

    assert views.get(ids["sent"]).status is ExecutionStatus.SENT  # type: ignore[union-attr]
    assert views.get(ids["expired"]).error == {  # type: ignore[union-attr]
        "code": "expired",
        "message": "not delivered to the device within 30 s",
    }


def test_the_log_keeps_every_answer_in_order_late_ones_included(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    ids = every_ending(app, clock)
    project_all(app, views)
    row = views.get(ids["succeeded"], with_log=True)
    assert row is not None and row.log is not None
    aggregate_log = app.get(ids["succeeded"]).log
    assert [(e.status, e.payload) for e in row.log] == [
        (a["status"], a["payload"]) for a in aggregate_log
    ]
    assert [e.received_at for e in row.log] == [
        datetime.fromisoformat(a["received_at"]) for a in aggregate_log
    ]
    assert views.get(ids["succeeded"]).log is None  # type: ignore[union-attr]
    assert views.get(ids["expired"], with_log=True).log == []  # type: ignore[union-attr]


def test_events_seen_twice_change_nothing(
    app: Executions, views: ExecutionViews, clock: Clock, tmp_path: Path
) -> None:
    every_ending(app, clock)
    events = read_events(app, 0, 1000)
    assert views.apply(events) == events[-1].notification_id
    before = dump(views.database)
    assert views.apply(events) == events[-1].notification_id
    assert views.apply(events[:5]) == events[-1].notification_id
    assert dump(views.database) == before


def test_rebuild_gives_the_same_rows_byte_for_byte(
    app: Executions, views: ExecutionViews, clock: Clock, place: Place
) -> None:
    every_ending(app, clock)
    project_all(app, views, batch=2)
    live = dump(views.database)

    progress: list[tuple[int, int]] = []
    replayed = place("replayed")
    applied = rebuild(app, replayed, lambda done, total: progress.append((done, total)))
    stored = read_events(app, 0, 1000)
    assert applied == len([e for e in stored if e.type not in DEVICE_QUEUE_TYPES])
    assert dump(replayed) == live
    assert progress[-1][0] == progress[-1][1] == views.position()

    # Rebuilding over existing (even stale or wrong) rows replaces them all.
    conn = connect(views.database)
    conn.execute("UPDATE executions SET status = 'bogus'")
    conn.close()
    rebuild(app, views.database)
    assert dump(views.database) == live


def test_rebuild_of_an_empty_store(app: Executions, place: Place) -> None:
    progress: list[tuple[int, int]] = []
    assert rebuild(app, place("v"), lambda d, t: progress.append((d, t))) == 0
    assert progress == [(0, 0)]
    assert ExecutionViews(place("v")).position() == 0


def test_rows_hold_canonical_json_and_utc_timestamps(
    app: Executions, views: ExecutionViews
) -> None:
    execution_id = request(app, "set_temperature", {"value": 21})
    project_all(app, views)
    conn = connect(views.database)
    params, created_at, deadline = conn.execute(
        "SELECT params, created_at, deadline FROM executions WHERE id = ?", (str(execution_id),)
    ).fetchone()
    conn.close()
    assert params == '{"value":21}'
    assert created_at.endswith("+00:00") and len(created_at) == len(
        "2026-01-01T00:00:00.000000+00:00"
    )
    assert deadline.endswith("+00:00")


def test_a_views_database_of_another_schema_version_starts_over(place: Place) -> None:
    where = place("old")
    conn = connect(where)
    conn.execute("CREATE TABLE executions (id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO executions VALUES ('stale')")
    if conn.dialect == "sqlite":
        conn.execute("PRAGMA user_version = 1")
    else:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    views = ExecutionViews(where)
    try:
        assert views.position() == 0
        assert views.list().total_count == 0
    finally:
        views.close()


# --- tenants ---------------------------------------------------------------------------------


def existing(app: Executions, tenancy: Tenancy, tenant: str) -> set[UUID]:
    """The tenant's executions the store still has (the deleted ones have no row)."""
    found = set()
    for execution_id, owner in tenancy.of.items():
        try:
            app.get(execution_id)
        except ExecutionNotFound:
            continue
        if owner == tenant:
            found.add(execution_id)
    return found


def test_a_tenant_lists_counts_and_gets_only_its_own_executions(
    app: Executions, views: ExecutionViews, clock: Clock
) -> None:
    tenancy = in_two_tenants(app, clock)
    project_all(app, views, batch=5, tenancy=tenancy)
    mine = {t: existing(app, tenancy, t) for t in (DEFAULT_TENANT, OTHER)}
    assert len(mine[DEFAULT_TENANT]) == 2 * len(mine[OTHER]) == 16

    for tenant, theirs in ((DEFAULT_TENANT, mine[OTHER]), (OTHER, mine[DEFAULT_TENANT])):
        everything = views.list(ExecutionFilter(tenant=tenant, include_ephemeral=True), limit=500)
        assert {e.id for e in everything.items} == mine[tenant]
        assert everything.total_count == len(mine[tenant])
        assert {e.tenant for e in everything.items} == {tenant}
        # page by page, through every kind of filter and its count
        for where in (
            ExecutionFilter(tenant=tenant),
            ExecutionFilter(tenant=tenant, statuses=frozenset({ExecutionStatus.FAILED})),
            ExecutionFilter(tenant=tenant, statuses=frozenset({ExecutionStatus.SENT})),
            ExecutionFilter(tenant=tenant, device_id=DEVICE, name="reboot"),
            ExecutionFilter(tenant=tenant, created_before=FAR_FUTURE),
        ):
            seen, cursor = [], None
            while True:
                page = views.list(where, limit=2, cursor=cursor)
                seen += [e.id for e in page.items]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert seen and set(seen) <= mine[tenant], where
            assert page.total_count == len(seen), where
        for execution_id in mine[tenant]:
            assert views.get(execution_id, tenant=tenant) == views.get(execution_id)
            assert views.get(execution_id, True, tenant) == views.get(execution_id, True)
        for execution_id in theirs:  # another tenant's: exactly as if it did not exist
            assert views.get(execution_id) is not None
            assert views.get(execution_id, tenant=tenant) is None
            assert views.get(execution_id, True, tenant) is None
        assert set(views.ids_created_before(FAR_FUTURE, 100, tenant=tenant)) == mine[tenant]

    assert views.list(ExecutionFilter(tenant="nobody", include_ephemeral=True)).total_count == 0
    assert views.list().total_count == len(mine[DEFAULT_TENANT])  # the default tenant's
    # The retention sweep: every tenant's, up to the limit, across tenants.
    every = mine[DEFAULT_TENANT] | mine[OTHER]
    assert set(views.ids_created_before(FAR_FUTURE, 100)) == every
    some = views.ids_created_before(FAR_FUTURE, len(mine[OTHER]) + 3)
    assert len(set(some)) == len(mine[OTHER]) + 3 and set(some) <= every
    assert views.ids_created_before(FAR_FUTURE, 100, ephemeral_only=True) == []


def test_rebuild_of_two_tenants_gives_the_same_rows(
    app: Executions,
    views: ExecutionViews,
    clock: Clock,
    place: Place,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenancy = in_two_tenants(app, clock)
    project_all(app, views, batch=4, tenancy=tenancy)
    monkeypatch.setattr(replay, "read_events", tenancy.read)
    rebuild(app, place("replayed"))
    live = dump(views.database)
    assert dump(place("replayed")) == live
    conn = connect(views.database)
    try:
        counted = conn.execute(
            "SELECT tenant, SUM(n) FROM execution_counts WHERE scope = 0"
            " GROUP BY tenant ORDER BY tenant"
        ).fetchall()
    finally:
        conn.close()
    assert [(tenant, int(n)) for tenant, n in counted] == [(OTHER, 8), (DEFAULT_TENANT, 16)]


@pytest.mark.parametrize("given", [None, "", DEFAULT_TENANT])
def test_an_execution_requested_before_tenants_is_the_default_tenants(
    app: Executions, views: ExecutionViews, given: str | None
) -> None:
    execution_id = request(app)
    events = read_events(app, 0, 100)
    requested = events[0]
    assert requested.type == "Requested"
    data = {k: v for k, v in requested.data.items() if k != "tenant"}
    if given is not None:
        data["tenant"] = given
    views.apply([requested.model_copy(update={"data": data}), *events[1:]])
    row = views.get(execution_id, tenant=DEFAULT_TENANT)
    assert row is not None and row.tenant == DEFAULT_TENANT
    assert [e.id for e in views.list().items] == [execution_id]


# The views' schema at version 4, before tenants: what a deployed api last wrote.
VERSION_4 = """
CREATE TABLE executions (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, name TEXT NOT NULL,
    params TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, ttl INTEGER NOT NULL, deadline TEXT NOT NULL, result TEXT,
    error TEXT, requested_name TEXT NOT NULL, ephemeral INTEGER NOT NULL, retry_of TEXT,
    retries TEXT NOT NULL, verification TEXT, outcome TEXT NOT NULL);
CREATE TABLE execution_log (execution_id TEXT NOT NULL, seq INTEGER NOT NULL,
    received_at TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq));
CREATE TABLE execution_counts (scope INTEGER NOT NULL, device_id TEXT NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, ephemeral INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (scope, device_id, name, status, ephemeral)) WITHOUT ROWID;
CREATE TABLE projection_position (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE INDEX executions_by_time ON executions (ephemeral, created_at, id);
"""


def version_4_views(path: Path, app: Executions) -> None:
    """A views database of version 4 holding every execution of `app` (no tenants), at the
    store's end: nothing in it would make the projection read the store again."""
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_4)
    for event in read_events(app, 0, 1000):
        if event.type == "Requested":
            data = event.data
            conn.execute(
                "INSERT INTO executions VALUES (?, ?, ?, '{}', 'PENDING', ?, ?, 30, ?,"
                " NULL, NULL, ?, 0, NULL, '[]', NULL, '')",
                (str(event.execution_id), data["device_id"], data["name"], *["x"] * 4),
            )
    conn.execute("INSERT INTO execution_counts VALUES (0, '', '', 'PENDING', 0, 1)")
    end = app.recorder.max_notification_id()
    conn.execute("INSERT INTO projection_position VALUES ('executions', ?)", (end,))
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("backend", ["sqlite"])  # version 4 was SQLite's only
def test_a_version_4_views_database_is_projected_again_with_tenants(
    app: Executions, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenancy = in_two_tenants(app, clock)
    monkeypatch.setattr(replay, "read_events", tenancy.read)
    rebuild(app, tmp_path / "fresh.sqlite")

    # The api opens it: it starts over empty at position 0, and projects the store again.
    version_4_views(tmp_path / "api.sqlite", app)
    views = ExecutionViews(tmp_path / "api.sqlite")
    try:
        assert (views.position(), views.list().total_count) == (0, 0)
        project_all(app, views, tenancy=tenancy)
    finally:
        views.close()
    assert dump(tmp_path / "api.sqlite") == dump(tmp_path / "fresh.sqlite")

    # `baton replay` over it does the same.
    version_4_views(tmp_path / "replay.sqlite", app)
    rebuild(app, tmp_path / "replay.sqlite")
    assert dump(tmp_path / "replay.sqlite") == dump(tmp_path / "fresh.sqlite")
    conn = sqlite3.connect(tmp_path / "replay.sqlite")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tenants = conn.execute("SELECT DISTINCT tenant FROM executions ORDER BY 1").fetchall()
    finally:
        conn.close()
    assert tenants == [(OTHER,), (DEFAULT_TENANT,)]
