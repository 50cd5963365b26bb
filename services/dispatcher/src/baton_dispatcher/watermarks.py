"""The device-bridges' watermarks, as a due deadline needs them.

Each bridge writes to BATON_WATERMARKS how far it has drained its MQTT session: every
message the broker took for it before `drained_to` is stored in BATON_REPORTS
(baton_device_bridge.watermark). A deadline at D waits for every bridge whose watermark is
before D (an answer from before D may still be in the broker or in that bridge), but for
`max_hold` at most: a bridge that has confirmed nothing for that long (down, or gone for
good) no longer holds deadlines back; each deadline decided without it is logged and
counted (`baton_deadlines_unconfirmed_total`).

Reading costs one JetStream direct get per bridge plus one, at most every `refresh`
seconds; an older reading only makes a deadline wait longer, never fire early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from baton_contracts.nats import WATERMARKS_STREAM, WATERMARKS_WILDCARD, BridgeWatermark
from baton_platform.metrics import DEADLINES_UNCONFIRMED

log = logging.getLogger(__name__)

REFRESH_S = 0.1

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def holding(
    marks: Iterable[BridgeWatermark], deadline: datetime, now: datetime, max_hold: timedelta
) -> tuple[list[BridgeWatermark], list[BridgeWatermark]]:
    """(the bridges a deadline at `deadline` waits for, the ones behind it that it no longer
    waits for: silent for `max_hold` or longer)."""
    waits: list[BridgeWatermark] = []
    given_up: list[BridgeWatermark] = []
    for mark in marks:
        if mark.drained_to >= deadline:
            continue
        (waits if now - mark.drained_to < max_hold else given_up).append(mark)
    return waits, given_up


class BridgeWatermarks:
    def __init__(
        self,
        js: JetStreamContext,
        max_hold: float,
        refresh: float = REFRESH_S,
        clock: Clock = utc_now,
    ) -> None:
        self._js = js
        self.max_hold = timedelta(seconds=max_hold)
        self._refresh = refresh
        self._clock = clock
        self._marks: list[BridgeWatermark] = []
        self._read_at = -float("inf")
        self._given_up: dict[str, datetime] = {}  # bridge -> the watermark it was dropped at

    async def hold(self, deadline: datetime) -> bool:
        """Whether a deadline at `deadline` must wait for a bridge still."""
        waits, given_up = holding(await self.read(), deadline, self._clock(), self.max_hold)
        for mark in given_up:
            DEADLINES_UNCONFIRMED.labels(bridge=mark.bridge).inc()
            if self._given_up.get(mark.bridge) != mark.drained_to:
                self._given_up[mark.bridge] = mark.drained_to
                log.warning(
                    "device-bridge %s has confirmed nothing since %s (BATON_DEADLINE_MAX_HOLD="
                    "%ss): deadlines no longer wait for it; answers it still holds may come "
                    "after them",
                    mark.bridge,
                    mark.drained_to.isoformat(),
                    self.max_hold.total_seconds(),
                )
        return bool(waits)

    async def read(self) -> list[BridgeWatermark]:
        """Every bridge's latest watermark (at most `refresh` seconds old)."""
        if time.monotonic() - self._read_at >= self._refresh:
            self._marks = await self._read_all()
            self._read_at = time.monotonic()
        return self._marks

    async def _read_all(self) -> list[BridgeWatermark]:
        # One message per bridge: walk the stream. A bridge that writes meanwhile has its new
        # message further on, so none is missed; a repeat keeps the later reading.
        found: dict[str, BridgeWatermark] = {}
        seq = 1
        while True:
            try:
                msg = await self._js.get_msg(
                    WATERMARKS_STREAM, seq=seq, subject=WATERMARKS_WILDCARD, next=True, direct=True
                )
            except NotFoundError:
                break
            assert msg.seq is not None, "a direct get names the message's sequence"
            seq = msg.seq + 1
            try:
                mark = BridgeWatermark.model_validate_json(msg.data or b"")
            except ValidationError:
                log.warning("ignored an unreadable watermark on %s", msg.subject)
                continue
            found[mark.bridge] = mark
        return list(found.values())
