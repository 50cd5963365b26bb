"""The chaos run's judge (tests/chaos/verdict.py): each count, from made-up records, client
answers and device journals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton_simulator import Journal
from tests.chaos.verdict import (
    Answered,
    DeviceTrace,
    Fault,
    Received,
    Record,
    Submission,
    Verdict,
    judge,
    read_journal,
    wrong_status,
)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(seconds=6)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(
    status: str,
    execution_id: str = "e1",
    key: str | None = "k1",
    log: tuple[tuple[str, str, datetime], ...] = (),
    ended: datetime | None = None,
) -> Record:
    ending = () if ended is None else ((status.title().replace("_", ""), ended),)
    return Record(
        execution_id=execution_id,
        device_id="sim-00001",
        name="set_temperature",
        status=status,
        deadline=DEADLINE,
        idempotency_key=key,
        log=log,
        events=(("Requested", at(0)), ("Dispatched", at(0)), *ending),
    )


def trace(
    received: Sequence[tuple[float, str]] = (),
    answered: Sequence[tuple[float, str]] = (),
) -> DeviceTrace:
    return DeviceTrace(
        [Received(at(s), outcome) for s, outcome in received],
        [Answered(at(s), status, f"a{n}", at(s)) for n, (s, status) in enumerate(answered)],
    )


def submission(
    execution_id: str = "e1", key: str = "k1", answered: set[str] | None = None
) -> Submission:
    sub = Submission(key, "http", "sim-00001", "set_temperature", {}, 6, execution_id)
    sub.answered_ids = {execution_id} if answered is None else answered
    return sub


def verdict_of(
    records: list[Record],
    traces: dict[str, DeviceTrace] | None = None,
    submissions: list[Submission] | None = None,
    views: dict[str, str] | None = None,
    read_at: datetime = DEADLINE + timedelta(seconds=60),
    views_equal: bool = True,
) -> Verdict:
    by_id = {r.execution_id: r for r in records}
    return judge(
        submissions if submissions is not None else [submission(r.execution_id) for r in records],
        by_id,
        views if views is not None else {r.execution_id: r.status for r in records},
        traces or {},
        [Fault("dispatcher", "SIGKILL", at(1), at(2))],
        views_equal=views_equal,
        stuck_after=read_at,
        grace=30,
    )


ANSWERED_IN_TIME = trace([(0.1, "run")], [(0.4, "STARTED"), (1.0, "SUCCEEDED")])


@pytest.mark.parametrize(
    ("status", "device", "wrong"),
    [
        ("SUCCEEDED", ANSWERED_IN_TIME, None),
        ("FAILED", ANSWERED_IN_TIME, "FAILED but the device answered SUCCEEDED"),
        ("SUCCEEDED", trace([(0.1, "run")], [(0.4, "STARTED")]), "SUCCEEDED without a final"),
        ("SUCCEEDED", trace([(5.0, "run")], [(7.0, "SUCCEEDED")]), None),  # late, but its own
        ("TIMED_OUT", ANSWERED_IN_TIME, "TIMED_OUT although answered SUCCEEDED in time"),
        ("TIMED_OUT", trace([(0.1, "run")], [(0.4, "STARTED")]), None),
        ("TIMED_OUT", trace([(5.0, "run")], [(6.5, "SUCCEEDED")]), None),
        ("TIMED_OUT", trace(), None),  # the broker took it, the device never got it
        ("EXPIRED", trace(), None),
        ("EXPIRED", trace([(6.2, "late")]), None),
        ("EXPIRED", trace([(5.9, "run")]), "EXPIRED although received in time"),
        ("EXPIRED", ANSWERED_IN_TIME, "EXPIRED although answered SUCCEEDED in time"),
        ("CANCELED", trace(), "CANCELED: nothing in the run cancels"),
        ("SENT", trace(), None),  # not terminal: stuck or still running, never wrong
    ],
)
def test_a_final_status_is_judged_by_what_the_device_did(
    status: str, device: DeviceTrace, wrong: str | None
) -> None:
    found = wrong_status(record(status), device)
    if wrong is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(wrong)


def test_all_right_is_one_line_of_zeros() -> None:
    verdict = verdict_of([record("SUCCEEDED")], {"e1": ANSWERED_IN_TIME})
    assert verdict.passed
    assert verdict.line() == (
        "chaos: accepted=1 lost=0 duplicated=0 stuck=0 wrong=0 views_equal=yes"
    )
    assert verdict.report()[-1] == verdict.line()


def test_a_wrong_status_is_counted_and_explained() -> None:
    verdict = verdict_of([record("TIMED_OUT")], {"e1": ANSWERED_IN_TIME})
    assert verdict.line().endswith("stuck=0 wrong=1 views_equal=yes")
    report = "\n".join(verdict.report())
    assert "wrong e1: TIMED_OUT although answered SUCCEEDED in time: 5.000 s before" in report
    assert "device:  received run 12:00:00.100; answered STARTED 12:00:00.400" in report
    assert "faults:  dispatcher SIGKILL 12:00:01.000-12:00:02.000" in report
    assert "wrong: 1 x TIMED_OUT although answered SUCCEEDED in time" in report


def test_accepted_but_missing_from_the_store_or_the_views_is_lost() -> None:
    kept = record("SUCCEEDED", "e2", "k2")
    missing = submission("e1")
    verdict = verdict_of([kept], {"e2": ANSWERED_IN_TIME}, [missing, submission("e2", "k2")])
    assert verdict.count("lost") == 1
    assert verdict.accepted == 2
    unseen = verdict_of([kept], {"e2": ANSWERED_IN_TIME}, views={})
    assert unseen.count("lost") == 1
    assert "not in the views" in unseen.findings[0].cause


def test_one_key_with_two_executions_is_duplicated() -> None:
    twins = [record("SUCCEEDED", "e1", "k1"), record("SUCCEEDED", "e2", "k1")]
    traces = {"e1": ANSWERED_IN_TIME, "e2": ANSWERED_IN_TIME}
    verdict = verdict_of(twins, traces, [submission("e1")])
    assert verdict.count("duplicated") == 2
    answered_twice = verdict_of([record("SUCCEEDED")], {"e1": ANSWERED_IN_TIME},
                                [submission("e1", answered={"e1", "e9"})])  # fmt: skip
    assert answered_twice.count("duplicated") == 1


def test_a_device_that_got_it_twice_and_a_record_with_two_effects_is_duplicated() -> None:
    twice = (("SUCCEEDED", "r1", at(1)), ("SUCCEEDED", "r2", at(2)))
    device = trace([(0.1, "run"), (1.5, "run")], [(1.0, "SUCCEEDED"), (2.0, "SUCCEEDED")])
    assert verdict_of([record("SUCCEEDED", log=twice)], {"e1": device}).count("duplicated") == 1
    once = (("SUCCEEDED", "r1", at(1)),)
    repeat = trace([(0.1, "run"), (1.5, "repeat")], [(1.0, "SUCCEEDED")])
    assert verdict_of([record("SUCCEEDED", log=once)], {"e1": repeat}).passed


def test_running_past_its_deadline_and_the_grace_is_stuck() -> None:
    assert verdict_of([record("SENT")], read_at=DEADLINE + timedelta(seconds=31)).count("stuck")
    within = verdict_of([record("SENT")], read_at=DEADLINE + timedelta(seconds=29))
    assert within.passed
    assert any("not judged" in note for note in within.notes)


def test_ending_only_after_the_grace_is_stuck_whatever_it_ended_as() -> None:
    # The record settled late (a partition's reports unread until the stack stopped and
    # another dispatcher took them): what the device did, but not while it ran.
    late = record("SUCCEEDED", ended=DEADLINE + timedelta(seconds=31))
    verdict = verdict_of([late], {"e1": ANSWERED_IN_TIME})
    assert verdict.count("stuck") == 1
    assert "recorded terminal only 31.0 s after its deadline" in "\n".join(verdict.report())
    in_time = record("SUCCEEDED", ended=DEADLINE + timedelta(seconds=29))
    assert verdict_of([in_time], {"e1": ANSWERED_IN_TIME}).passed


def test_how_late_deadlines_were_applied_is_noted() -> None:
    records = [
        record("EXPIRED", "e1", "k1", ended=DEADLINE + timedelta(seconds=0.2)),
        record("TIMED_OUT", "e2", "k2", ended=DEADLINE + timedelta(seconds=4)),
        record("SUCCEEDED", "e3", "k3", ended=at(1)),  # its own answer: not a deadline's
    ]
    traces = {"e2": trace([(0.1, "run")]), "e3": ANSWERED_IN_TIME}
    notes = verdict_of(records, traces).notes
    assert (
        "2 deadlines applied (EXPIRED, TIMED_OUT), after their deadline by: "
        "p50 0.2 s, p99 4.0 s, max 4.0 s"
    ) in notes


def test_views_unequal_to_a_replay_fail_the_run() -> None:
    verdict = verdict_of([record("SUCCEEDED")], {"e1": ANSWERED_IN_TIME}, views_equal=False)
    assert not verdict.passed
    assert verdict.line().endswith("wrong=0 views_equal=no")


def test_the_simulators_journal_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.received("sim-00001", "e1", "reboot", DEADLINE, "run")
    journal.answered("sim-00001", "e1", "SUCCEEDED", "e1-1", T0)
    journal.received("sim-00001", None, "reboot", None, "run")  # raw-mapped: no id, skipped
    journal.close()
    with path.open("a") as torn:
        torn.write('{"event": "answ')  # killed mid-line
    [(execution_id, read)] = read_journal(path).items()
    assert execution_id == "e1"
    assert [r.outcome for r in read.received] == ["run"]
    assert [(a.status, a.answer_id, a.tried_at) for a in read.answered] == [
        ("SUCCEEDED", "e1-1", T0)
    ]
