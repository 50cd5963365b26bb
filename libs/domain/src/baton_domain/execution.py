"""The CommandExecution aggregate: one event stream per execution.

Public methods check their guard and raise a domain error *before* any event exists;
the private ``@event`` methods are the events and only mutate state. Event topics are
pinned (``TOPIC``) so that renaming or moving this module never breaks stored events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from baton_domain.copies import ContainersCopied
from baton_domain.errors import AnswerLogFull, DeadlineNotReached, IllegalTransition, WrongDevice
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_domain.tenants import DEFAULT_TENANT

JSON = dict[str, Any]

_T = "baton.execution.v1"

# The most answers one execution's response log keeps. A device may answer as often as it
# likes (its account can publish only on its own topics, but without a count); each answer
# is an event of the execution's stream, read again whenever the execution is loaded and
# replayed. Past this many, an answer that changes nothing (progress on progress, anything
# after the end) is refused: a device can no longer grow one stream without end, and an
# answer that moves the status (ends it) is still recorded.
MAX_LOG_ENTRIES = 10_000

SENT_LIKE = frozenset(
    {ExecutionStatus.SENT, ExecutionStatus.ACKNOWLEDGED, ExecutionStatus.IN_PROGRESS}
)


def answer_entry(
    report_id: str, status: AnswerStatus, payload: JSON, received_at: datetime
) -> JSON:
    """One device answer as it is kept in the stream and shown in the execution's log."""
    return {
        "report_id": report_id,
        "status": status.value,
        "payload": payload,
        "received_at": received_at.isoformat(),
    }


class CommandExecution(ContainersCopied, Aggregate):
    TOPIC = f"{_T}:CommandExecution"

    class Event(Aggregate.Event):
        pass

    class Created(Aggregate.Created):
        TOPIC = f"{_T}:Created"  # required by the library for pinned topics; never emitted

    class Requested(Aggregate.Created):
        TOPIC = f"{_T}:Requested"
        # v2 added requested_name (the alias a request used), ephemeral and retry_of;
        # v3 requested_by (who asked: an API key's principal, a NATS caller's);
        # v4 tenant (whose execution it is: every read and change is scoped by it).
        class_version = 4
        device_id: str
        device_type: str
        name: str
        params: JSON
        ttl: int
        deadline: datetime
        idempotency_key: str | None
        fingerprint: str | None
        source: str
        requested_name: str
        ephemeral: bool
        retry_of: UUID | None
        requested_by: str | None
        tenant: str

        @staticmethod
        def upcast_v1_v2(state: JSON) -> None:
            state["requested_name"] = state["name"]
            state["ephemeral"] = False
            state["retry_of"] = None

        @staticmethod
        def upcast_v2_v3(state: JSON) -> None:
            state["requested_by"] = None  # stored before who asked was recorded

        @staticmethod
        def upcast_v3_v4(state: JSON) -> None:
            state["tenant"] = DEFAULT_TENANT  # stored before tenants: all were the one

    class Dispatched(Aggregate.Event):
        """Released for delivery; carries what the bridge needs to publish it."""

        TOPIC = f"{_T}:Dispatched"
        device_id: str
        device_type: str
        name: str
        params: JSON
        deadline: datetime

    class Published(Aggregate.Event):
        TOPIC = f"{_T}:Published"

    class Acknowledged(Aggregate.Event):
        TOPIC = f"{_T}:Acknowledged"
        answer: JSON

    class Progressed(Aggregate.Event):
        TOPIC = f"{_T}:Progressed"
        answer: JSON

    class Succeeded(Aggregate.Event):
        TOPIC = f"{_T}:Succeeded"
        answer: JSON

    class Failed(Aggregate.Event):
        TOPIC = f"{_T}:Failed"
        answer: JSON

    class Rejected(Aggregate.Event):
        TOPIC = f"{_T}:Rejected"
        answer: JSON

    class AnswerRecorded(Aggregate.Event):
        """An answer that changes no status (late, or out of order): kept in the log."""

        TOPIC = f"{_T}:AnswerRecorded"
        answer: JSON

    class TimedOut(Aggregate.Event):
        TOPIC = f"{_T}:TimedOut"

    class Expired(Aggregate.Event):
        TOPIC = f"{_T}:Expired"

    class Canceled(Aggregate.Event):
        TOPIC = f"{_T}:Canceled"
        class_version = 2  # v2 added `by`: who asked (None: Baton itself, or not recorded)
        reason: str
        device_id: str
        notify_device: bool
        by: str | None

        @staticmethod
        def upcast_v1_v2(state: JSON) -> None:
            state["by"] = None

    class VerificationRequired(Aggregate.Event):
        """The device's reported state must show `field == equals` by `deadline`."""

        TOPIC = f"{_T}:VerificationRequired"
        field: str
        equals: Any
        deadline: datetime

    class Verified(Aggregate.Event):
        TOPIC = f"{_T}:Verified"
        state: JSON
        at: datetime

    class VerificationFailed(Aggregate.Event):
        TOPIC = f"{_T}:VerificationFailed"
        title: str
        description: str
        at: datetime

    class VerificationCanceled(Aggregate.Event):
        TOPIC = f"{_T}:VerificationCanceled"
        at: datetime

    class Retried(Aggregate.Event):
        """A new execution was made from this one (its `retry_of` points back here)."""

        TOPIC = f"{_T}:Retried"
        class_version = 2  # v2 added `by`
        retry_id: UUID
        by: str | None

        @staticmethod
        def upcast_v1_v2(state: JSON) -> None:
            state["by"] = None

    class Deleted(Aggregate.Event):
        """Removed from every view; the stream itself keeps everything, this included."""

        TOPIC = f"{_T}:Deleted"
        class_version = 2  # v2 added `by`
        reason: str
        by: str | None

        @staticmethod
        def upcast_v1_v2(state: JSON) -> None:
            state["by"] = None

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def requested_at(cls, at: datetime, **fields: Any) -> CommandExecution:
        """A new execution whose `Requested` is stamped `at`, the moment its deadline counts
        from: created_at + ttl is then exactly its deadline. (Built as `CommandExecution(...)`
        would be, but the library stamps that event with a clock read of its own, a moment
        later.)"""
        return cls._create(cls.Requested, timestamp=at, **fields)

    @event(Requested)
    def __init__(
        self,
        id: UUID,
        device_id: str,
        device_type: str,
        name: str,
        params: JSON,
        ttl: int,
        deadline: datetime,
        idempotency_key: str | None,
        fingerprint: str | None,
        source: str,
        requested_name: str,
        ephemeral: bool,
        retry_of: UUID | None,
        requested_by: str | None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.device_id = device_id
        self.device_type = device_type
        self.name = name
        self.params = params
        self.ttl = ttl
        self.deadline = deadline
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint
        self.source = source
        self.requested_name = requested_name
        self.ephemeral = ephemeral
        self.retry_of = retry_of
        self.requested_by = requested_by
        self.tenant = tenant
        self.retries: list[UUID] = []
        self.deleted = False
        self.verification: JSON | None = None  # {status, completed_at, error}
        self.verification_rule: JSON | None = None  # {field, equals, deadline}
        self.status = ExecutionStatus.PENDING
        self.dispatched = False
        self.published = False
        # When the broker took it and when the device first answered (the events' own
        # timestamps): where the stages of baton_platform.metrics start.
        self.published_at: datetime | None = None
        self.answered_at: datetime | None = None
        self.result: JSON | None = None
        self.error: JSON | None = None
        self.log: list[JSON] = []
        self.cancel_reason: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def verifying(self) -> bool:
        return self.verification is not None and self.verification["status"] == "PENDING"

    # --- commands (guards, then one event) --------------------------------------------------

    def dispatch(self) -> None:
        if self.status is not ExecutionStatus.PENDING or self.dispatched:
            raise IllegalTransition(self._describe(), "dispatch")
        self._dispatched(
            device_id=self.device_id,
            device_type=self.device_type,
            name=self.name,
            params=self.params,
            deadline=self.deadline,
        )

    def mark_published(self) -> bool:
        """The broker took the request. Returns whether anything changed.

        Reports overtake each other (the bridge sends `published` and the device's answers
        from different tasks; a redelivery comes late), so this is a fact recorded once,
        whenever it comes: a repeat, or one after an answer already implied it, changes
        nothing; one after the end (canceled or expired while it was on its way) is
        recorded without changing the status.
        """
        if not self.dispatched:
            raise IllegalTransition(self._describe(), "mark as published")
        if self.published:
            return False
        self._published()
        return True

    def record_answer(
        self,
        device_id: str,
        report_id: str,
        status: AnswerStatus,
        payload: JSON,
        received_at: datetime,
    ) -> bool:
        """Apply one device answer. Returns whether an event was recorded.

        The same report twice is recorded once. An answer after the end, or one that
        would move the status backwards, is kept in the log without changing the status.
        """
        if device_id != self.device_id:
            raise WrongDevice(self.device_id, device_id)
        if not self.dispatched:
            raise IllegalTransition(self._describe(), "record an answer for")
        if any(entry["report_id"] == report_id for entry in self.log):
            return False
        if len(self.log) >= MAX_LOG_ENTRIES and not self._moves(status):
            raise AnswerLogFull(self.id, len(self.log))
        entry = answer_entry(report_id, status, payload, received_at)
        if not self.published:
            # The device answered, so the broker took the request: the `published` report
            # is still on its way. Published comes first in the stream whatever the order
            # of the reports (docs/statuses.md).
            self._published()
        if self.is_terminal:
            self._answer_recorded(answer=entry)
        elif status is AnswerStatus.STARTED:
            if self.status in (ExecutionStatus.PENDING, ExecutionStatus.SENT):
                self._acknowledged(answer=entry)
            else:
                self._answer_recorded(answer=entry)
        elif status is AnswerStatus.IN_PROGRESS:
            self._progressed(answer=entry)
        elif status is AnswerStatus.SUCCEEDED:
            self._succeeded(answer=entry)
        elif status is AnswerStatus.FAILED:
            self._failed(answer=entry)
        else:
            self._rejected(answer=entry)
        self._end_verification(received_at)
        return True

    def _moves(self, status: AnswerStatus) -> bool:
        """Whether an answer of `status` would change the execution's status."""
        if self.is_terminal:
            return False
        if status is AnswerStatus.STARTED:
            return self.status in (ExecutionStatus.PENDING, ExecutionStatus.SENT)
        if status is AnswerStatus.IN_PROGRESS:
            return self.status is not ExecutionStatus.IN_PROGRESS
        return True

    def reach_deadline(self, now: datetime) -> bool:
        """The deadline passed: never delivered -> EXPIRED; delivered -> TIMED_OUT.

        An execution that already ended is left as it is (returns False).
        """
        if self.is_terminal:
            return False
        if now < self.deadline:
            raise DeadlineNotReached
        if self.status is ExecutionStatus.PENDING:
            self._expired()
        else:
            self._timed_out()
        self._end_verification(now)
        return True

    def cancel(self, reason: str, by: str | None = None) -> None:
        if self.is_terminal:
            raise IllegalTransition(self._describe(), "cancel")
        # A dispatched request may already be on the device, so tell it.
        self._canceled(
            reason=reason, device_id=self.device_id, notify_device=self.dispatched, by=by
        )
        self._end_verification(self.modified_on)

    # --- verification ----------------------------------------------------------------------

    def require_verification(self, field: str, equals: Any, deadline: datetime) -> None:
        if self.verification is not None or self.is_terminal:
            raise IllegalTransition(self._describe(), "require a verification of")
        self._verification_required(field=field, equals=equals, deadline=deadline)

    def check_state(self, state: JSON, at: datetime) -> bool:
        """A state the device reported; returns whether it settled the verification."""
        rule = self.verification_rule
        if not self.verifying or rule is None or rule["field"] not in state:
            return False
        if state[rule["field"]] != rule["equals"]:
            return False  # not yet: the device may still get there before the deadline
        self._verified(state=state, at=at)
        return True

    def reach_verification_deadline(self, now: datetime) -> bool:
        if not self.verifying or self.verification_rule is None:
            return False
        rule = self.verification_rule
        if now < rule["deadline"]:
            raise DeadlineNotReached
        self._verification_failed(
            title="Not verified",
            description=f"the device did not report {rule['field']} == {rule['equals']!r} in time",
            at=now,
        )
        return True

    def _end_verification(self, at: datetime) -> None:
        """The command itself did not succeed: its verification ends with it."""
        if not self.verifying or not self.is_terminal:
            return  # still running (STARTED, IN_PROGRESS): the state may yet come
        if self.status is ExecutionStatus.CANCELED:
            self._verification_canceled(at=at)
        elif self.status is not ExecutionStatus.SUCCEEDED:
            self._verification_failed(
                title="Command not executed",
                description=f"the command ended {self.status.value}",
                at=at,
            )

    def record_retry(self, retry_id: UUID, by: str | None = None) -> None:
        """Link the execution made to retry this one; only an ended execution is retried."""
        if not self.is_terminal:
            raise IllegalTransition(self._describe(), "retry")
        self._retried(retry_id=retry_id, by=by)

    def delete(self, reason: str, by: str | None = None) -> None:
        """Remove from the views. One still running is canceled first (the device is told)."""
        if self.deleted:
            raise IllegalTransition("deleted", "delete")
        if not self.is_terminal:
            self.cancel(reason, by)
        elif self.verifying:
            self._verification_canceled(at=self.modified_on)
        self._deleted(reason=reason, by=by)

    # --- events (state changes only) --------------------------------------------------------

    @event(Dispatched)
    def _dispatched(
        self, device_id: str, device_type: str, name: str, params: JSON, deadline: datetime
    ) -> None:
        self.dispatched = True

    # An @event method given a `timestamp` parameter receives its event's timestamp, when
    # the event happens and when the aggregate is read back alike.
    @event(Published)
    def _published(self, timestamp: datetime | None = None) -> None:
        self.published = True
        self.published_at = timestamp
        if self.status is ExecutionStatus.PENDING:  # never backwards, never out of an end
            self.status = ExecutionStatus.SENT

    @event(Acknowledged)
    def _acknowledged(self, answer: JSON, timestamp: datetime | None = None) -> None:
        self._answered(answer, timestamp)
        self.status = ExecutionStatus.ACKNOWLEDGED

    @event(Progressed)
    def _progressed(self, answer: JSON, timestamp: datetime | None = None) -> None:
        self._answered(answer, timestamp)
        self.status = ExecutionStatus.IN_PROGRESS

    @event(Succeeded)
    def _succeeded(self, answer: JSON, timestamp: datetime | None = None) -> None:
        self._answered(answer, timestamp)
        self.status = ExecutionStatus.SUCCEEDED
        self.result = answer["payload"]

    @event(Failed)
    def _failed(self, answer: JSON, timestamp: datetime | None = None) -> None:
        self._answered(answer, timestamp)
        self.status = ExecutionStatus.FAILED
        self.error = answer["payload"]

    @event(Rejected)
    def _rejected(self, answer: JSON, timestamp: datetime | None = None) -> None:
        self._answered(answer, timestamp)
        self.status = ExecutionStatus.REJECTED
        self.error = answer["payload"]

    def _answered(self, answer: JSON, at: datetime | None) -> None:
        """What every answer that moves the status does: kept in the log; the first one
        marks when the device answered."""
        self.log.append(answer)
        if self.answered_at is None:
            self.answered_at = at

    @event(AnswerRecorded)
    def _answer_recorded(self, answer: JSON) -> None:
        self.log.append(answer)

    @event(TimedOut)
    def _timed_out(self) -> None:
        self.status = ExecutionStatus.TIMED_OUT
        self.error = timeout_error(self.ttl)

    @event(Expired)
    def _expired(self) -> None:
        self.status = ExecutionStatus.EXPIRED
        self.error = expiry_error(self.ttl)

    @event(Canceled)
    def _canceled(self, reason: str, device_id: str, notify_device: bool, by: str | None) -> None:
        self.status = ExecutionStatus.CANCELED
        self.cancel_reason = reason
        self.error = cancel_error(reason)

    @event(VerificationRequired)
    def _verification_required(self, field: str, equals: Any, deadline: datetime) -> None:
        self.verification_rule = {"field": field, "equals": equals, "deadline": deadline}
        self.verification = verification_state("PENDING")

    @event(Verified)
    def _verified(self, state: JSON, at: datetime) -> None:
        self.verification = verification_state("SUCCEEDED", at)

    @event(VerificationFailed)
    def _verification_failed(self, title: str, description: str, at: datetime) -> None:
        self.verification = verification_state("FAILED", at, title, description)

    @event(VerificationCanceled)
    def _verification_canceled(self, at: datetime) -> None:
        self.verification = verification_state("CANCELED", at)

    @event(Retried)
    def _retried(self, retry_id: UUID, by: str | None) -> None:
        self.retries.append(retry_id)

    @event(Deleted)
    def _deleted(self, reason: str, by: str | None) -> None:
        self.deleted = True

    def _describe(self) -> str:
        if self.status is ExecutionStatus.PENDING and not self.dispatched:
            return "PENDING (not dispatched)"
        return self.status.value


# The error objects of Baton's own endings are built in one place: the aggregate and the
# view projection must agree on them byte for byte.
def timeout_error(ttl: int) -> JSON:
    return {"code": "timed_out", "message": f"no final answer from the device within {ttl} s"}


def expiry_error(ttl: int) -> JSON:
    return {"code": "expired", "message": f"not delivered to the device within {ttl} s"}


def cancel_error(reason: str) -> JSON:
    return {"code": "canceled", "message": reason}


def verification_state(
    status: str,
    at: datetime | str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> JSON:
    """The execution's verification as every reader shows it (Traxes' shape)."""
    error = {"title": title, "description": description} if title is not None else None
    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    # One text form, whether made from the aggregate or from stored event data (views).
    completed = moment.astimezone(UTC).isoformat(timespec="microseconds") if moment else None
    return {"status": status, "completed_at": completed, "error": error}
