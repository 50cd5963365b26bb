"""A token bucket per key: `rate` a second on average, `burst` at once.

The api counts each API key's requests (`BATON_RATE_LIMIT`, `BATON_RATE_BURST`: one more is
refused with `429 rate-limited` and a `Retry-After` of the seconds until its next token);
the device-bridge counts each device's messages (`BATON_DEVICE_MESSAGE_RATE`,
`BATON_DEVICE_MESSAGE_BURST`: one more is dropped and counted). Pure and in memory: each
process counts for itself (with N replicas a key, or a device, gets up to N times the rate).
O(1) a call; one small entry per key that was used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Float time: a token due at t must count as there at t, not a rounding error later.
_SLACK = 1e-9


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimits:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`rate` 0 turns the limit off."""
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __deepcopy__(self, _memo: dict[int, object]) -> RateLimits:
        # Litestar copies a middleware's arguments for every router it sits on; a key's
        # bucket must be the same on Baton's routes and every dialect's.
        return self

    def take(self, key: str) -> float | None:
        """Spend one of the key's tokens: None when it had one, else the seconds until it
        will (what asked is refused and spends nothing)."""
        if self.rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0 - _SLACK:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return None
        return (1.0 - bucket.tokens) / self.rate
