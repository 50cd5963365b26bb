"""The one table of status words: Baton's canonical status, as each dialect says it.

docs/dialects.md shows the same table (a unit test checks they agree). Every dialect module
translates statuses through here, never with a table of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from baton_domain.statuses import AnswerStatus, ExecutionStatus

Dialect = Literal["enapter", "fleets", "traxes", "iotee"]
DIALECTS: tuple[Dialect, ...] = ("enapter", "fleets", "traxes", "iotee")

S = ExecutionStatus
# Baton status -> (Enapter, Fleets, Traxes, iotee). Fleets has no word for "stored, not yet
# sent": PENDING shows as SENT (Fleets publishes at once, so its clients expect nothing else).
STATUS_WORDS: Mapping[ExecutionStatus, tuple[str, str, str, str]] = {
    S.PENDING: ("NEW", "SENT", "Pending", "pending"),
    S.SENT: ("IN_PROGRESS", "SENT", "Sent", "published"),
    S.ACKNOWLEDGED: ("IN_PROGRESS", "SENT", "Triggered", "acknowledged"),
    S.IN_PROGRESS: ("IN_PROGRESS", "SENT", "Triggered", "acknowledged"),
    S.SUCCEEDED: ("SUCCESS", "SUCCEEDED", "Succeeded", "completed"),
    S.FAILED: ("ERROR", "FAILED", "Failed", "failed"),
    S.REJECTED: ("ERROR", "REJECTED", "Failed", "failed"),
    S.TIMED_OUT: ("TIMEOUT", "TIMED_OUT", "Failed", "timeout"),
    S.EXPIRED: ("TIMEOUT", "TIMED_OUT", "Failed", "timeout"),
    S.CANCELED: ("ERROR", "CANCELED", "Canceled", "failed"),
}

# A device answer (Baton's answer status) as Enapter's response and log `state` words.
ENAPTER_ANSWER_STATES: Mapping[AnswerStatus, str] = {
    AnswerStatus.STARTED: "STARTED",
    AnswerStatus.IN_PROGRESS: "IN_PROGRESS",
    AnswerStatus.SUCCEEDED: "SUCCEEDED",
    AnswerStatus.FAILED: "ERROR",
    AnswerStatus.REJECTED: "ERROR",
}


def word(dialect: Dialect, status: ExecutionStatus | str) -> str:
    """`status` in `dialect`'s words."""
    return STATUS_WORDS[ExecutionStatus(status)][DIALECTS.index(dialect)]


def statuses_for(dialect: Dialect, words: Iterable[str]) -> frozenset[ExecutionStatus]:
    """Every Baton status that `dialect` calls one of `words` (for status filters).

    Raises KeyError naming the first word the dialect does not have."""
    column = DIALECTS.index(dialect)
    found: set[ExecutionStatus] = set()
    for name in words:
        matching = {s for s, names in STATUS_WORDS.items() if names[column] == name}
        if not matching:
            raise KeyError(name)
        found |= matching
    return frozenset(found)


def known_words(dialect: Dialect) -> list[str]:
    column = DIALECTS.index(dialect)
    return sorted({names[column] for names in STATUS_WORDS.values()})


def enapter_answer_state(status: str) -> str:
    """A device answer's status (as the log records it) in Enapter's words."""
    try:
        return ENAPTER_ANSWER_STATES[AnswerStatus(status)]
    except ValueError:
        return status


def markdown_table() -> str:
    """The table as docs/dialects.md shows it (statuses that share every word share a row)."""
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for status, names in STATUS_WORDS.items():
        rows.setdefault(names, []).append(status.value)
    lines = ["| Baton | Enapter | Fleets | Traxes | iotee |", "|---|---|---|---|---|"]
    for names, statuses in rows.items():
        lines.append(f"| {', '.join(statuses)} | {' | '.join(names)} |")
    return "\n".join(lines)
