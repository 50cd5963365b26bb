"""Where a store's tables live (a SQLite file, or a schema of a PostgreSQL database), and one
small connection over both, so each store's SQL is written once.

The SQL is SQLite's with `?` placeholders; on PostgreSQL they become the server's own `$1`,
`$2`, ... (psycopg's raw cursors), so psycopg does not parse a statement for placeholders on
every run: for the projection's multi-row statements, with hundreds of parameters and too
long for psycopg's own cache, that parse was an eighth of the api's CPU. Rows are read by
index or by column name on both (`sqlite3.Row` on SQLite, `Row` here on PostgreSQL).
Connections are in autocommit mode: a store opens its transactions itself, with
`transaction` (a write that takes the store's lock first, as SQLite's BEGIN IMMEDIATE does)
or `snapshot` (reads that see one commit).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import psycopg

Dialect = Literal["sqlite", "postgres"]
BUSY_TIMEOUT_MS = 30_000
# Rows per statement of `execute_values`: with up to 9 columns, far below SQLite's limit
# on parameters (32,766) and PostgreSQL's (65,535).
VALUES_CHUNK = 500


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (a PostgreSQL server restarting,
    refusing connections, or ending them): worth a retry, not a fault of the request or
    of the code. SQLite's OperationalError is not one: there it names a missing table too."""
    from eventsourcing.persistence import InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    psycopg = sys.modules.get("psycopg")  # not imported: PostgreSQL not in use
    return psycopg is not None and isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError)
    )


class Cursor(Protocol):
    """What the stores read from an executed statement (sqlite3's and psycopg's cursors)."""

    rowcount: int
    description: Any  # None for a statement that returns no rows

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True)
class Database:
    """A store's place: the SQLite file `path`, or (with `url`) the schema `schema` of that
    PostgreSQL database. The URL holds the password: `str()` leaves it out."""

    path: Path | None = None
    url: str | None = None
    schema: str = "public"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ValueError("a Database is a SQLite path or a PostgreSQL URL, not both")

    @property
    def dialect(self) -> Dialect:
        return "sqlite" if self.url is None else "postgres"

    def __str__(self) -> str:
        if self.url is None:
            return str(self.path)
        return f"{redacted(self.url)} (schema {self.schema})"

    def connect(self, on_open: Mapping[Dialect, Sequence[str]] | None = None) -> Connection:
        """`on_open`: statements of the connection's dialect run whenever it is opened, a
        PostgreSQL one opened again after the server dropped it included (a store's
        session settings, which a reopened connection would otherwise lose)."""
        session = () if on_open is None else tuple(on_open.get(self.dialect, ()))
        if self.url is None:
            assert self.path is not None
            return Connection.sqlite(self.path, session)
        return Connection.postgres(self.url, self.schema, session)


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def postgres_params(url: str) -> dict[str, str]:
    """host, port, user, password and dbname of a `postgresql://` URL. A `host` query
    parameter (a unix socket directory) stands for the host part."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {redacted(url)}")
    query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
    return {
        "host": unquote(query.get("host") or parts.hostname or "127.0.0.1"),
        "port": str(parts.port or query.get("port") or 5432),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "dbname": unquote(parts.path.lstrip("/")) or unquote(parts.username or ""),
    }


def conninfo(url: str) -> str:
    """The URL as libpq's connection string (psycopg.connect's first argument)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**postgres_params(url))


class Row(tuple[Any, ...]):
    """A PostgreSQL row read like a `sqlite3.Row`: by index, or by column name."""

    _names: dict[str, int]

    def __new__(cls, names: dict[str, int], values: Sequence[Any]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)


def _row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(names, values)


class Connection:
    """One connection, SQLite or PostgreSQL. Not for two threads at once (the stores hold a
    lock around each use)."""

    def __init__(
        self,
        dialect: Dialect,
        raw: sqlite3.Connection | psycopg.Connection[Any],
        reopen: Callable[[], psycopg.Connection[Any]] | None = None,
        schema: str = "",
    ) -> None:
        self.dialect: Dialect = dialect
        self.schema = schema
        self._raw: Any = raw
        self._reopen = reopen
        self._in_transaction = False

    @classmethod
    def sqlite(cls, path: Path, session: Sequence[str] = ()) -> Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for statement in session:
            raw.execute(statement)
        raw.row_factory = sqlite3.Row
        return cls("sqlite", raw)

    @classmethod
    def postgres(cls, url: str, schema: str, session: Sequence[str] = ()) -> Connection:
        def reopen() -> psycopg.Connection[Any]:
            import psycopg

            raw: psycopg.Connection[Any] = psycopg.connect(
                conninfo(url),
                autocommit=True,
                row_factory=_row_factory,
                cursor_factory=psycopg.RawCursor,
                connect_timeout=10,
            )
            # Unqualified names are the store's own tables, in its own schema; public
            # (the event store's) is not on the path, so no name of ours can reach it.
            # Two processes starting together may both create it: one of them is told it
            # exists (or trips on the catalog's unique index), which is as good.
            taken = (psycopg.errors.DuplicateSchema, psycopg.errors.UniqueViolation)
            with contextlib.suppress(*taken):
                raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            raw.execute(f'SET search_path TO "{schema}"')
            for statement in session:
                raw.execute(statement)
            return raw

        return cls("postgres", reopen(), reopen, schema)

    def __getattr__(self, name: str) -> Any:
        # What only one driver has (sqlite3's trace and progress callbacks, which the cost
        # tests count steps with) is the driver's.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._live(), name)

    def _live(self) -> Any:
        """The connection; on PostgreSQL, a new one when the server dropped the last (it
        restarted): outside a transaction only, so nothing half-done is carried over."""
        if self._reopen is not None and self._raw.closed and not self._in_transaction:
            self._raw = self._reopen()
        return self._raw

    def _sql(self, sql: str) -> str:
        """SQLite's `?` as PostgreSQL's `$1`, `$2`, ..."""
        return sql if self.dialect == "sqlite" else numbered(sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect == "sqlite":
            cursor: Cursor = self._live().execute(sql, params)
        else:
            cursor = self._live().execute(self._sql(sql), params or None)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raw = self._live()
        if self.dialect == "sqlite":
            raw.executemany(sql, rows)
            return
        rows = list(rows)
        if rows:
            with raw.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)

    def execute_values(
        self, sql: str, rows: Sequence[Sequence[Any]], chunk: int = VALUES_CHUNK
    ) -> list[Any]:
        """`sql` with `{values}` standing for `rows`, each in parentheses (a VALUES list;
        of one column, an IN list too), run once per `chunk` rows: one statement where
        `executemany` runs one per row. Returns the rows the statements return (a SELECT's,
        or RETURNING), in order."""
        found: list[Any] = []
        for at in range(0, len(rows), chunk):
            part = rows[at : at + chunk]
            cursor = self._live().execute(
                self._values_sql(sql, len(part), len(part[0])),
                [value for values in part for value in values],
            )
            if cursor.description:
                found += cursor.fetchall()
        return found

    def _values_sql(self, sql: str, rows: int, columns: int) -> str:
        """`sql` with `rows` parenthesised lists of `columns` placeholders for `{values}`,
        its only parameters."""
        if self.dialect == "sqlite":
            row = f"({', '.join('?' * columns)})"
            return sql.format(values=", ".join([row] * rows))
        listed = ", ".join(
            "(" + ", ".join(f"${n}" for n in range(at, at + columns)) + ")"
            for at in range(1, rows * columns + 1, columns)
        )
        return sql.format(values=listed)

    def executescript(self, script: str) -> None:
        """Statements without parameters, one after the other."""
        # (sqlite3's commits an open transaction first: call it outside one.)
        method = "executescript" if self.dialect == "sqlite" else "execute"
        getattr(self._live(), method)(script)

    @contextmanager
    def transaction(self, lock: str) -> Iterator[Connection]:
        """A write transaction, holding the store's write lock `lock` until it ends: SQLite's
        whole-database lock (BEGIN IMMEDIATE), or on PostgreSQL an advisory lock named after
        it and the store's schema, so two writers of the same store never interleave."""
        self._begin("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        try:
            if self.dialect == "postgres":
                key = lock_key(f"{self.schema}.{lock}")
                self.execute("SELECT pg_advisory_xact_lock(?)", (key,))
            yield self
        except BaseException:
            self._end("ROLLBACK")
            raise
        self._end("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """Reads that all see the same commit."""
        repeatable = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        self._begin("BEGIN" if self.dialect == "sqlite" else repeatable)
        try:
            yield self
        finally:
            self._end("COMMIT")

    def _begin(self, statement: str) -> None:
        self._live().execute(statement)
        self._in_transaction = True

    def _end(self, statement: str) -> None:
        try:
            if not (self.dialect == "postgres" and self._raw.closed):
                self._raw.execute(statement)
        finally:
            self._in_transaction = False

    def close(self) -> None:
        self._raw.close()


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`sql` with its `?` placeholders as `$1`, `$2`, ... (none may stand in a literal)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))


def lock_key(name: str) -> int:
    """A stable 32-bit number for a lock's name (PostgreSQL advisory locks are numbers)."""
    return zlib.crc32(f"baton:{name}".encode())
