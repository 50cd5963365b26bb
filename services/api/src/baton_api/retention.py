"""Ephemeral executions are purged once they are older than the retention period.

A loop in the api, which has both the views (to find them) and the gateway (to delete
them through the dispatcher). Several api replicas may all sweep: deleting is idempotent,
an execution already gone is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from baton_api.service import ExecutionService

log = logging.getLogger(__name__)
# Who the retention sweep's deletions are recorded as: Baton itself, not a key.
RETENTION_PRINCIPAL = "baton:retention"

Clock = Callable[[], datetime]


class RetentionSweeper:
    def __init__(
        self,
        service: ExecutionService,
        retention_days: float,
        interval: float,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._service = service
        self._retention = timedelta(days=retention_days)
        self._interval = interval
        self._clock = clock

    async def sweep(self) -> int:
        """Purge the ephemeral executions past the retention period; returns how many."""
        cutoff = self._clock() - self._retention
        deleted = await self._service.purge(
            cutoff, "ephemeral: past its retention period", RETENTION_PRINCIPAL, ephemeral_only=True
        )
        if deleted:
            log.info("purged %d ephemeral execution(s) created before %s", deleted, cutoff)
        return deleted

    async def run(self) -> None:
        await every(self._interval, self.sweep, "retention sweep")


async def every(interval: float, sweep: Callable[[], Awaitable[object]], what: str) -> None:
    """`sweep` every `interval` seconds until cancelled; a failed one is tried again then."""
    while True:
        try:
            await sweep()
        except Exception:
            log.exception("%s failed; trying again in %.0f s", what, interval)
        await asyncio.sleep(interval)
