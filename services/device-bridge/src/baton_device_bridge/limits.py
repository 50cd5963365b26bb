"""Messages per device (`BATON_DEVICE_MESSAGE_RATE`, `BATON_DEVICE_MESSAGE_BURST`).

A device's account may publish only on its own topics, but as often as it likes. Without a
limit, one device (broken, or taken over) sending thousands of answers a second fills
BATON_REPORTS, makes its execution's stream grow without end, and takes the dispatcher's
writer from every tenant: device reports settle before new requests there, so the others'
submits would wait until they expire. Past its rate a device's messages are dropped here,
before JetStream, each counted (`rate-limited`); the log names the device once a minute.

The limit counts a message when it arrives, so it applies only to live traffic: what waited
in the broker's session while the bridge was away arrives at once and is never dropped for
that (the watermark says which messages those are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.rate_limits import RateLimits

log = logging.getLogger(__name__)

REASON = "rate-limited"
LOG_EVERY_S = 60.0  # one line per flooding device and minute, however many it sends


class DeviceLimits:
    def __init__(
        self,
        rate: float,
        burst: int,
        service: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rate` 0 turns the limit off."""
        self._buckets = RateLimits(rate, burst, clock)
        self._service = service
        self._clock = clock
        self._dropped: dict[str, int] = {}  # since the device's last log line
        self._logged_at: dict[str, float] = {}

    def admit(self, device_id: str) -> bool:
        """Whether one more message of the device may go on; a refused one is counted."""
        if self._buckets.take(device_id) is None:
            return True
        REJECTED_MESSAGES.labels(service=self._service, reason=REASON).inc()
        dropped = self._dropped.get(device_id, 0) + 1
        now = self._clock()
        last = self._logged_at.get(device_id)
        if last is not None and now - last < LOG_EVERY_S:
            self._dropped[device_id] = dropped
            return False
        self._logged_at[device_id] = now
        self._dropped[device_id] = 0
        log.warning(
            "device %s sends more than %g messages/s (burst %d): dropped %d message(s)%s",
            device_id,
            self._buckets.rate,
            self._buckets.burst,
            dropped,
            "" if last is None else f" in the last {now - last:.0f} s",
        )
        return False
