"""baton_platform.sql: one connection over SQLite and PostgreSQL, for the views' and the
deadlines' SQL written once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from baton_platform.sql import Database, conninfo, numbered, postgres_params, redacted
from baton_views.store import connect as views_connect


@pytest.fixture
def database(tmp_path: Path, database_url: str | None) -> Database:
    if database_url is None:
        return Database(path=tmp_path / "t.sqlite")
    return Database(url=database_url, schema="things")


def test_the_same_sql_runs_on_both(database: Database) -> None:
    conn = database.connect()
    try:
        conn.executescript("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER NOT NULL);")
        conn.executemany("INSERT INTO t (k, n) VALUES (?, ?)", [("a%b", 1), ("b", 2)])
        row = conn.execute("SELECT k, n FROM t WHERE k LIKE ? ORDER BY k", ("a%",)).fetchone()
        assert (row["k"], row["n"], row[0], row[1]) == ("a%b", 1, "a%b", 1)
        assert conn.execute("UPDATE t SET n = n + 1").rowcount == 2

        def delete_then_fail() -> None:
            with conn.transaction("t"):
                conn.execute("DELETE FROM t")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            delete_then_fail()  # rolled back
        with conn.snapshot():
            assert [tuple(r) for r in conn.execute("SELECT k, n FROM t ORDER BY k")] == [
                ("a%b", 2),
                ("b", 3),
            ]
    finally:
        conn.close()


def test_placeholders_are_numbered_for_postgresql() -> None:
    assert numbered("SELECT 1") == "SELECT 1"
    assert numbered("a = ? AND b IN (?, ?) OR c = ?") == "a = $1 AND b IN ($2, $3) OR c = $4"


def test_a_store_sees_only_its_own_schema(postgres_url: str) -> None:
    mine = Database(url=postgres_url, schema="mine").connect()
    theirs = Database(url=postgres_url, schema="theirs").connect()
    try:
        mine.execute("CREATE TABLE t (n INTEGER)")
        theirs.execute("CREATE TABLE t (n INTEGER)")
        mine.execute("INSERT INTO t VALUES (1)")
        assert theirs.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        mine.close()
        theirs.close()


def test_writers_of_one_store_wait_for_each_other(postgres_url: str) -> None:
    """The advisory lock stands for SQLite's BEGIN IMMEDIATE: the second waits."""
    database = Database(url=postgres_url, schema="views")
    first, second = database.connect(), database.connect()
    order: list[str] = []
    try:
        with first.transaction("views"):

            def other() -> None:
                with second.transaction("views"):
                    order.append("second")

            thread = threading.Thread(target=other)
            thread.start()
            time.sleep(0.3)  # the other writer had its chance to (wrongly) go first
            order.append("first")
        thread.join(10)
        assert order == ["first", "second"]
    finally:
        first.close()
        second.close()


def test_a_dropped_connection_is_opened_again_at_the_next_use(postgres_url: str) -> None:
    conn = Database(url=postgres_url, schema="views").connect()
    try:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the call in progress fails...
        assert conn.execute("SELECT current_schema()").fetchone()[0] == "views"  # ...not the next
    finally:
        conn.close()


def test_the_views_commit_unsynced_on_every_connection_a_reopened_one_too(
    postgres_url: str,
) -> None:
    """The views wait for no fsync (baton_views.store.UNSYNCED); a connection the server
    dropped is opened again with the same settings, not the database's default."""
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
        # The test server runs without fsync: this database's default is made the usual one.
        (name,) = admin.execute("SELECT current_database()").fetchone() or ("",)
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO on')
    conn = views_connect(Database(url=postgres_url, schema="views"))
    try:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
            assert admin.execute("SHOW synchronous_commit").fetchone() == ("on",)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    finally:
        conn.close()


def test_urls_and_their_passwords() -> None:
    url = "postgresql://baton:s%40cret@db.example:6432/baton"
    assert postgres_params(url) == {
        "host": "db.example",
        "port": "6432",
        "user": "baton",
        "password": "s@cret",
        "dbname": "baton",
    }
    assert redacted(url) == "postgresql://baton:***@db.example:6432/baton"
    assert "s%40cret" not in str(Database(url=url, schema="views"))
    socket = postgres_params("postgresql://baton:x@/baton?host=/run/postgresql")
    assert (socket["host"], socket["port"]) == ("/run/postgresql", "5432")


def test_execute_values_writes_and_returns_every_row_in_chunks(database: Database) -> None:
    conn = database.connect()
    try:
        conn.executescript("CREATE TABLE v (k TEXT PRIMARY KEY, n INTEGER NOT NULL);")
        rows = [(f"k{i}", i) for i in range(5)]
        upsert = (
            "INSERT INTO v (k, n) VALUES {values}"
            " ON CONFLICT (k) DO UPDATE SET n = v.n + excluded.n RETURNING k, n"
        )
        assert [tuple(r) for r in conn.execute_values(upsert, rows, chunk=2)] == rows
        again = conn.execute_values(upsert, [("k1", 10), ("k9", 9)], chunk=2)
        assert [tuple(r) for r in again] == [("k1", 11), ("k9", 9)]
        # Without RETURNING: nothing comes back, everything is written.
        assert conn.execute_values("INSERT INTO v (k, n) VALUES {values}", [("x", 1)]) == []
        assert conn.execute("SELECT COUNT(*) FROM v").fetchone()[0] == 7
    finally:
        conn.close()
