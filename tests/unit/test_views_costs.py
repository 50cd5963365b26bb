"""What keeps the views' costs flat as history grows (issue 7: lists with filters and
total_count, writes and position lookups stay flat with a million stored executions).

On the real SQLite views database holding two tenants: every list reads one index range
per (outcome, ephemeral) of its tenant's and nothing else (EXPLAIN QUERY PLAN), the
projection and the lookups search by key, SQLite's own step count for a page does not
grow with the rows it does not return (its own tenant's or another's), and after any
history, projected in any batches and replayed, the rows say what the store says and the
counters behind each tenant's total_count what COUNT(*) says. The figures at
10k, 100k and 1M executions: tests/benchmarks/history_costs.py.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.errors import DomainError, ExecutionNotFound
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT
from baton_platform.sql import Connection, Database
from baton_views import ExecutionFilter, ExecutionViews, queries, read_events, rebuild, replay
from baton_views.counts import recount
from baton_views.projection import project
from baton_views.queries import encode_cursor, ids_created_before, list_executions
from baton_views.store import TABLES, connect, index_name, read_position, transaction
from tests.benchmarks.history_costs import BUSY_DEVICE, fill_views, steps_of
from tests.unit.test_views import (
    DEMO,
    OTHER,
    Clock,
    Tenancy,
    answer,
    dump,
    every_ending,
    in_two_tenants,
    request,
)

DEVICE = "demo-thermostat-1"
FAR_PAST = datetime(2000, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
SOME_ID = "00000000-0000-4000-8000-000000000000"


def new_app(clock: Clock | None = None) -> Executions:
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    return Executions(Catalog.from_yaml(DEMO), env=env, clock=clock or Clock())


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    """A views database holding executions of every status in two tenants, and a
    connection to it."""
    clock = Clock()
    app = new_app(clock)
    tenancy = in_two_tenants(app, clock)
    ExecutionViews(tmp_path / "views.sqlite").apply(tenancy.read(app, 0, 1000))
    connection = connect(tmp_path / "views.sqlite")
    yield connection
    connection.close()


# --- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    id: int
    parent: int
    detail: str

    @property
    def table(self) -> str | None:
        """The table this step reads, if it reads one (SCAN t / SEARCH t ..., not a
        subquery's rows: SCAN (subquery-1), SCAN arm0)."""
        words = [*self.detail.split(), ""]
        reads = words[0] in ("SCAN", "SEARCH") and words[1] in TABLES
        return words[1] if reads else None

    @property
    def constraints(self) -> set[str]:
        """What the index is searched on: `SEARCH t USING INDEX i (a=? AND b>?)`."""
        found = re.search(r"\((.*)\)$", self.detail)
        return set(found.group(1).split(" AND ")) if found else set()


def statements_of(conn: Connection, call: Callable[[], Any]) -> list[str]:
    """The SQL `call` ran on `conn`, parameters bound in."""
    ran: list[str] = []
    conn.set_trace_callback(ran.append)
    try:
        call()
    finally:
        conn.set_trace_callback(None)
    kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
    return [s for s in ran if s.split()[0].upper() in kinds]


def plan(conn: Connection, sql: str) -> list[Step]:
    return [Step(r[0], r[1], r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def sorts_rows_of_a_table(steps: list[Step]) -> list[str]:
    """Sorts next to a read of a table: a sort of everything that read matched. A sort of
    a subquery's LIMITed rows (merging arms) reads no table beside it."""
    return [
        s.detail
        for s in steps
        if "TEMP B-TREE" in s.detail
        and any(other.table for other in steps if other.parent == s.parent)
    ]


@dataclass(frozen=True)
class Case:
    device_id: str | None
    name: str | None
    statuses: frozenset[ExecutionStatus]
    include_ephemeral: bool
    created_after: datetime | None
    created_before: datetime | None
    order: str
    cursor: bool
    tenant: str = DEFAULT_TENANT

    @property
    def where(self) -> ExecutionFilter:
        return ExecutionFilter(
            self.statuses,
            self.name,
            self.device_id,
            self.created_after,
            self.created_before,
            self.include_ephemeral,
            self.tenant,
        )

    def page_cursor(self) -> str | None:
        """A cursor before every row, so the page still has rows to read."""
        if not self.cursor:
            return None
        edge = FAR_FUTURE if self.order == "newest" else FAR_PAST
        return encode_cursor(edge.isoformat(timespec="microseconds"), SOME_ID, self.order)  # type: ignore[arg-type]

    def expected_constraints(self) -> set[str]:
        equal = {"tenant=?"} | {
            f"{column}=?"
            for column, value in (("device_id", self.device_id), ("name", self.name))
            if value is not None
        }
        equal |= {"outcome=?"} if self.statuses else set()
        lower = upper = None
        if self.cursor and self.order == "oldest":
            lower = "(created_at,id)>(?,?)"
        elif self.created_after is not None:
            lower = "created_at>?"
        if self.cursor and self.order == "newest":
            upper = "(created_at,id)<(?,?)"
        elif self.created_before is not None:
            upper = "created_at<?"
        return equal | {"ephemeral=?"} | {b for b in (lower, upper) if b is not None}

    @property
    def arms(self) -> int:
        """Ended statuses one each, the others (in flight) together, times ephemeral."""
        outcomes = {s.value if s.is_terminal else "" for s in self.statuses}
        return max(1, len(outcomes)) * (2 if self.include_ephemeral else 1)


def every_case() -> Iterator[Case]:
    mixed = frozenset(
        {ExecutionStatus.SENT, ExecutionStatus.IN_PROGRESS, ExecutionStatus.SUCCEEDED}
    )
    for tenant, device, name, statuses, ephemeral, after, before, order, cursor in product(
        (DEFAULT_TENANT, OTHER),
        (None, DEVICE),
        (None, "reboot"),
        (frozenset(), frozenset({ExecutionStatus.FAILED}), mixed),
        (False, True),
        (None, FAR_PAST),
        (None, FAR_FUTURE),
        ("newest", "oldest"),
        (False, True),
    ):
        yield Case(device, name, statuses, ephemeral, after, before, order, cursor, tenant)


def list_problems(conn: Connection, case: Case) -> list[str]:
    """What is wrong with the plans of one list (nothing: one index range per arm)."""
    statements = statements_of(
        conn,
        lambda: list_executions(
            conn,
            case.where,
            case.order,  # type: ignore[arg-type]
            limit=5,
            cursor=case.page_cursor(),
        ),
    )
    return plan_problems(conn, case, statements)


def plan_problems(conn: Connection, case: Case, statements: list[str]) -> list[str]:
    problems = []
    pages = [s for s in statements if s.startswith("SELECT *")]
    if len(pages) != 1:
        return [f"{len(pages)} page statements: {statements}"]
    for sql in statements:
        steps = plan(conn, sql)
        reads = [s for s in steps if s.table in ("executions", "execution_counts")]
        # total_count counts the whole filter: the cursor bounds only the page
        expected = (case if sql in pages else replace(case, cursor=False)).expected_constraints()
        for step in reads:
            if not step.detail.startswith(f"SEARCH {step.table} USING"):
                problems.append(f"reads without an index: {step.detail}")
            if step.table == "executions" and step.constraints != expected:
                problems.append(f"{step.detail}, not on {sorted(expected)}")
            if (
                step.table == "execution_counts"
                and not {"scope=?", "tenant=?", "device_id=?", "name=?"} <= step.constraints
            ):
                problems.append(f"counters not searched by their key: {step.detail}")
        problems += [f"sorts what it read: {d}" for d in sorts_rows_of_a_table(steps)]
        if sql in pages and len(reads) != case.arms:
            problems.append(f"{len(reads)} index ranges for {case.arms} arms: {sql}")
    return problems


def test_every_list_reads_one_index_range_per_arm(conn: Connection) -> None:
    """Every combination of tenant, filters, orders and cursor: each (outcome, ephemeral)
    is one range of the index led by the tenant and exactly the filtered columns, bounded
    by the time filters and the cursor, read in order (no sort of what it read), and
    total_count searches the tenant's counters or, with a time filter, the same ranges."""
    cases = list(every_case())
    assert len(cases) == 768
    problems = {case: list_problems(conn, case) for case in cases}
    assert {case: found for case, found in problems.items() if found} == {}


OLD_SCHEMA = """
CREATE TABLE executions (id TEXT PRIMARY KEY, device_id TEXT, name TEXT, status TEXT,
    ephemeral INTEGER, created_at TEXT);
CREATE INDEX executions_device_created ON executions (device_id, created_at, id);
CREATE INDEX executions_status ON executions (status);
CREATE INDEX executions_created ON executions (created_at, id);
"""


@pytest.mark.parametrize(
    ("case", "where"),
    [
        (
            Case(None, "reboot", frozenset(), False, None, None, "newest", False),
            "ephemeral = 0 AND name = 'reboot'",
        ),
        (
            Case(
                None, None, frozenset({ExecutionStatus.FAILED}), False, None, None, "newest", False
            ),
            "ephemeral = 0 AND status IN ('FAILED')",
        ),
        (
            Case(DEVICE, None, frozenset(), False, None, FAR_FUTURE, "newest", True),
            f"ephemeral = 0 AND device_id = '{DEVICE}' AND created_at < '2100'"
            " AND (created_at, id) < ('2100', 'x')",
        ),
    ],
)
def test_the_plan_check_fails_the_queries_made_before(case: Case, where: str) -> None:
    """The views' schema and queries before counters and one index per filter: a COUNT
    of every matching row, pages found by reading past rows, a cursor that is not part of
    the range read."""
    conn = Connection("sqlite", sqlite3.connect(":memory:"))
    conn.executescript(OLD_SCHEMA)
    statements = [
        f"SELECT COUNT(*) FROM executions WHERE {where}",
        f"SELECT * FROM executions WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 6",
    ]
    assert plan_problems(conn, case, statements) != []
    conn.close()


def test_the_plan_check_fails_a_list_that_forgets_the_tenant(conn: Connection) -> None:
    """Today's schema, queried as before tenants: every tenant's rows, every tenant's count."""
    case = Case(None, None, frozenset(), False, None, None, "newest", False)
    page = "SELECT * FROM executions WHERE ephemeral = 0 ORDER BY created_at DESC, id DESC LIMIT 6"
    total = (
        "SELECT COALESCE(SUM(n), 0) FROM execution_counts"
        " WHERE scope = 0 AND device_id = '' AND name = '' AND ephemeral IN (0)"
    )
    assert plan_problems(conn, case, [page]) != []
    assert plan_problems(conn, case, [page, total]) != plan_problems(conn, case, [page])


def test_projection_purge_and_lookups_search_by_key(tmp_path: Path) -> None:
    clock = Clock()
    app = new_app(clock)
    tenancy = in_two_tenants(app, clock)
    views = ExecutionViews(tmp_path / "views.sqlite")  # the schema
    conn = connect(tmp_path / "views.sqlite")
    events = tenancy.read(app, 0, 1000)

    def apply(batch: list[Any]) -> None:
        with transaction(conn):
            project(conn, batch)

    # In two batches: the second updates rows and numbers on logs the first wrote.
    half = len(events) // 2
    statements = statements_of(conn, lambda: apply(events[:half]))
    statements += statements_of(conn, lambda: apply(events))
    assert any(s.startswith("WITH v(id") for s in statements)
    execution_id = events[0].execution_id
    statements += statements_of(conn, lambda: read_position(conn))
    for tenant in (None, DEFAULT_TENANT, OTHER):
        get = partial(queries.get_execution, conn, execution_id, True, tenant)
        statements += statements_of(conn, get)
    for ephemeral_only, tenant in product((False, True), (None, OTHER)):
        purge = partial(ids_created_before, conn, FAR_FUTURE, 10, ephemeral_only, tenant)
        statements += statements_of(conn, purge)
    assert len(statements) > 25
    scans = [
        (sql, step.detail)
        for sql in statements
        for step in plan(conn, sql)
        if step.table and not step.detail.startswith(f"SEARCH {step.table} USING")
    ]
    assert scans == []
    conn.close()
    views.close()


def test_a_batch_costs_as_many_statements_for_ten_commands_as_for_one(tmp_path: Path) -> None:
    """Where each execution is counted is read, its row written, its answers logged, the
    counters moved and the change feed written by a fixed number of statements per batch,
    however many events it holds: rows a batch creates are one INSERT, and rows it finds
    are updated by one statement per set of columns (the projection's cost per event under
    load, docs/benchmarks.md)."""
    app = new_app()
    ids = [request(app) for _ in range(10)]  # one device: all but the first queued
    for n, execution_id in enumerate(ids):
        app.record_published(execution_id)
        answer(app, execution_id, f"a{n}", AnswerStatus.STARTED, {})
        answer(app, execution_id, f"r{n}", AnswerStatus.SUCCEEDED, {"ok": True})
    events = read_events(app, 0, 1000)
    first = [e for e in events if e.execution_id == ids[0]]
    ran = []
    for n, batch in enumerate((first, events)):
        path = tmp_path / f"views-{n}.sqlite"
        ExecutionViews(path).close()
        conn = connect(path)
        split = next(i for i, e in enumerate(batch) if e.type == "Published")
        for part in (batch[:split], batch[split:]):  # every row created, then every row found

            def apply(c: Connection = conn, b: list[Any] = part) -> None:
                with transaction(c):
                    project(c, b)

            ran.append(statements_of(conn, apply))
        logged = conn.execute("SELECT seq, status FROM execution_log").fetchall()
        commands = len({e.execution_id for e in batch if e.type == "Requested"})
        assert sorted(map(tuple, logged)) == sorted([(1, "STARTED"), (2, "SUCCEEDED")] * commands)
        assert conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0] == commands
        conn.close()
    assert len(first) >= 5 and len(events) >= 10 * len(first)
    one_created, one_found, ten_created, ten_found = ran
    assert len(ten_created) == len(one_created)
    assert len(ten_found) == len(one_found)
    assert sum(s.startswith("INSERT INTO executions ") for s in one_created + ten_created) == 2
    assert not any(s.startswith("UPDATE") for s in ten_found)
    assert sum(s.startswith("WITH v(id") for s in ten_found) >= 1


def test_a_rebuild_writes_the_counters_and_the_position_once_however_many_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`baton replay` rebuilds in one transaction, and PostgreSQL keeps every version of a row
    that a transaction writes until it ends: when each batch wrote the counters and the
    position again, every later batch walked all their versions, and a rebuild of a million
    executions slowed from ~13,000 to ~2,000 events/s before a fifth of it was done. Both are
    now written once, at its end, and the views are the same as the live projection's."""
    app = new_app()
    ids = [request(app) for _ in range(10)]
    for n, execution_id in enumerate(ids):
        app.record_published(execution_id)
        answer(app, execution_id, f"a{n}", AnswerStatus.STARTED, {})
        answer(app, execution_id, f"r{n}", AnswerStatus.SUCCEEDED, {"ok": True})
    live = tmp_path / "live.sqlite"
    ExecutionViews(live).apply(read_events(app, 0, 1000))
    monkeypatch.setattr(replay, "REBUILD_BATCH", 7)  # a command's events span two batches
    rebuilt = tmp_path / "rebuilt.sqlite"
    ExecutionViews(rebuilt).close()
    conn = connect(rebuilt)

    def rebuild_in_one_transaction() -> None:
        with transaction(conn):
            replay._project_all(app, conn, None)

    ran = statements_of(conn, rebuild_in_one_transaction)
    conn.close()

    batches = sum(s.startswith("SELECT id, tenant, device_id") for s in ran)
    assert batches >= len(read_events(app, 0, 1000)) // 7
    assert sum(s.startswith("INSERT INTO execution_counts") for s in ran) == 1
    assert sum(s.startswith("INSERT INTO projection_position") for s in ran) == 1
    assert not any("FROM projection_position" in s for s in ran)
    assert dump(rebuilt) == dump(live)


# --- steps: what SQLite does, whatever the machine ------------------------------------------


def history_of(tmp_path: Path, older: int) -> Connection:
    """A views database with `older` executions from 2024 (in bulk) between twice as many
    of OTHER's, older and newer, under today's of every status (projected)."""
    path = tmp_path / f"views-{older}.sqlite"
    ExecutionViews(path).close()
    conn = connect(path)
    with transaction(conn):
        fill_views(conn, 0, older, OTHER)
        fill_views(conn, older, 2 * older)
        fill_views(conn, 2 * older, 3 * older, OTHER)
        recount(conn)
    clock = Clock()
    app = new_app(clock)
    every_ending(app, clock)
    for _ in range(3):  # enough of today's for every page below to be full
        every_ending(app, clock)
    with transaction(conn):
        project(conn, read_events(app, 0, 10_000))
    return conn


def test_a_page_costs_the_same_over_ten_times_the_history(tmp_path: Path) -> None:
    """The same lists over 2,000 and 20,000 older executions (and twice as many of another
    tenant's): as many SQLite steps, give or take a level of the B-trees. Before counters
    total_count alone took ten times as many (a COUNT over every matching row); without
    the tenant leading the indexes, a page that reaches back into the history reads past
    the other tenant's rows."""
    today = datetime.now(UTC) - timedelta(hours=1)
    failed = frozenset({ExecutionStatus.FAILED, ExecutionStatus.REJECTED})
    running = frozenset({ExecutionStatus.PENDING, ExecutionStatus.SENT})

    def lists(conn: Connection) -> dict[str, Callable[[], Any]]:
        def page(where: ExecutionFilter, order: str = "newest", **more: Any) -> Any:
            return lambda: list_executions(conn, where, order, limit=3, **more)  # type: ignore[arg-type]

        # A cursor next to created_before: the cursor must bound the range read, or the
        # next page reads the first one again. (total_count of a time filter counts the
        # rows up to COUNT_LIMIT: today's only, here.)
        window = ExecutionFilter(statuses=failed, created_after=today, created_before=FAR_FUTURE)
        first = list_executions(conn, window, limit=3)
        return {
            "everything": page(ExecutionFilter()),
            "statuses": page(ExecutionFilter(statuses=failed)),
            "in flight": page(ExecutionFilter(statuses=running)),
            "device": page(ExecutionFilter(device_id=DEVICE)),
            "name, statuses, show=ALL": page(
                ExecutionFilter(name="reboot", statuses=failed, include_ephemeral=True)
            ),
            "today": page(ExecutionFilter(created_after=today)),
            "today, oldest first": page(ExecutionFilter(created_after=today), "oldest"),
            "next page, before the future": page(window, cursor=first.next_cursor),
            "history of a device": page(ExecutionFilter(device_id=BUSY_DEVICE)),
            "history of a device, oldest first": page(
                ExecutionFilter(device_id=BUSY_DEVICE), "oldest"
            ),
            "another tenant's": page(ExecutionFilter(tenant=OTHER)),
            "another tenant's failed, oldest first": page(
                ExecutionFilter(statuses=failed, tenant=OTHER), "oldest"
            ),
        }

    small, large = history_of(tmp_path, 2_000), history_of(tmp_path, 20_000)
    try:
        cost = {
            label: (steps_of(small, call), steps_of(large, lists(large)[label]))
            for label, call in lists(small).items()
        }
    finally:
        small.close()
        large.close()
    grew = {label: c for label, c in cost.items() if c[1] > 1.25 * c[0] + 200}
    assert grew == {}, cost


# --- counters ------------------------------------------------------------------------------

DEVICES = ("demo-thermostat-1", "demo-thermostat-2", "demo-thermostat-3")
COMMANDS = {"reboot": {}, "self_test": {}, "set_temperature": {"value": 20}}
ANSWERS = (
    AnswerStatus.STARTED,
    AnswerStatus.IN_PROGRESS,
    AnswerStatus.SUCCEEDED,
    AnswerStatus.FAILED,
    AnswerStatus.REJECTED,
)

TENANTS = (DEFAULT_TENANT, OTHER)
requests = st.tuples(
    st.just("request"),
    st.sampled_from(DEVICES),
    st.sampled_from(sorted(COMMANDS)),
    st.booleans(),
    st.sampled_from(TENANTS),
)
later = st.lists(
    st.one_of(
        requests,
        st.tuples(st.just("publish"), st.integers(0, 50)),
        st.tuples(st.just("answer"), st.integers(0, 50), st.sampled_from(ANSWERS)),
        st.tuples(st.sampled_from(["cancel", "deadline", "retry", "delete"]), st.integers(0, 50)),
        st.tuples(st.just("project"), st.integers(1, 20)),
    ),
    min_size=5,
    max_size=80,
)
# A few requests first, so that most histories have executions to move.
operations = st.builds(
    lambda first, then: first + then, st.lists(requests, min_size=3, max_size=12), later
)


def run(
    app: Executions,
    clock: Clock,
    views: ExecutionViews,
    tenancy: Tenancy,
    operation: tuple[Any, ...],
) -> None:
    kind, *args = operation
    if kind == "project":
        while events := tenancy.read(app, views.position(), args[0]):
            views.apply(events)
        return
    if kind == "request":
        device, name, ephemeral, tenant = args
        command = RequestCommand(device, name, COMMANDS[name], None, ephemeral=ephemeral)
        tenancy.of[app.request(command).execution.id] = tenant
        return
    ids = sorted({e.execution_id for e in read_events(app, 0, 100_000) if e.type == "Requested"})
    if not ids:
        return
    execution_id = ids[args[0] % len(ids)]
    try:
        if kind == "publish":
            app.record_published(execution_id)
        elif kind == "answer":
            device = app.get(execution_id).device_id
            report = f"r{clock.now.timestamp()}"
            app.record_answer(execution_id, device, report, args[1], {}, clock.now)
        elif kind == "cancel":
            app.cancel(execution_id, "test")
        elif kind == "deadline":
            clock.now += timedelta(seconds=31)
            app.reach_deadline(execution_id)
        elif kind == "retry":
            app.retry(execution_id, "test", "test")
        else:
            app.delete(execution_id, "test")
    except DomainError:
        pass  # not allowed in that state: nothing stored
    clock.now += timedelta(milliseconds=1)


def counted_by_sql(conn: Connection, where: ExecutionFilter) -> int:
    """COUNT(*) with the filter written out anew: the counters' oracle."""
    clauses, values = ["tenant = ?"], [where.tenant]
    for column, value in (("device_id", where.device_id), ("name", where.name)):
        if value is not None:
            clauses.append(f"{column} = ?")
            values.append(value)
    if where.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(where.statuses))})")
        values += [s.value for s in where.statuses]
    if not where.include_ephemeral:
        clauses.append("ephemeral = 0")
    sql = f"SELECT COUNT(*) FROM executions WHERE {' AND '.join(clauses)}"
    return int(conn.execute(sql, values).fetchone()[0])


def filters() -> Iterator[ExecutionFilter]:
    statuses = [frozenset(), *(frozenset({s}) for s in ExecutionStatus)]
    statuses.append(frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.PENDING}))
    for tenant, device, name, wanted, ephemeral in product(
        TENANTS, (None, *DEVICES, "nobody"), (None, *COMMANDS, ""), statuses, (False, True)
    ):
        yield ExecutionFilter(wanted, name, device, include_ephemeral=ephemeral, tenant=tenant)


def assert_rows_say_what_the_store_says(
    app: Executions, views: ExecutionViews, tenancy: Tenancy
) -> None:
    requested = {e.execution_id for e in read_events(app, 0, 100_000) if e.type == "Requested"}
    for execution_id in requested:
        row = views.get(execution_id)
        try:
            stored = app.get(execution_id)
        except ExecutionNotFound:
            assert row is None
            continue
        assert row is not None
        assert (row.status, row.device_id, row.name, row.ephemeral, row.tenant) == (
            stored.status,
            stored.device_id,
            stored.name,
            stored.ephemeral,
            tenancy.of[execution_id],
        )
        others = [t for t in TENANTS if t != row.tenant]
        assert [views.get(execution_id, tenant=t) for t in (row.tenant, *others)] == [row, None]


def assert_counts_are_exact(views: ExecutionViews) -> None:
    conn = connect(views.database)
    try:
        wrong = {
            where: (views.list(where, limit=1).total_count, counted_by_sql(conn, where))
            for where in filters()
        }
        assert {w: c for w, c in wrong.items() if c[0] != c[1]} == {}
        # and the table itself is what counting every row again gives
        in_key_order = "SELECT * FROM execution_counts ORDER BY 1, 2, 3, 4, 5, 6"
        counters = conn.execute(in_key_order).fetchall()
        conn.execute("BEGIN")
        recount(conn)
        assert conn.execute(in_key_order).fetchall() == [c for c in counters if c[-1] != 0]
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=operations)
def test_rows_and_counters_are_exact_after_any_projection_and_after_replay(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[Any, ...]]
) -> None:
    folder = tmp_path_factory.mktemp("counts")
    check_history(operations, folder / "live.sqlite", folder / "replayed.sqlite")


_schemas = itertools.count()


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=operations)
def test_rows_and_counters_are_exact_after_any_projection_and_after_replay_on_postgres(
    postgres_url: str, operations: list[tuple[Any, ...]]
) -> None:
    """The same on PostgreSQL, fewer histories (each in schemas of their own)."""
    n = next(_schemas)
    live = Database(url=postgres_url, schema=f"live{n}")
    check_history(operations, live, replace(live, schema=f"replayed{n}"))


def check_history(
    operations: list[tuple[Any, ...]], live: Path | Database, replayed: Path | Database
) -> None:
    clock = Clock()
    app = new_app(clock)
    tenancy = Tenancy()
    views = ExecutionViews(live)
    try:
        for operation in operations:
            run(app, clock, views, tenancy, operation)
        run(app, clock, views, tenancy, ("project", 7))
        assert_rows_say_what_the_store_says(app, views, tenancy)
        assert_counts_are_exact(views)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(replay, "read_events", tenancy.read)
            # Batches that split executions: the counters carry over from one to the next.
            patch.setattr(replay, "REBUILD_BATCH", 5)
            rebuild(app, replayed)
        assert dump(replayed) == dump(views.database)
    finally:
        views.close()


def test_a_time_filter_counts_up_to_the_limit(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = list_executions(conn, ExecutionFilter(created_after=FAR_PAST))
    assert everything.total_count_exact
    assert everything.total_count == list_executions(conn, ExecutionFilter()).total_count == 16
    theirs = list_executions(conn, ExecutionFilter(created_after=FAR_PAST, tenant=OTHER))
    assert (theirs.total_count, theirs.total_count_exact) == (8, True)
    monkeypatch.setattr(queries, "COUNT_LIMIT", 3)
    capped = list_executions(conn, ExecutionFilter(created_after=FAR_PAST), limit=5)
    assert (capped.total_count, capped.total_count_exact, len(capped.items)) == (3, False, 5)
    exact = list_executions(conn, ExecutionFilter(created_before=FAR_PAST))
    assert (exact.total_count, exact.total_count_exact) == (0, True)


def test_an_offset_past_the_end_reads_no_rows(conn: Connection) -> None:
    total = list_executions(conn, ExecutionFilter()).total_count
    statements = statements_of(conn, lambda: list_executions(conn, ExecutionFilter(), offset=total))
    assert [s for s in statements if "FROM executions" in s] == []


# --- plans on PostgreSQL -------------------------------------------------------------------
#
# PostgreSQL has no INDEXED BY: its planner chooses. Over a realistic table (two tenants,
# history on a thousand devices, analyzed), every list must still read the one index of each
# arm, in order, and no sort may take rows straight from the table.

# Another tenant's history, and ours: a tenant's rows are a small part of the table, as
# they are with many tenants (the planner reads a whole table for a count that wants most
# of it, and rightly).
PG_HISTORY = 20_000
PG_OURS = 2_000


def fill_postgres_views(conn: Any, start: int, stop: int, tenant: str) -> None:
    """Executions start..stop-1 of `tenant`, as `fill_views` writes them on SQLite."""
    conn.execute(
        """
        INSERT INTO executions (id, tenant, device_id, name, params, status, created_at,
            updated_at, ttl, deadline, result, error, requested_name, ephemeral, retry_of,
            retries, outcome)
        SELECT md5(i::text || ?)::uuid::text, ?,
            CASE WHEN i % 10 = 0 THEN 'fleet-busy'
                 ELSE 'fleet-' || lpad((i % 1000)::text, 4, '0') END,
            (ARRAY['set_temperature', 'reboot', 'self_test', 'read_config'])[i % 4 + 1], '{}',
            s, t, t, 30, t, NULL, NULL, 'x', (i % 7 = 0)::int, NULL, '[]', s
        FROM generate_series(?::int, ?::int - 1) AS i,
            LATERAL (SELECT (ARRAY['SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SUCCEEDED'])[i % 4 + 1]
                     AS s) AS status,
            LATERAL (SELECT to_char(timestamp '2024-01-01' + i * interval '1 second',
                     'YYYY-MM-DD"T"HH24:MI:SS".000000+00:00"') AS t) AS created
        """,
        (tenant, tenant, start, stop),
    )


@pytest.fixture
def pg_conn(postgres_url: str) -> Iterator[Any]:
    """PostgreSQL views holding PG_HISTORY executions of each tenant in bulk, and today's
    of every status (projected), analyzed."""
    where = Database(url=postgres_url, schema="views")
    ExecutionViews(where).close()
    conn = connect(where)
    with transaction(conn):
        fill_postgres_views(conn, 0, PG_HISTORY, OTHER)
        fill_postgres_views(conn, PG_HISTORY, PG_HISTORY + PG_OURS, DEFAULT_TENANT)
        recount(conn)
    clock = Clock()
    app = new_app(clock)
    tenancy = in_two_tenants(app, clock)
    with transaction(conn):
        project(conn, tenancy.read(app, 0, 1000))
    conn.execute("VACUUM ANALYZE")
    yield conn
    conn.close()


class Recorded:
    """A connection that keeps each statement run on it, with its parameters."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.statements.append((sql, tuple(params)))
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def pg_nodes(
    plan: dict[str, Any], under_sort: bool = False
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Each node of a plan, and whether a Sort above it takes its rows with no Limit
    between them."""
    if plan["Node Type"] == "Limit":
        under_sort = False
    yield plan, under_sort
    for child in plan.get("Plans", []):
        yield from pg_nodes(child, under_sort or plan["Node Type"] == "Sort")


def pg_plan_problems(
    conn: Any, case: Case, statements: list[tuple[str, tuple[Any, ...]]]
) -> list[str]:
    problems = []
    pages = [s for s in statements if s[0].startswith("SELECT *")]
    if len(pages) != 1:
        return [f"{len(pages)} page statements: {statements}"]
    expected = index_name(
        tuple(
            column
            for column, used in (
                ("device_id", case.device_id is not None),
                ("name", case.name is not None),
                ("outcome", bool(case.statuses)),
            )
            if used
        )
    )
    for sql, params in statements:
        (explained,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
        reads = []
        for node, under_sort in pg_nodes(explained[0]["Plan"]):
            if node.get("Relation Name") != "executions":
                continue
            reads.append(node)
            if node["Node Type"] == "Bitmap Heap Scan":
                # The rows of one index range, fetched in the table's order (a count).
                used = [child.get("Index Name") for child in node.get("Plans", [])]
            elif node["Node Type"] in ("Index Scan", "Index Only Scan"):
                used = [node["Index Name"]]
            else:
                problems.append(f"reads executions by {node['Node Type']}: {sql}")
                continue
            # A page reads its arm's own index, in order. A count (of a time filter) may
            # read another index led by the same columns, the planner's choice by cost:
            # either way only this tenant's rows of this device / command name.
            page = (sql, params) in pages
            if used != [expected] and (page or not _led_by(used, expected)):
                problems.append(f"reads {used}, not {expected}: {sql}")
            if under_sort:
                problems.append(f"sorts what it read: {sql}")
        if (sql, params) in pages and len(reads) != case.arms:
            problems.append(f"{len(reads)} index ranges for {case.arms} arms: {sql}")
    return problems


def _led_by(used: list[str | None], expected: str) -> bool:
    """Whether the one index used leads with the columns of `expected` (then more)."""
    return len(used) == 1 and (used[0] or "").startswith(expected.removesuffix("_time") + "_")


def test_every_list_reads_one_index_range_per_arm_on_postgres(pg_conn: Any) -> None:
    """The cases of `test_every_list_reads_one_index_range_per_arm`, planned by
    PostgreSQL: each arm one range of its own index, read in its order."""
    problems = {}
    for case in every_case():
        if case.tenant != DEFAULT_TENANT:
            continue  # the other tenant's lists are most of the table
        recorded = Recorded(pg_conn)
        list_executions(
            recorded,  # type: ignore[arg-type]
            case.where,
            case.order,  # type: ignore[arg-type]
            limit=5,
            cursor=case.page_cursor(),
        )
        problems[case] = pg_plan_problems(pg_conn, case, recorded.statements)
    found = [problem for each in problems.values() for problem in each]
    assert found == [], "\n".join(sorted(set(found))[:20])
