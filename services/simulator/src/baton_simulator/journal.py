"""What the simulated devices received and answered, as JSON lines: the ground truth a chaos
run (tests/chaos) compares Baton's record with.

One object per line, written and flushed as it happens, so a line is on disk whatever
happens to Baton meanwhile:

- `{"event": "received", "at", "device_id", "execution_id", "name", "deadline", "outcome"}`
  for every request a device reads: `outcome` is `run` (it acts on it), `repeat` (it had
  seen the execution, or its cancel, before: ignored) or `late` (its deadline had passed
  on arrival: ignored).
- `{"event": "answered", "at", "device_id", "execution_id", "status", "answer_id",
  "tried_at"}` for every answer the broker acknowledged (QoS 1 PUBACK) at `at`;
  `tried_at` is when the device first tried to send it (later only while the broker was
  away).

Times are UTC ISO 8601 with microseconds, from this machine's clock (the one Baton's
deadlines are on when everything runs on one machine).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["run", "repeat", "late"]


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class Journal:
    """Appends to `path`; one line per call, flushed before the call returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def received(
        self,
        device_id: str,
        execution_id: str | None,
        name: str,
        deadline: datetime | None,
        outcome: Outcome,
    ) -> None:
        self._write(
            {
                "event": "received",
                "at": stamp(now()),
                "device_id": device_id,
                "execution_id": execution_id,
                "name": name,
                "deadline": None if deadline is None else stamp(deadline),
                "outcome": outcome,
            }
        )

    def answered(
        self,
        device_id: str,
        execution_id: str | None,
        status: str,
        answer_id: str | None,
        tried_at: datetime,
    ) -> None:
        self._write(
            {
                "event": "answered",
                "at": stamp(now()),
                "device_id": device_id,
                "execution_id": execution_id,
                "status": status,
                "answer_id": answer_id,
                "tried_at": stamp(tried_at),
            }
        )

    def close(self) -> None:
        self._file.close()

    def _write(self, line: dict[str, Any]) -> None:
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()
