"""The views database: schema, connections, and the canonical encodings rows are made of.

Rows must come out byte for byte the same whether they were projected live or rebuilt
(invariant 4), so every JSON value and timestamp is written through `canonical_json` and
`canonical_time` and nothing else.

The views live in `views.sqlite`, or in the schema `views` of the PostgreSQL database
(BATON_DATABASE_URL): the same tables, indexes and SQL (baton_platform.sql), but for the
few lines that say it in each one's words (`schema_sql`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

from baton_platform.sql import Connection, Database, Dialect

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id          TEXT PRIMARY KEY,
    -- Whose execution it is: every read is scoped by it, and every index leads with it.
    tenant      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    params      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    ttl         INTEGER NOT NULL,
    deadline    TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    requested_name TEXT NOT NULL,
    requested_by TEXT,
    ephemeral   INTEGER NOT NULL,
    retry_of    TEXT,
    retries     TEXT NOT NULL,
    verification TEXT,
    -- The terminal status once the execution has ended, '' before. The indexes hold this
    -- rather than `status`, which changes three or four times before it ends: each
    -- change of an indexed column rewrites the row's entries (see `FILTER_COLUMNS`).
    outcome     TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS execution_log (
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    received_at  TEXT NOT NULL,
    status       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

-- How many executions each list filter matches in each tenant, kept by the projection in
-- the transaction that changes the rows, so `total_count` is a lookup of at most 20 rows
-- (queries.py). scope says which of device_id and name the row is for (the others hold
-- ''): 0 every execution, 1 one device, 2 one command name, 3 one device's one command
-- name. scope leads the key so that the tenants with executions are one range (scope 0).
CREATE TABLE IF NOT EXISTS execution_counts (
    scope     INTEGER NOT NULL,
    tenant    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    status    TEXT NOT NULL,
    ephemeral INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (scope, tenant, device_id, name, status, ephemeral)
) WITHOUT ROWID;

-- The change feed: one row per projected event of an execution, keyed by the event's
-- notification id (its global position in the event store), with what the execution is
-- after it. `GET /v1/events` and `/v1/executions/{id}/events` read it after a client's
-- Last-Event-ID, and the webhook deliveries are made from it: every api replica reads
-- the same rows in the same order (docs/api.md, "Live updates").
CREATE TABLE IF NOT EXISTS execution_changes (
    position     INTEGER PRIMARY KEY,
    tenant       TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS execution_changes_by_tenant ON execution_changes (tenant, position);
CREATE INDEX IF NOT EXISTS execution_changes_by_execution
    ON execution_changes (execution_id, position);

CREATE TABLE IF NOT EXISTS projection_position (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""

# Every list is one tenant's, so every index leads with it: a tenant's page never reads
# past another tenant's rows, however many there are.
TENANT_COLUMN = "tenant"
# The columns a list filters on by equality, in the order every index lists them after
# TENANT_COLUMN. A filter on a status that has not ended reads the rows with `outcome` ''
# (what is in flight, not the history) and checks their `status`.
FILTER_COLUMNS = ("device_id", "name", "outcome")
# What follows them in every index: a page is one index range, read in (created_at, id)
# order, whatever the filter (queries.py).
ORDER_COLUMNS = ("ephemeral", "created_at", "id")
TABLES = (
    "executions",
    "execution_log",
    "execution_counts",
    "execution_changes",
    "projection_position",
)

# Bumped whenever SCHEMA changes: views are disposable, so a views database of another
# version is dropped and projected again from the event store (position 0).
SCHEMA_VERSION = 7  # 5: per tenant; 6: requested_by; 7: execution_changes
PROJECTION_NAME = "executions"
# The name of the views' write lock (`transaction`).
WRITE_LOCK = "views"


def index_name(columns: tuple[str, ...]) -> str:
    """The index of `executions` whose leading columns are TENANT_COLUMN and then `columns`
    (in FILTER_COLUMNS order)."""
    return "executions_by_" + "_".join((TENANT_COLUMN, *columns, "time"))


def _indexes() -> str:
    """One index per subset of FILTER_COLUMNS, each led by the tenant: eight, so that no
    filter leaves a page to be found by reading past rows it does not want
    (tests/unit/test_views_costs.py)."""
    subsets = [c for r in range(len(FILTER_COLUMNS) + 1) for c in combinations(FILTER_COLUMNS, r)]
    return "".join(
        f"CREATE INDEX IF NOT EXISTS {index_name(columns)} "
        f"ON executions ({', '.join((TENANT_COLUMN, *columns, *ORDER_COLUMNS))});\n"
        for columns in subsets
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_time(value: datetime | str) -> str:
    """UTC, always with microseconds: fixed width, so text order is time order in SQL."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {value!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def schema_sql(dialect: Dialect) -> str:
    """The tables and indexes in `dialect`'s words. On PostgreSQL every text column
    compares bytes (`COLLATE "C"`), as SQLite's do, whatever the database's locale: the
    keyset order of (created_at, id) and the cursors' bounds are then the same on both,
    and so is every page. (`WITHOUT ROWID` is SQLite's: PostgreSQL has no rowid.)"""
    script = SCHEMA + _indexes()
    if dialect == "sqlite":
        return script
    script = script.replace(") WITHOUT ROWID;", ");")
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', script)


def connect(where: Path | Database) -> Connection:
    """A connection in autocommit mode: transactions are opened explicitly (`transaction`).

    On SQLite, WAL lets readers (queries, a running api) keep reading the last committed
    state while a rebuild holds the write lock for its single long transaction; PostgreSQL's
    readers always do.
    """
    database = where if isinstance(where, Database) else Database(path=where)
    return database.connect(on_open=UNSYNCED)


# The views commit without waiting for the disk: they are rebuilt from the event store, and
# the projection's position commits with them, so what a power loss takes from the newest
# commits is applied again (docs/architecture.md, "What stored means"). On PostgreSQL that
# takes a WAL flush's wait off every projection step, and off the `?wait=` answers it wakes.
UNSYNCED: dict[Dialect, tuple[str, ...]] = {
    "sqlite": ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"),
    "postgres": ("SET synchronous_commit = off",),
}


def create_schema(conn: Connection) -> None:
    """Create the tables; a database made for another schema version starts over empty."""
    if conn.dialect == "postgres":
        _create_postgres_schema(conn)
        return
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.executescript(schema_sql("sqlite"))


def _create_postgres_schema(conn: Connection) -> None:
    """The same on PostgreSQL, whose version is a row of `schema_version` (SQLite keeps it
    in its header): under the write lock, so an api and a `baton replay` starting together
    do not both create the tables."""
    with transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is not None and row[0] == SCHEMA_VERSION:
            return
        for table in (*TABLES, "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.executescript(schema_sql("postgres"))
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """Take the write lock up front (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock) so
    two projectors never interleave."""
    with conn.transaction(WRITE_LOCK):
        yield conn


@contextmanager
def snapshot(conn: Connection) -> Iterator[Connection]:
    """One read transaction: the statements inside see the same commit (a page and its
    total_count agree while the projection writes)."""
    with conn.snapshot():
        yield conn


def read_position(conn: Connection) -> int:
    row = conn.execute(
        "SELECT position FROM projection_position WHERE name = ?", (PROJECTION_NAME,)
    ).fetchone()
    return int(row["position"]) if row else 0


def write_position(conn: Connection, position: int) -> None:
    conn.execute(
        "INSERT INTO projection_position (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (PROJECTION_NAME, position),
    )
