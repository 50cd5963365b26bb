"""Which requests the broker may have taken: what a late request and the watermark need.

A request goes out in steps: the MQTT PUBLISH, the broker's PUBACK, the `published` report
stored in JetStream, then the lifecycle event acknowledged. A bridge can fail between the
PUBACK and the report: the connection lost before the PUBACK came back (the broker may still
have taken the message), JetStream not taking the report, or the process killed. The event
comes back (a negative acknowledgement, or the next process's reset at start), and by then
its deadline may have passed: `plan` calls it `Late` and sends nothing. Skipping it silently
would let the deadline record EXPIRED ("never delivered") for a request the device may be
carrying out. So:

- a late request the broker may have taken is reported `published` all the same, at the
  earliest time it could have been taken: the execution is SENT, and its deadline ends it
  TIMED_OUT (no answer in time, true either way), never EXPIRED;
- the broker "may have taken" it when this process sent it on a connection (not merely tried
  while disconnected: nothing was written then), or when an earlier process had it (it comes
  delivered more than once, and this process has not seen it before);
- until the event is acknowledged, across redeliveries, the bridge's watermark stays at the
  time the request may have been taken, so its deadline waits for that report
  (baton_device_bridge.watermark).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class Holds(Protocol):
    """Where a handover holds the watermark back (baton_device_bridge.watermark.Watermark)."""

    def hold(self, key: object, since: datetime) -> None: ...

    def release(self, key: object) -> None: ...


class NoHolds:
    def hold(self, key: object, since: datetime) -> None:
        pass

    def release(self, key: object) -> None:
        pass


@dataclass
class Attempt:
    # The earliest the broker may have taken the request.
    since: datetime
    maybe_taken: bool


class Handovers:
    """The lifecycle events this process is handling, by stream sequence, until acknowledged."""

    def __init__(self, holds: Holds) -> None:
        self._holds = holds
        self._attempts: dict[int, Attempt] = {}

    def begin(self, seq: int, earlier: bool, stored_at: datetime, now: datetime) -> Attempt:
        """The event's attempt, the first one in this process from `now` on. `earlier`: it
        was delivered before; first seen here, that was to an earlier process, which may
        have sent it any time since it was stored."""
        attempt = self._attempts.get(seq)
        if attempt is None:
            attempt = Attempt(since=stored_at if earlier else now, maybe_taken=earlier)
            self._attempts[seq] = attempt
            self._holds.hold(seq, attempt.since)
        return attempt

    def done(self, seq: int) -> None:
        """The event is acknowledged: nothing about it is left to report."""
        if self._attempts.pop(seq, None) is not None:
            self._holds.release(seq)

    def __len__(self) -> int:
        return len(self._attempts)
