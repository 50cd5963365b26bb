"""The canonical vocabulary of an execution's lifecycle and of device answers."""

from __future__ import annotations

from enum import StrEnum


class ExecutionStatus(StrEnum):
    PENDING = "PENDING"  # stored, not yet taken by the broker
    SENT = "SENT"  # the broker took it
    ACKNOWLEDGED = "ACKNOWLEDGED"  # the device said it started
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"  # sent, but no final answer before the deadline
    EXPIRED = "EXPIRED"  # never delivered before the deadline
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.REJECTED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.EXPIRED,
        ExecutionStatus.CANCELED,
    }
)


class AnswerStatus(StrEnum):
    """What a device may say about an execution (the MQTT contract's `status`)."""

    STARTED = "STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"

    @property
    def is_final(self) -> bool:
        return self in {AnswerStatus.SUCCEEDED, AnswerStatus.FAILED, AnswerStatus.REJECTED}
