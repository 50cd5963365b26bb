"""Which execution each raw-mapped device is running: the one the bridge last published.

A raw-mapped answer carries no execution id (docs/wire-profiles.md), so the bridge
attributes it to the device's execution in flight. That must survive a restart, so it is
written before the request goes out, and mirrored in memory for the answer path:

- a single bridge keeps it in a small SQLite file (`bridge.sqlite` under the data
  directory), as it always has (`InFlight`);
- bridge replicas keep it in the JetStream key-value bucket BATON_BRIDGE_IN_FLIGHT, one key
  per device (`KvInFlight`): a device's slot moves to another replica when its own dies
  (baton_device_bridge.slots), and that one must attribute the answers that were in flight.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from baton_contracts.nats import BRIDGE_IN_FLIGHT_BUCKET
from baton_platform.nats import ensure_bucket

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS in_flight (
    device_id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL,
    since TEXT NOT NULL
)
"""


class InFlightRecord(Protocol):
    """What the bridge needs of the record, wherever it is kept."""

    def current(self, device_id: str) -> UUID | None: ...

    async def remember(self, device_id: str, execution_id: UUID) -> None: ...

    def close(self) -> None: ...


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


def device_key(device_id: str) -> str:
    """A device's key: its id in URL-safe base64 (a key allows fewer characters than an id)."""
    return base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=") or "_"


def device_of_key(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


async def open_in_flight_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The bucket with `replicas` copies (BATON_NATS_REPLICAS); one entry per device."""
    return await ensure_bucket(js, BRIDGE_IN_FLIGHT_BUCKET, history=1, replicas=replicas)


class KvInFlight:
    """The record in BATON_BRIDGE_IN_FLIGHT, for the devices `mine` says: read whole at
    `load` (the slot's start), then written through, one put per command of a raw-mapped
    device, before its request goes out. Only the holder of a device's slot writes its key."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket
        self._current: dict[str, UUID] = {}

    @classmethod
    async def load(cls, bucket: KeyValue, mine: Callable[[str], bool]) -> KvInFlight:
        record = cls(bucket)
        watcher = await bucket.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break  # every key's latest value has come
                try:
                    device_id = device_of_key(entry.key)
                    execution = UUID((entry.value or b"").decode())
                except ValueError:
                    log.warning("ignored an unreadable in-flight entry %r", entry.key)
                    continue
                if mine(device_id):
                    record._current[device_id] = execution
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return record

    def current(self, device_id: str) -> UUID | None:
        return self._current.get(device_id)

    async def remember(self, device_id: str, execution_id: UUID) -> None:
        """Durable when it returns (JetStream acknowledged the put)."""
        if self._current.get(device_id) == execution_id:
            return
        await self._bucket.put(device_key(device_id), str(execution_id).encode())
        self._current[device_id] = execution_id

    def close(self) -> None:
        self._current.clear()
