"""Which execution each raw-mapped device is running: the one the bridge last published.

A raw-mapped answer carries no execution id (docs/wire-profiles.md), so the bridge
attributes it to the device's execution in flight. That must survive a restart, so it is
kept in a small SQLite file (`bridge.sqlite` under the data directory), written before the
request goes out, and mirrored in memory for the answer path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

_SCHEMA = """
CREATE TABLE IF NOT EXISTS in_flight (
    device_id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL,
    since TEXT NOT NULL
)
"""


class InFlight:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(_SCHEMA)
        rows = self._db.execute("SELECT device_id, execution_id FROM in_flight").fetchall()
        self._current = {device: UUID(execution) for device, execution in rows}

    def current(self, device_id: str) -> UUID | None:
        return self._current.get(device_id)

    async def remember(self, device_id: str, execution_id: UUID) -> None:
        """Durable when it returns."""
        if self._current.get(device_id) == execution_id:
            return
        await asyncio.to_thread(self._write, device_id, execution_id)
        self._current[device_id] = execution_id

    def _write(self, device_id: str, execution_id: UUID) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO in_flight (device_id, execution_id, since) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET execution_id = excluded.execution_id, "
                "since = excluded.since",
                (device_id, str(execution_id), datetime.now(UTC).isoformat()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
