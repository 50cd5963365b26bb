"""Whether a device's reports are all applied: what a deadline waits for.

A device answer the bridge stored in BATON_REPORTS before a deadline must win over that
deadline, even when the dispatcher that held it was killed and it comes back later (the
record would otherwise say EXPIRED or TIMED_OUT for a command the device carried out). The
reports stream has work-queue retention: a report leaves it when the dispatcher acknowledges
it, after its effect is stored. So a message still in the stream on the device's subject is
a report not yet applied, and the deadline waits for it.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from baton_contracts.nats import REPORTS_STREAM, report_subject


class ReportsBacklog:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def holds(self, device_id: str) -> bool:
        """Whether a report of `device_id` is stored and not yet applied (one lookup)."""
        try:
            await self._js.get_msg(
                REPORTS_STREAM, seq=1, subject=report_subject(device_id), next=True
            )
        except NotFoundError:
            return False
        return True
