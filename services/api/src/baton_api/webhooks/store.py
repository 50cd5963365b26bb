"""The webhooks' own database: `webhooks.sqlite`, or the schema `webhooks` of
BATON_DATABASE_URL (docs/architecture.md, "Webhooks").

Not in the views: the views are disposable (a `baton replay` or a new schema version starts
them over), and a webhook, its secret and its delivery log are not made from events.

Deliveries are made from the change feed (`execution_changes` of the views): `enqueue`
records one delivery per matching webhook and change, and the feed position it reached, in
one transaction, so each change is enqueued once per webhook whatever crashes.
"""

from __future__ import annotations

import builtins
import json
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from baton_platform.sql import Connection, Database, Row
from baton_views import Change

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    device_id  TEXT,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_by_tenant ON webhooks (tenant, created_at);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          TEXT PRIMARY KEY,
    webhook_id  TEXT NOT NULL,
    position    INTEGER NOT NULL,
    event       TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    next_at     BIGINT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (webhook_id, position)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_at);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE IF NOT EXISTS webhook_position (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""
WRITE_LOCK = "webhooks"
FEED = "changes"

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass(frozen=True)
class Webhook:
    id: UUID
    tenant: str
    url: str
    events: tuple[str, ...]  # statuses and/or event kinds; "*": every change
    device_id: str | None
    secret: str
    created_at: str
    created_by: str

    def wants(self, change: Change) -> bool:
        if change.tenant != self.tenant:
            return False
        if self.device_id is not None and change.device_id != self.device_id:
            return False
        return "*" in self.events or change.status in self.events or change.kind in self.events


@dataclass(frozen=True)
class Attempt:
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class Delivery:
    id: UUID
    webhook_id: UUID
    position: int
    event: str
    execution_id: UUID
    body: str
    state: str  # pending, delivered, dead
    attempts: int
    next_at: int  # ms since the epoch: when the next attempt is due (pending)
    created_at: str
    updated_at: str
    log: tuple[Attempt, ...] = ()


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class WebhookStore:
    """Synchronous, like the views: async callers use a worker thread."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._conn = database.connect()
        self._lock = threading.Lock()
        with self._lock:
            if self._conn.dialect == "sqlite":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- webhooks ---------------------------------------------------------------------

    def create(
        self, tenant: str, url: str, events: Sequence[str], device_id: str | None, by: str
    ) -> Webhook:
        hook = Webhook(uuid4(), tenant, url, tuple(events), device_id, new_secret(), now_text(), by)
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO webhooks (id, tenant, url, events, device_id, secret, created_at,"
                " created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(hook.id),
                    tenant,
                    url,
                    json.dumps(list(hook.events)),
                    device_id,
                    hook.secret,
                    hook.created_at,
                    by,
                ),
            )
        )
        return hook

    def get(self, webhook_id: UUID, tenant: str | None) -> Webhook | None:
        hooks = self._webhooks("WHERE id = ?", (str(webhook_id),))
        found = hooks[0] if hooks else None
        return found if found is not None and tenant in (None, found.tenant) else None

    def list(self, tenant: str) -> builtins.list[Webhook]:
        return self._webhooks("WHERE tenant = ? ORDER BY created_at, id", (tenant,))

    def delete(self, webhook_id: UUID, tenant: str) -> bool:
        """The webhook and its deliveries; False if it is not `tenant`'s."""

        def remove(conn: Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM webhooks WHERE id = ? AND tenant = ?", (str(webhook_id), tenant)
            ).rowcount
            if not gone:
                return False
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (str(webhook_id),),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (str(webhook_id),))
            return True

        return self._write(remove)

    def counts(self, webhook_id: UUID) -> dict[str, int]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT state, COUNT(*) AS n FROM webhook_deliveries WHERE webhook_id = ?"
                " GROUP BY state",
                (str(webhook_id),),
            ).fetchall()
        )
        found = {row["state"]: int(row["n"]) for row in rows}
        return {state: found.get(state, 0) for state in (PENDING, DELIVERED, DEAD)}

    # --- deliveries -------------------------------------------------------------------

    def position(self) -> int | None:
        """How far in the change feed deliveries are enqueued (None: never started)."""
        row = self._read(
            lambda conn: conn.execute(
                "SELECT position FROM webhook_position WHERE name = ?", (FEED,)
            ).fetchone()
        )
        return None if row is None else int(row["position"])

    def any_webhooks(self) -> bool:
        """Whether there is a webhook, in any tenant."""
        row = self._read(lambda conn: conn.execute("SELECT 1 FROM webhooks LIMIT 1").fetchone())
        return row is not None

    def skip_to(self, position: int) -> None:
        """The feed position reached, with nothing enqueued (there is no one to deliver to)."""
        self._write(lambda conn: self._write_position(conn, position))

    def enqueue(
        self, changes: Sequence[Change], position: int, body: Callable[[Webhook, Change, UUID], str]
    ) -> int:
        """One delivery per webhook that wants each change, and the feed position reached,
        in one transaction; returns how many were enqueued."""
        hooks = self._webhooks("", ())
        made = now_text()
        due = int(datetime.now(UTC).timestamp() * 1000)
        rows = []
        for change in changes:
            for hook in hooks:
                if hook.wants(change):
                    delivery_id = uuid4()
                    rows.append((
                        str(delivery_id), str(hook.id), change.position, change.kind,
                        str(change.execution_id), body(hook, change, delivery_id), PENDING, 0,
                        due, made, made,
                    ))  # fmt: skip

        def write(conn: Connection) -> int:
            # Only for the webhooks there still are (one may have been deleted meanwhile).
            kept = {str(row["id"]) for row in conn.execute("SELECT id FROM webhooks")}
            rows[:] = [row for row in rows if row[1] in kept]
            conn.executemany(
                "INSERT INTO webhook_deliveries (id, webhook_id, position, event, execution_id,"
                " body, state, attempts, next_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (webhook_id, position) DO NOTHING",
                rows,
            )
            self._write_position(conn, position)
            return len(rows)

        return self._write(write)

    @staticmethod
    def _write_position(conn: Connection, position: int) -> None:
        conn.execute(
            "INSERT INTO webhook_position (name, position) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (FEED, position),
        )

    def due(self, now_ms: int, limit: int) -> builtins.list[tuple[Delivery, Webhook]]:
        """Pending deliveries due by `now_ms`, oldest first, with their webhooks."""
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"
                " WHERE state = ? AND next_at <= ? ORDER BY next_at, position LIMIT ?",
                (PENDING, now_ms, limit),
            ).fetchall()
        )
        found = []
        for row in rows:
            delivery = _delivery(row)
            hook = self.get(delivery.webhook_id, None)
            if hook is not None:
                found.append((delivery, hook))
        return found

    def next_due(self) -> int | None:
        row = self._read(
            lambda conn: conn.execute(
                "SELECT MIN(next_at) AS n FROM webhook_deliveries WHERE state = ?", (PENDING,)
            ).fetchone()
        )
        return None if row is None or row["n"] is None else int(row["n"])

    def attempted(self, delivery: Delivery, attempt: Attempt, state: str, next_at: int) -> None:
        """Record an attempt and what follows: delivered, dead, or pending until `next_at`."""

        def write(conn: Connection) -> None:
            # Of a delivery still pending only (not one deleted with its webhook meanwhile).
            conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error,"
                " duration_ms) SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM"
                " webhook_deliveries WHERE id = ? AND state = ?) ON CONFLICT DO NOTHING",
                (
                    str(delivery.id),
                    attempt.attempt,
                    attempt.at,
                    attempt.status_code,
                    attempt.error,
                    attempt.duration_ms,
                    str(delivery.id),
                    PENDING,
                ),
            )
            conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ?,"
                " updated_at = ? WHERE id = ? AND state = ?",
                (state, attempt.attempt, next_at, attempt.at, str(delivery.id), PENDING),
            )

        self._write(write)

    def prune(self, before: str, limit: int = 1000) -> int:
        """Delete up to `limit` deliveries that ended (delivered or dead) before `before`
        (UTC text, as `now_text`), with their attempts; returns how many: call again while
        it returns `limit`. Pending ones stay, however old."""

        def write(conn: Connection) -> int:
            ids = [
                row["id"]
                for row in conn.execute(
                    "SELECT id FROM webhook_deliveries WHERE state IN (?, ?) AND updated_at < ?"
                    " LIMIT ?",
                    (DELIVERED, DEAD, before, limit),
                ).fetchall()
            ]
            if ids:
                marks = ", ".join("?" for _ in ids)
                conn.execute(f"DELETE FROM webhook_attempts WHERE delivery_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM webhook_deliveries WHERE id IN ({marks})", ids)
            return len(ids)

        return self._write(write)

    def deliveries(
        self, webhook_id: UUID, state: str | None, limit: int
    ) -> builtins.list[Delivery]:
        """The webhook's deliveries, newest first, each with its attempts."""
        where, params = "WHERE webhook_id = ?", [str(webhook_id)]
        if state is not None:
            where += " AND state = ?"
            params.append(state)

        def read(conn: Connection) -> builtins.list[Delivery]:
            rows = conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries {where}"
                " ORDER BY position DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            found = []
            for row in rows:
                attempts = conn.execute(
                    "SELECT attempt, at, status_code, error, duration_ms FROM webhook_attempts"
                    " WHERE delivery_id = ? ORDER BY attempt",
                    (row["id"],),
                ).fetchall()
                log = tuple(
                    Attempt(
                        int(a["attempt"]),
                        a["at"],
                        a["status_code"],
                        a["error"],
                        int(a["duration_ms"]),
                    )
                    for a in attempts
                )
                found.append(_delivery(row, log))
            return found

        return self._read(read)

    # --- plumbing ---------------------------------------------------------------------

    def _webhooks(self, where: str, params: Sequence[Any]) -> builtins.list[Webhook]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT id, tenant, url, events, device_id, secret, created_at, created_by"
                f" FROM webhooks {where}",
                params,
            ).fetchall()
        )
        return [
            Webhook(
                UUID(r["id"]),
                r["tenant"],
                r["url"],
                tuple(json.loads(r["events"])),
                r["device_id"],
                r["secret"],
                r["created_at"],
                r["created_by"],
            )
            for r in rows
        ]

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self._lock:
            return query(self._conn)

    def _write(self, change: Callable[[Connection], T]) -> T:
        with self._lock, self._conn.transaction(WRITE_LOCK) as conn:
            return change(conn)


DELIVERY_COLUMNS = (
    "id, webhook_id, position, event, execution_id, body, state, attempts, next_at,"
    " created_at, updated_at"
)


def _delivery(row: Row, log: tuple[Attempt, ...] = ()) -> Delivery:
    return Delivery(
        UUID(row["id"]), UUID(row["webhook_id"]), int(row["position"]), row["event"],
        UUID(row["execution_id"]), row["body"], row["state"], int(row["attempts"]),
        int(row["next_at"]), row["created_at"], row["updated_at"], log,
    )  # fmt: skip
