"""The CommandExecution state machine: every status against every command, table-driven.

Each cell says what must happen: the event recorded and the status after it, "no event"
(an idempotent repeat or an ignored late fact), or the domain error raised before any
event exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton_domain import execution as execution_module
from baton_domain.errors import (
    AnswerLogFull,
    DeadlineNotReached,
    DomainError,
    IllegalTransition,
    WrongDevice,
)
from baton_domain.execution import CommandExecution
from baton_domain.statuses import TERMINAL_STATUSES, AnswerStatus, ExecutionStatus

S = ExecutionStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = 30
DEVICE = "dev-1"


def new_execution(dispatch: bool = True) -> CommandExecution:
    execution = CommandExecution(
        id=uuid4(),
        device_id=DEVICE,
        device_type="thermostat",
        name="reboot",
        params={},
        ttl=TTL,
        deadline=T0 + timedelta(seconds=TTL),
        idempotency_key=None,
        fingerprint=None,
        source="test",
        requested_name="reboot",
        ephemeral=False,
        retry_of=None,
        requested_by="key:test",
    )
    if dispatch:
        execution.dispatch()
    return execution


def answer(
    execution: CommandExecution,
    status: AnswerStatus,
    report_id: str | None = None,
    device: str = DEVICE,
) -> bool:
    return execution.record_answer(
        device, report_id or f"r-{uuid4()}", status, {"said": status.value}, T0
    )


AFTER = T0 + timedelta(seconds=TTL + 1)

# How to bring a fresh execution into each starting state.
SETUPS: dict[str, Callable[[], CommandExecution]] = {}


def _setup(name: str, *steps: Callable[[CommandExecution], object], dispatch: bool = True) -> None:
    def make() -> CommandExecution:
        execution = new_execution(dispatch)
        for step in steps:
            step(execution)
        return execution

    SETUPS[name] = make


_setup("PENDING (not dispatched)", dispatch=False)
_setup("PENDING")
_setup("SENT", lambda e: e.mark_published())
_setup("ACKNOWLEDGED", lambda e: e.mark_published(), lambda e: answer(e, AnswerStatus.STARTED))
_setup("IN_PROGRESS", lambda e: e.mark_published(), lambda e: answer(e, AnswerStatus.IN_PROGRESS))
_setup("SUCCEEDED", lambda e: e.mark_published(), lambda e: answer(e, AnswerStatus.SUCCEEDED))
_setup("FAILED", lambda e: e.mark_published(), lambda e: answer(e, AnswerStatus.FAILED))
_setup("REJECTED", lambda e: e.mark_published(), lambda e: answer(e, AnswerStatus.REJECTED))
_setup("TIMED_OUT", lambda e: e.mark_published(), lambda e: e.reach_deadline(AFTER))
_setup("EXPIRED", lambda e: e.reach_deadline(AFTER))
_setup("CANCELED", lambda e: e.cancel("test"))

COMMANDS: dict[str, Callable[[CommandExecution], object]] = {
    "dispatch": lambda e: e.dispatch(),
    "published": lambda e: e.mark_published(),
    "STARTED": lambda e: answer(e, AnswerStatus.STARTED),
    "IN_PROGRESS": lambda e: answer(e, AnswerStatus.IN_PROGRESS),
    "SUCCEEDED": lambda e: answer(e, AnswerStatus.SUCCEEDED),
    "FAILED": lambda e: answer(e, AnswerStatus.FAILED),
    "REJECTED": lambda e: answer(e, AnswerStatus.REJECTED),
    "deadline": lambda e: e.reach_deadline(AFTER),
    "cancel": lambda e: e.cancel("by test"),
    "retry": lambda e: e.record_retry(RETRY_ID),
    "delete": lambda e: e.delete("by test"),
}
RETRY_ID: UUID = uuid4()

ILLEGAL = IllegalTransition
NONE = None  # no event, status unchanged
LIVE = ("PENDING", "SENT", "ACKNOWLEDGED", "IN_PROGRESS")
ENDED = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "CANCELED")

# expected[start][command] = (event class names, status after) | NONE | error class
Expected = tuple[str, ExecutionStatus] | type[DomainError] | None
EXPECTED: dict[str, dict[str, Expected]] = {
    "PENDING (not dispatched)": {
        "dispatch": ("Dispatched", S.PENDING),
        "published": ILLEGAL,
        "STARTED": ILLEGAL,
        "IN_PROGRESS": ILLEGAL,
        "SUCCEEDED": ILLEGAL,
        "FAILED": ILLEGAL,
        "REJECTED": ILLEGAL,
        "deadline": ("Expired", S.EXPIRED),
        "cancel": ("Canceled", S.CANCELED),
    },
    "PENDING": {
        "dispatch": ILLEGAL,
        "published": ("Published", S.SENT),
        # An answer overtook the `published` report: it implies it, recorded first.
        "STARTED": ("Published Acknowledged", S.ACKNOWLEDGED),
        "IN_PROGRESS": ("Published Progressed", S.IN_PROGRESS),
        "SUCCEEDED": ("Published Succeeded", S.SUCCEEDED),
        "FAILED": ("Published Failed", S.FAILED),
        "REJECTED": ("Published Rejected", S.REJECTED),
        "deadline": ("Expired", S.EXPIRED),
        "cancel": ("Canceled", S.CANCELED),
    },
    "SENT": {
        "dispatch": ILLEGAL,
        "published": NONE,
        "STARTED": ("Acknowledged", S.ACKNOWLEDGED),
        "IN_PROGRESS": ("Progressed", S.IN_PROGRESS),
        "SUCCEEDED": ("Succeeded", S.SUCCEEDED),
        "FAILED": ("Failed", S.FAILED),
        "REJECTED": ("Rejected", S.REJECTED),
        "deadline": ("TimedOut", S.TIMED_OUT),
        "cancel": ("Canceled", S.CANCELED),
    },
    "ACKNOWLEDGED": {
        "dispatch": ILLEGAL,
        "published": NONE,
        "STARTED": ("AnswerRecorded", S.ACKNOWLEDGED),
        "IN_PROGRESS": ("Progressed", S.IN_PROGRESS),
        "SUCCEEDED": ("Succeeded", S.SUCCEEDED),
        "FAILED": ("Failed", S.FAILED),
        "REJECTED": ("Rejected", S.REJECTED),
        "deadline": ("TimedOut", S.TIMED_OUT),
        "cancel": ("Canceled", S.CANCELED),
    },
    "IN_PROGRESS": {
        "dispatch": ILLEGAL,
        "published": NONE,
        "STARTED": ("AnswerRecorded", S.IN_PROGRESS),
        "IN_PROGRESS": ("Progressed", S.IN_PROGRESS),
        "SUCCEEDED": ("Succeeded", S.SUCCEEDED),
        "FAILED": ("Failed", S.FAILED),
        "REJECTED": ("Rejected", S.REJECTED),
        "deadline": ("TimedOut", S.TIMED_OUT),
        "cancel": ("Canceled", S.CANCELED),
    },
}
for _ended in ENDED:
    # Ended before the broker took it (expired, canceled while PENDING): the `published`
    # report, or an answer implying it, is still recorded, and moves no status.
    _unpublished = _ended in ("EXPIRED", "CANCELED")
    EXPECTED[_ended] = {
        "dispatch": ILLEGAL,
        "published": ("Published", S(_ended)) if _unpublished else NONE,
        # A late answer is kept in the log; the status never changes again.
        **{
            a.value: ("Published AnswerRecorded" if _unpublished else "AnswerRecorded", S(_ended))
            for a in AnswerStatus
        },
        "deadline": NONE,
        "cancel": ILLEGAL,
    }
# Retry and delete, for every status: only an ended execution is retried; deleting one that
# still runs cancels it first (so the device is told), and the status is then CANCELED.
for _start, _row in EXPECTED.items():
    _ended_start = _start in ENDED
    _row["retry"] = ("Retried", S(_start)) if _ended_start else ILLEGAL
    _row["delete"] = ("Deleted", S(_start)) if _ended_start else ("Canceled Deleted", S.CANCELED)
# An execution that expired or was canceled before dispatch was never dispatched...
# ...but ours were (EXPIRED/CANCELED setups dispatch first), so the table above holds.

CASES = [(start, command) for start in SETUPS for command in COMMANDS]


def test_table_covers_every_status_and_command() -> None:
    covered = {start.split(" ")[0] for start in EXPECTED}
    assert covered == {s.value for s in ExecutionStatus}
    assert all(set(row) == set(COMMANDS) for row in EXPECTED.values())


@pytest.mark.parametrize(("start", "command"), CASES, ids=[f"{s}->{c}" for s, c in CASES])
def test_transition(start: str, command: str) -> None:
    execution = SETUPS[start]()
    before_status = execution.status
    before_events = len(execution.collect_events())
    assert before_events >= 1
    expected = EXPECTED[start][command]
    if isinstance(expected, type):
        with pytest.raises(expected):
            COMMANDS[command](execution)
        assert execution.collect_events() == []  # nothing was recorded
        assert execution.status is before_status
        return
    COMMANDS[command](execution)
    events = execution.collect_events()
    if expected is None:
        assert events == []
        assert execution.status is before_status
        return
    event_names, status_after = expected
    assert [type(e).__name__ for e in events] == event_names.split()
    assert execution.status is status_after


def test_terminal_statuses_are_exactly_the_endings() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == set(ENDED)


def test_results_and_errors_come_from_the_final_answer() -> None:
    done = SETUPS["SUCCEEDED"]()
    assert done.result == {"said": "SUCCEEDED"}
    assert done.error is None
    failed = SETUPS["FAILED"]()
    assert failed.error == {"said": "FAILED"}
    timed_out = SETUPS["TIMED_OUT"]()
    assert timed_out.error is not None
    assert timed_out.error["code"] == "timed_out"
    canceled = SETUPS["CANCELED"]()
    assert canceled.error == {"code": "canceled", "message": "test"}


def test_late_answer_after_time_out_is_kept_in_the_log() -> None:
    execution = SETUPS["TIMED_OUT"]()
    execution.collect_events()
    assert answer(execution, AnswerStatus.SUCCEEDED, report_id="late") is True
    assert execution.status is S.TIMED_OUT
    assert execution.log[-1]["report_id"] == "late"
    assert execution.log[-1]["status"] == "SUCCEEDED"
    assert execution.result is None


def test_same_report_twice_is_recorded_once() -> None:
    execution = SETUPS["SENT"]()
    execution.collect_events()
    assert answer(execution, AnswerStatus.STARTED, report_id="r1") is True
    assert answer(execution, AnswerStatus.STARTED, report_id="r1") is False
    assert len(execution.collect_events()) == 1
    assert len(execution.log) == 1


def test_a_full_log_takes_only_an_answer_that_moves_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(execution_module, "MAX_LOG_ENTRIES", 3)
    execution = SETUPS["SENT"]()
    for n in range(3):  # the first moves SENT -> IN_PROGRESS, the others only fill the log
        assert answer(execution, AnswerStatus.IN_PROGRESS, report_id=f"p{n}") is True
    execution.collect_events()
    with pytest.raises(AnswerLogFull):
        answer(execution, AnswerStatus.IN_PROGRESS, report_id="p3")
    with pytest.raises(AnswerLogFull):
        answer(execution, AnswerStatus.STARTED)
    assert answer(execution, AnswerStatus.IN_PROGRESS, report_id="p0") is False  # a repeat
    assert execution.collect_events() == []
    assert len(execution.log) == 3
    assert answer(execution, AnswerStatus.SUCCEEDED, report_id="done") is True  # it ends it
    assert execution.status is S.SUCCEEDED
    assert [entry["report_id"] for entry in execution.log] == ["p0", "p1", "p2", "done"]
    with pytest.raises(AnswerLogFull):  # after the end nothing moves any more
        answer(execution, AnswerStatus.FAILED)
    assert execution.status is S.SUCCEEDED


def test_answer_from_another_device_changes_nothing() -> None:
    execution = SETUPS["SENT"]()
    execution.collect_events()
    with pytest.raises(WrongDevice):
        answer(execution, AnswerStatus.SUCCEEDED, device="intruder")
    assert execution.collect_events() == []
    assert execution.status is S.SENT


def test_deadline_not_reached_is_refused() -> None:
    execution = SETUPS["SENT"]()
    execution.collect_events()
    with pytest.raises(DeadlineNotReached):
        execution.reach_deadline(T0)
    assert execution.collect_events() == []


def test_cancel_tells_the_device_only_when_dispatched() -> None:
    undispatched = SETUPS["PENDING (not dispatched)"]()
    undispatched.cancel("x")
    assert undispatched.collect_events()[-1].notify_device is False  # type: ignore[attr-defined]
    sent = SETUPS["SENT"]()
    sent.cancel("x")
    assert sent.collect_events()[-1].notify_device is True  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(COMMANDS)), max_size=12))
def test_a_terminal_execution_never_changes_status(commands: list[str]) -> None:
    """Whatever happens, once ended the status stays; and the log only grows."""
    execution = new_execution()
    ended_as: ExecutionStatus | None = None
    log_len = 0
    for command in commands:
        with contextlib.suppress(DomainError):
            COMMANDS[command](execution)
        assert len(execution.log) >= log_len
        log_len = len(execution.log)
        if ended_as is not None:
            assert execution.status is ended_as
        elif execution.status.is_terminal:
            ended_as = execution.status


def test_event_topics_are_pinned() -> None:
    topics = {
        cls.TOPIC
        for cls in vars(CommandExecution).values()
        if isinstance(cls, type) and hasattr(cls, "TOPIC") and cls.__name__ != "Event"
    }
    assert "baton.execution.v1:Requested" in topics
    assert all(t.startswith("baton.execution.v1:") for t in topics)


def test_a_retry_is_linked_and_a_deleted_execution_takes_nothing_more() -> None:
    execution = new_execution()
    execution.cancel("stop")
    execution.record_retry(RETRY_ID)
    assert execution.retries == [RETRY_ID]
    execution.delete("old")
    assert execution.deleted
    with pytest.raises(IllegalTransition):
        execution.delete("again")


def test_requested_v1_events_are_upcast() -> None:
    state = {"name": "reboot"}
    CommandExecution.Requested.upcast_v1_v2(state)
    assert state == {
        "name": "reboot", "requested_name": "reboot", "ephemeral": False, "retry_of": None,
    }  # fmt: skip
