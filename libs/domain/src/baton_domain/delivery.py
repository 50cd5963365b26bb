"""The DeviceQueue aggregate: one stream per device, deciding when its commands go out.

It holds what the delivery policies need and nothing else: whether the device is online
(as last reported; unknown counts as online), the executions waiting for it (not yet
dispatched, in order), those dispatched and not yet ended, and when each command last
ran (cooldown). It is saved in the same transaction as the executions it admits or
releases, so the two never disagree, whatever crashes in between.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from baton_domain.catalog import DeliveryPolicy
from baton_domain.copies import ContainersCopied
from baton_domain.errors import CooldownActive, QueueFull

_T = "baton.device-queue.v1"
QUEUE_NAMESPACE = UUID("0b6c1f0e-5a4e-4c77-8d53-1f1f3c9e2d41")


@lru_cache(maxsize=65536)  # asked several times per command; a SHA-1 each time
def queue_id(device_id: str) -> UUID:
    return uuid5(QUEUE_NAMESPACE, device_id)


class DeviceQueue(ContainersCopied, Aggregate):
    TOPIC = f"{_T}:DeviceQueue"
    # When presence last changed (the report's time). A class default: snapshots taken
    # before it existed restore without it.
    presence_at: datetime | None = None

    class Created(Aggregate.Created):
        TOPIC = f"{_T}:Created"  # required by the library for pinned topics; never emitted

    class Opened(Aggregate.Created):
        """Event names differ from the execution's: both share the notification log."""

        TOPIC = f"{_T}:Opened"
        device_id: str

    class Admitted(Aggregate.Event):
        """A new execution: sent at once (`dispatched`) or waiting its turn."""

        TOPIC = f"{_T}:Admitted"
        class_version = 3  # v2: verify; v3: exclusive
        execution_id: UUID
        name: str
        at: datetime
        dispatched: bool
        verify: bool
        exclusive: bool  # delivered one at a time: only to an idle device

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["verify"] = False

        @staticmethod
        def upcast_v2_v3(state: dict[str, object]) -> None:
            state["exclusive"] = False

    class Released(Aggregate.Event):
        TOPIC = f"{_T}:Released"
        execution_id: UUID

    class Finished(Aggregate.Event):
        TOPIC = f"{_T}:Finished"
        execution_id: UUID

    class VerificationDone(Aggregate.Event):
        """The execution's verification ended: device states no longer concern it."""

        TOPIC = f"{_T}:VerificationDone"
        execution_id: UUID

    class PresenceChanged(Aggregate.Event):
        TOPIC = f"{_T}:PresenceChanged"
        online: bool
        at: datetime

    @classmethod
    def create_id(cls, device_id: str) -> UUID:
        return queue_id(device_id)

    @event(Opened)
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.online: bool | None = None  # never reported: treated as online
        self.waiting: list[UUID] = []
        self.in_flight: list[UUID] = []
        self.last_run: dict[str, datetime] = {}
        self.verifying: list[UUID] = []  # executions waiting for a device state
        self.exclusive: list[UUID] = []  # waiting ones that go out only to an idle device

    # --- queries ---------------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return self.online is not False

    def may_send_now(self, policy: DeliveryPolicy) -> bool:
        """Whether a new execution may go out at once under `policy`."""
        if not self.reachable:
            return False
        return policy == "parallel" or not (self.in_flight or self.waiting)

    def holds(self, execution_id: UUID) -> bool:
        return execution_id in self.waiting or execution_id in self.in_flight

    # --- commands --------------------------------------------------------------------------

    def admit(
        self,
        execution_id: UUID,
        name: str,
        at: datetime,
        policy: DeliveryPolicy,
        cooldown: int,
        ignore_cooldown: bool,
        max_waiting: int,
        verify: bool = False,
    ) -> bool:
        """Take a new execution; returns whether it goes out now (else it waits).

        Refused, before any event, inside the command's cooldown (unless ignored) or when
        the device already has `max_waiting` executions waiting.
        """
        last = self.last_run.get(name)
        if cooldown and not ignore_cooldown and last is not None:
            ready_at = last + timedelta(seconds=cooldown)
            if at < ready_at:
                raise CooldownActive(self.device_id, name, (ready_at - at).total_seconds())
        send_now = self.may_send_now(policy)
        if not send_now and len(self.waiting) >= max_waiting:
            raise QueueFull(self.device_id, max_waiting, online=self.reachable)
        self._admitted(
            execution_id=execution_id,
            name=name,
            at=at,
            dispatched=send_now,
            verify=verify,
            exclusive=policy == "one-at-a-time",
        )
        return send_now

    def stop_verifying(self, execution_id: UUID) -> bool:
        if execution_id not in self.verifying:
            return False
        self._verification_done(execution_id=execution_id)
        return True

    def finish(self, execution_id: UUID) -> bool:
        """The execution ended; returns whether this queue held it."""
        if not self.holds(execution_id):
            return False
        self._finished(execution_id=execution_id)
        return True

    def set_presence(self, online: bool, at: datetime) -> bool:
        if self.online is online:
            return False
        self._presence_changed(online=online, at=at)
        return True

    def to_release(self) -> list[UUID]:
        """The waiting executions that may go out now, in order (not yet released).

        In arrival order: parallel ones go; a one-at-a-time one goes only to an idle device
        (nothing in flight, nothing released before it now), and what follows it waits."""
        if not self.reachable:
            return []
        released: list[UUID] = []
        for execution_id in self.waiting:
            if execution_id in self.exclusive and (self.in_flight or released):
                break
            released.append(execution_id)
        return released

    def release(self, execution_id: UUID) -> None:
        if execution_id not in self.waiting:
            raise ValueError(f"{execution_id} is not waiting on {self.device_id}")
        self._released(execution_id=execution_id)

    # --- events ----------------------------------------------------------------------------

    @event(Admitted)
    def _admitted(
        self,
        execution_id: UUID,
        name: str,
        at: datetime,
        dispatched: bool,
        verify: bool,
        exclusive: bool,
    ) -> None:
        self.last_run[name] = at
        (self.in_flight if dispatched else self.waiting).append(execution_id)
        if exclusive and not dispatched:
            self.exclusive.append(execution_id)
        if verify:
            self.verifying.append(execution_id)

    @event(VerificationDone)
    def _verification_done(self, execution_id: UUID) -> None:
        self.verifying.remove(execution_id)

    @event(Released)
    def _released(self, execution_id: UUID) -> None:
        self.waiting.remove(execution_id)
        self.in_flight.append(execution_id)
        if execution_id in self.exclusive:
            self.exclusive.remove(execution_id)

    @event(Finished)
    def _finished(self, execution_id: UUID) -> None:
        for held in (self.waiting, self.in_flight, self.exclusive):
            if execution_id in held:
                held.remove(execution_id)

    @event(PresenceChanged)
    def _presence_changed(self, online: bool, at: datetime) -> None:
        self.online = online
        self.presence_at = at
