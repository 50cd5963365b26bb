"""Whether a device's answers from before a deadline are all applied: what a deadline waits for.

A device answer that came before a deadline must win over that deadline, wherever it was when
the deadline passed (the record would otherwise say EXPIRED or TIMED_OUT for a command the
device carried out). On its way it is, in turn:
- in the MQTT broker or the device-bridge (the bridge down, restarting or slow): the bridges'
  watermarks say how far each has stored what the broker took for it
  (baton_dispatcher.watermarks); a deadline waits until every bridge is past it;
- in BATON_REPORTS, stored and not yet applied (held by a dispatcher that was killed, or
  just queued): the stream has work-queue retention, a report leaves it when the dispatcher
  acknowledges it, after its effect is stored. So a message still in the stream on the
  device's subject is a report not yet applied, and the deadline waits for it; unless its
  partition's consumer has acknowledged it already (its ack floor past it): a report applied
  whose removal the stream lost (`_acknowledged`).
The watermarks are read first: a report a bridge stored before its watermark passed the
deadline is then in the stream, or already applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from baton_contracts.nats import REPORTS_STREAM, partition_of, report_subject
from baton_dispatcher.watermarks import BridgeWatermarks
from baton_domain.execution import CommandExecution
from baton_platform.nats_access import reports_durable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    """A due deadline as the backlog sees it: whose reports it waits for, and up to when
    (`at` None: it can change nothing any more, the execution or its verification ended)."""

    device_id: str
    at: datetime | None


def due_of(execution: CommandExecution, kind: str) -> Due:
    if kind == "verification":
        rule = execution.verification_rule
        at = rule["deadline"] if execution.verifying and rule is not None else None
    else:
        at = None if execution.is_terminal else execution.deadline
    return Due(execution.device_id, at)


class ReportsBacklog:
    def __init__(self, js: JetStreamContext, max_hold: float) -> None:
        self._js = js
        self.watermarks = BridgeWatermarks(js, max_hold)
        self._orphans: set[int] = set()  # acknowledged reports still stored, already said

    async def holds(self, device_id: str, deadline: datetime) -> bool:
        """Whether an answer of `device_id` from before `deadline` may not be applied yet."""
        return await self.held_by(device_id, deadline) is not None

    async def held_by(self, device_id: str, deadline: datetime) -> str | None:
        """What a deadline at `deadline` waits for (None: nothing, it may apply): a bridge's
        watermark, or the first of the device's unapplied reports it waits for."""
        if await self.watermarks.hold(deadline):
            return "a device-bridge's watermark not yet past the deadline"
        # Only the device's unapplied reports that the broker may have taken before the
        # deadline hold it: one taken after it (a late answer, a reconnect's presence) must
        # not carry the device's deadlines past their time. When the broker took it is known
        # from below only (`taken_after`, the bridge's watermark when it arrived): the
        # bridge's read time is later than the broker's, by tenths of a second on a loaded
        # machine, and an answer taken before the deadline but read after it lost to it.
        # But a bridge that read a report `max_hold` or more after its watermark had confirmed
        # nothing for that long (its watermark not written, its rounds failing, a request
        # held): the watermarks no longer hold deadlines for it, and its stale watermark,
        # stamped on everything it reads, must not hold them instead, for ever for a device
        # that keeps reporting. Such a report is weighed by when it was read.
        max_hold = self.watermarks.max_hold
        floor: int | None = None  # the partition consumer's ack floor, once asked
        seq = 1
        for _ in range(MAX_LOOKED_AT):
            try:
                msg = await self._js.get_msg(
                    REPORTS_STREAM, seq=seq, subject=report_subject(device_id), next=True
                )
            except NotFoundError:
                return None
            where = f"{REPORTS_STREAM} seq {msg.seq}"
            try:
                taken = _Received.model_validate_json(msg.data or b"").taken_from(max_hold)
            except ValidationError:
                # not readable here: the dispatcher dead-letters it shortly
                return f"an unreadable report ({where})"
            if taken <= deadline:
                if msg.seq is not None and (floor is None or msg.seq > floor):
                    # Asked again only past the floor known: a floor only moves on, so one
                    # already behind it is acknowledged whatever a fresh answer says.
                    floor = await self._ack_floor(device_id)
                if msg.seq is None or floor is None or msg.seq > floor:
                    return f"a report taken from {taken.isoformat()} not yet applied ({where})"
                self._orphan(device_id, msg.seq, floor)
            seq = (msg.seq or seq) + 1
        # a long backlog of the device: wait for it rather than read it all
        return f"more than {MAX_LOOKED_AT} reports of the device not yet applied"

    async def _ack_floor(self, device_id: str) -> int | None:
        """The ack floor of the consumer of the device's partition (None: no consumer yet,
        nothing acknowledged). A stored report at or behind it was acknowledged, so applied:
        only its removal from the work-queue stream was lost. Seen after a nats-server
        restart in a chaos run: an answer applied (SUCCEEDED) and acknowledged, the
        consumer's ack floor thousands past it, the message still in BATON_REPORTS, and
        every later deadline of its device held for ever. Asked afresh by each look: a
        consumer made anew (deleted by an operator) starts its floor over."""
        durable = reports_durable(partition_of(device_id))
        try:
            info = await self._js.consumer_info(REPORTS_STREAM, durable)
        except NotFoundError:
            return None
        return info.ack_floor.stream_seq if info.ack_floor is not None else None

    def _orphan(self, device_id: str, seq: int, floor: int) -> None:
        """Say, once, that an acknowledged report is still stored and holds nothing."""
        if seq in self._orphans:
            return
        if len(self._orphans) >= ORPHANS_REMEMBERED:
            self._orphans.clear()
        self._orphans.add(seq)
        log.warning(
            "%s seq %d (%s) was acknowledged by %s (ack floor %d) but is still stored: "
            "deadlines do not wait for it",
            REPORTS_STREAM,
            seq,
            device_id,
            reports_durable(partition_of(device_id)),
            floor,
        )


# How many of a device's unapplied reports a deadline looks at before it simply waits.
MAX_LOOKED_AT = 20
ORPHANS_REMEMBERED = 10_000


class _Received(BaseModel):
    """The fields of a report a deadline reads (every report kind carries them)."""

    received_at: datetime
    taken_after: datetime | None = None

    def taken_from(self, max_hold: timedelta) -> datetime:
        """The earliest the broker may have taken the report, as far as a deadline goes:
        `taken_after` when the bridge knew it and had confirmed something within `max_hold`
        of reading the report, else (a bridge before its first watermark, or one the
        watermarks had given up on) the time it was read."""
        after = self.taken_after
        if after is None or self.received_at - after >= max_hold:
            return self.received_at
        return after
