"""An execution's timeline, read from its stored events: who asked, when it was sent, each
device answer, its deadline, cancel, retries and verification, in the order they happened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class Step:
    at: datetime
    what: str
    detail: str = ""
    link: UUID | None = None  # another execution this step names (a retry)


def _answer(event: Any) -> str:
    answer = getattr(event, "answer", None)
    if isinstance(answer, dict):
        status = answer.get("status", "")
        return f"device answered {status}".strip()
    return "device answered"


def steps_of(events: list[Any]) -> list[Step]:
    steps: list[Step] = []
    for event in events:
        kind = type(event).__name__
        at: datetime = event.timestamp
        if kind == "Requested":
            who = event.requested_by or "unknown"
            detail = f"by {who} via {event.source}; deadline {event.deadline:%Y-%m-%d %H:%M:%S} UTC"
            if event.retry_of is not None:
                steps.append(Step(at, "requested as a retry", detail, event.retry_of))
            else:
                steps.append(Step(at, "requested", detail))
        elif kind == "Dispatched":
            steps.append(Step(at, "released to be sent"))
        elif kind == "Published":
            steps.append(Step(at, "sent to the device"))
        elif kind in ("Acknowledged", "Progressed", "Succeeded", "Failed", "Rejected"):
            steps.append(Step(at, _answer(event), kind.lower()))
        elif kind == "AnswerRecorded":
            steps.append(Step(at, _answer(event), "after it ended: recorded only"))
        elif kind == "TimedOut":
            steps.append(Step(at, "deadline passed", "no final answer: timed out"))
        elif kind == "Expired":
            steps.append(Step(at, "deadline passed", "never delivered: expired"))
        elif kind == "Canceled":
            steps.append(Step(at, "canceled", f"{event.reason} (by {event.by or 'unknown'})"))
        elif kind == "Retried":
            steps.append(Step(at, "retried", f"by {event.by or 'unknown'}", event.retry_id))
        elif kind == "VerificationRequired":
            steps.append(Step(at, "verification awaited", f"{event.field} = {event.equals!r}"))
        elif kind == "Verified":
            steps.append(Step(at, "verified", "the device's state shows the change"))
        elif kind == "VerificationFailed":
            steps.append(Step(at, "verification failed", event.title))
        elif kind == "VerificationCanceled":
            steps.append(Step(at, "verification canceled"))
        elif kind == "Deleted":
            steps.append(Step(at, "deleted", event.reason))
        else:
            steps.append(Step(at, kind))
    return steps
