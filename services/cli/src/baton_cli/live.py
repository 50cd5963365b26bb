"""Following the API's Server-Sent Events (`baton tail`, `baton events --follow`): read
the stream, and after a dropped connection connect again with `Last-Event-ID`, so no event
is missed and none is printed twice (docs/api.md, "Live updates")."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "CANCELED"})
# Waits between two tries to connect again: doubling up to the last (seconds).
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Event:
    id: str | None
    event: str
    data: dict[str, Any]


@dataclass
class _Frame:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)


def parse(lines: Iterator[str]) -> Iterator[Event]:
    """The events of an SSE stream's lines (comments and retry hints are skipped)."""
    frame = _Frame()
    for line in lines:
        if line == "":
            if frame.data:
                yield Event(frame.id, frame.event, json.loads("\n".join(frame.data)))
            frame = _Frame()
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "id":
            frame.id = value
        elif key == "event":
            frame.event = value
        elif key == "data":
            frame.data.append(value)


class StreamRefused(Exception):
    """The API answered the stream with an error (a problem document): no use retrying."""

    def __init__(self, status: int, reason: str, payload: Any) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.payload = payload


def follow(
    url: str,
    key: str,
    params: dict[str, str] | None = None,
    last_event_id: str | None = None,
    ends: bool = False,
    reconnect_for: float = 60.0,
) -> Iterator[Event]:
    """Every event of the stream at `url`, across reconnections (each resumes after the
    last id seen). `ends`: the stream ends by itself after the event that ends its
    execution (one execution's); any other end is a drop, as every end of a feed is.
    Gives up after `reconnect_for` seconds without a connection (httpx.HTTPError)."""
    failures = 0
    down_since: float | None = None
    status = ""
    while True:
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            timeout = httpx.Timeout(10.0, read=None)
            with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as r:
                if r.is_error:
                    r.read()
                    try:
                        payload = r.json()
                    except ValueError:
                        payload = None
                    raise StreamRefused(r.status_code, r.reason_phrase, payload)
                failures, down_since = 0, None
                for event in parse(r.iter_lines()):
                    if event.id is not None:
                        last_event_id = event.id
                    status = str(event.data.get("status", ""))
                    yield event
            if ends and status in TERMINAL:
                return
        except httpx.HTTPError:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > reconnect_for:
                raise
        time.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
        failures += 1
