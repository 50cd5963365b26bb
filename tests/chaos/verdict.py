"""What a chaos run found: Baton's record judged against what the clients were told and
what the simulated devices actually received and answered. Pure: no I/O but reading the
simulator's journal.

- **accepted**: submissions the API or NATS answered with an execution (stored).
- **lost**: accepted, but the execution is not in the event store, or not in the views.
- **duplicated**: one idempotency key with two executions (in the store, or in what the
  clients were answered), or a device that received one execution twice while the record
  shows two effects (the same answer status recorded twice).
- **stuck**: not terminal once its deadline and the grace have passed.
- **wrong**: the final status contradicts the device's journal: SUCCEEDED, FAILED and
  REJECTED must be the device's own final answer; TIMED_OUT only if the device sent no
  final answer before the deadline; EXPIRED only if it did not even receive the request
  before the deadline.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.quantiles import percentile

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "CANCELED"})
ENDINGS = frozenset(
    {"Succeeded", "Failed", "Rejected", "TimedOut", "Expired", "Canceled"}
)  # events
FINAL_ANSWERS = frozenset({"SUCCEEDED", "FAILED", "REJECTED"})
DEADLINE_ENDINGS = frozenset({"EXPIRED", "TIMED_OUT"})
COUNTS = ("lost", "duplicated", "stuck", "wrong")


# --- what the devices did (the simulator's journal) ----------------------------------------


@dataclass(frozen=True)
class Received:
    at: datetime
    outcome: str  # run | repeat | late (baton_simulator.journal)


@dataclass(frozen=True)
class Answered:
    at: datetime  # the broker acknowledged it
    status: str
    answer_id: str | None
    tried_at: datetime


@dataclass
class DeviceTrace:
    received: list[Received] = field(default_factory=list)
    answered: list[Answered] = field(default_factory=list)

    def received_before(self, deadline: datetime) -> Received | None:
        """The first delivery before `deadline` (a device ignores one that came late)."""
        return next((r for r in self.received if r.at < deadline and r.outcome != "late"), None)

    def final_answer(self) -> Answered | None:
        return next((a for a in self.answered if a.status in FINAL_ANSWERS), None)


def read_journal(path: Path) -> dict[str, DeviceTrace]:
    """The journal by execution id; a torn last line (the simulator killed mid-write) is
    skipped."""
    traces: dict[str, DeviceTrace] = defaultdict(DeviceTrace)
    if not path.exists():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        execution_id = entry.get("execution_id")
        if execution_id is None:
            continue
        trace = traces[execution_id]
        at = datetime.fromisoformat(entry["at"])
        if entry["event"] == "received":
            trace.received.append(Received(at, entry["outcome"]))
        elif entry["event"] == "answered":
            tried = datetime.fromisoformat(entry["tried_at"])
            trace.answered.append(Answered(at, entry["status"], entry["answer_id"], tried))
    return dict(traces)


# --- what Baton recorded, and what its clients were told ------------------------------------


@dataclass(frozen=True)
class Record:
    """One execution as the event store has it."""

    execution_id: str
    device_id: str
    name: str
    status: str
    deadline: datetime
    idempotency_key: str | None
    log: tuple[tuple[str, str, datetime], ...]  # (status, report id, received at)
    events: tuple[tuple[str, datetime], ...]  # (type, occurred at)


@dataclass
class Submission:
    """One command the load sent, however many times it had to."""

    key: str
    channel: str  # http | nats
    device_id: str
    name: str
    params: dict[str, object]
    ttl: int
    execution_id: str  # the id its key stands for
    answered_ids: set[str] = field(default_factory=set)
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    refused: str | None = None  # a final answer that is neither the execution nor retryable
    first_try: datetime | None = None
    accepted_at: datetime | None = None

    @property
    def accepted(self) -> bool:
        return bool(self.answered_ids)


@dataclass(frozen=True)
class Fault:
    target: str
    how: str  # SIGKILL | SIGTERM | exited (by itself)
    at: datetime
    back: datetime | None = None  # started again
    ready: datetime | None = None  # the whole stack recovered (None: not noted, or never)

    def timeline(self) -> str:
        """`api SIGKILL 12:00:01.000-12:00:02.000 ready 12:00:04.500`"""
        back = f"-{_t(self.back)}" if self.back else ""
        ready = f" ready {_t(self.ready)}" if self.ready else ""
        return f"{self.target} {self.how} {_t(self.at)}{back}{ready}"


# --- the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    kind: str  # lost | duplicated | stuck | wrong
    execution_id: str
    cause: str  # one line, the same for findings of one class
    detail: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    accepted: int
    views_equal: bool
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Requests the load saw fail (counted by a rolling restart, which must fail none).
    failed_requests: int | None = None

    def count(self, kind: str) -> int:
        return len({f.execution_id for f in self.findings if f.kind == kind})

    @property
    def passed(self) -> bool:
        return self.views_equal and not self.findings and not self.failed_requests

    def line(self) -> str:
        counts = " ".join(f"{kind}={self.count(kind)}" for kind in COUNTS)
        views = "yes" if self.views_equal else "no"
        failed = "" if self.failed_requests is None else f" failed_requests={self.failed_requests}"
        return f"chaos: accepted={self.accepted} {counts} views_equal={views}{failed}"

    def report(self) -> list[str]:
        """Every finding with its detail, a summary by cause, the notes; the line last."""
        lines: list[str] = []
        for finding in self.findings:
            lines.append(f"{finding.kind} {finding.execution_id}: {finding.cause}")
            lines.extend(f"    {d}" for d in finding.detail)
        # The part of a cause before its first colon names its class.
        classes = Counter((f.kind, f.cause.split(":")[0]) for f in self.findings)
        for (kind, cause), n in sorted(classes.items()):
            lines.append(f"{kind}: {n} x {cause}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(self.line())
        return lines


def wrong_status(record: Record, trace: DeviceTrace | None) -> str | None:
    """Why `record`'s final status contradicts the device's journal; None if it does not.
    The part before the first colon names the class of contradiction."""
    status = record.status
    trace = trace or DeviceTrace()
    final = trace.final_answer()
    in_time = final if final is not None and final.at < record.deadline else None
    if status in FINAL_ANSWERS:
        if final is None:
            return f"{status} without a final answer: the device never sent one"
        if final.status != status:
            return f"{status} but the device answered {final.status}: {_when(final, record)}"
        return None
    if status == "TIMED_OUT":
        if in_time is not None:
            return f"TIMED_OUT although answered {in_time.status} in time: {_when(in_time, record)}"
        return None
    if status == "EXPIRED":
        if in_time is not None:
            return f"EXPIRED although answered {in_time.status} in time: {_when(in_time, record)}"
        received = trace.received_before(record.deadline)
        if received is not None:
            ahead = (record.deadline - received.at).total_seconds()
            return f"EXPIRED although received in time: {ahead:.3f} s before the deadline"
        return None
    if status in TERMINAL:
        return f"{status}: nothing in the run cancels"
    return None  # not terminal: stuck, judged apart


def _when(answer: Answered, record: Record) -> str:
    ahead = (record.deadline - answer.at).total_seconds()
    side = "before" if ahead >= 0 else "after"
    return f"{abs(ahead):.3f} s {side} the deadline"


def judge(
    submissions: Iterable[Submission],
    records: Mapping[str, Record],
    views: Mapping[str, str],
    traces: Mapping[str, DeviceTrace],
    faults: Iterable[Fault],
    views_equal: bool,
    stuck_after: datetime,
    grace: float,
) -> Verdict:
    """`records`: this run's executions in the event store, by id; `views`: the status of
    each execution in the api's views, by id; `stuck_after`: when the record was read
    (an execution still running then is stuck if its deadline + `grace` had passed)."""
    submissions = list(submissions)
    faults = list(faults)
    accepted = [s for s in submissions if s.accepted]
    verdict = Verdict(accepted=len(accepted), views_equal=views_equal)
    by_id = {s.execution_id: s for s in submissions}
    explain = _Explainer(records, traces, faults, by_id)

    for sub in accepted:
        ids = sub.answered_ids | {sub.execution_id}
        if len(ids) > 1:
            verdict.findings.append(
                Finding(
                    "duplicated",
                    sub.execution_id,
                    "one key, two executions: the clients were answered different ids",
                    [f"key {sub.key}: answered {sorted(sub.answered_ids)}"],
                )
            )
        for execution_id in sorted(ids):
            places = (("store", records), ("views", views))
            where = [n for n, found in places if execution_id not in found]
            if where:
                verdict.findings.append(
                    Finding(
                        "lost",
                        execution_id,
                        f"accepted, not in the {' nor the '.join(where)}",
                        explain(execution_id),
                    )
                )

    by_key: dict[str, list[str]] = defaultdict(list)
    for record in records.values():
        if record.idempotency_key is not None:
            by_key[record.idempotency_key].append(record.execution_id)
    for key, same in sorted(by_key.items()):
        if len(same) > 1:
            for execution_id in sorted(same):
                verdict.findings.append(
                    Finding(
                        "duplicated",
                        execution_id,
                        "one key, two executions in the store",
                        [f"key {key}: {sorted(same)}", *explain(execution_id)],
                    )
                )

    running = 0
    for record in sorted(records.values(), key=lambda r: r.deadline):
        trace = traces.get(record.execution_id)
        repeated = [s for s, n in Counter(s for s, _, _ in record.log).items() if n > 1]
        if trace is not None and len(trace.received) > 1 and repeated:
            verdict.findings.append(
                Finding(
                    "duplicated",
                    record.execution_id,
                    f"received {len(trace.received)} times, recorded {repeated} twice",
                    explain(record.execution_id),
                )
            )
        # Still running when the record was read, or recorded terminal only after the
        # settling gave up on it (when the stack stopped, say): stuck as long as it ran,
        # whatever it ended as.
        terminal = record.status in TERMINAL
        ended = (
            next((at for kind, at in record.events if kind in ENDINGS), record.deadline)
            if terminal
            else stuck_after
        )
        late = (ended - record.deadline).total_seconds()
        if late > grace:
            what = "recorded terminal only" if terminal else "not terminal"
            verdict.findings.append(
                Finding(
                    "stuck",
                    record.execution_id,
                    f"{record.status}: {what} {late:.1f} s after its deadline",
                    explain(record.execution_id),
                )
            )
            continue
        if not terminal:
            running += 1
            continue
        why = wrong_status(record, trace)
        if why is not None:
            verdict.findings.append(
                Finding("wrong", record.execution_id, why, explain(record.execution_id))
            )

    if running:
        verdict.notes.append(f"{running} executions still ran within their grace: not judged")
    _notes(verdict, submissions, records, traces, faults)
    return verdict


def _notes(
    verdict: Verdict,
    submissions: list[Submission],
    records: Mapping[str, Record],
    traces: Mapping[str, DeviceTrace],
    faults: list[Fault],
) -> None:
    by_channel = Counter(s.channel for s in submissions if s.accepted)
    channels = ", ".join(f"{c} {n}" for c, n in sorted(by_channel.items()))
    verdict.notes.append(f"submitted {len(submissions)} ({channels} accepted)")
    retried = [s for s in submissions if s.attempts > 1]
    errors: Counter[str] = Counter()
    for sub in submissions:
        errors.update(sub.errors)
    if retried:
        top = ", ".join(f"{why} x{n}" for why, n in errors.most_common(8))
        verdict.notes.append(f"{len(retried)} submissions needed retries: {top}")
    for sub in submissions:
        if not sub.accepted:
            stored = "stored anyway" if sub.execution_id in records else "not stored"
            why = sub.refused or "gave up retrying"
            verdict.notes.append(f"not accepted ({why}; {stored}): {sub.channel} key {sub.key}")
    statuses = Counter(r.status for r in records.values())
    verdict.notes.append(
        "final statuses: " + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
    )
    late = [
        (final.at - r.deadline).total_seconds()
        for r in records.values()
        if r.status in FINAL_ANSWERS
        and (final := (traces.get(r.execution_id) or DeviceTrace()).final_answer()) is not None
        and final.at >= r.deadline
    ]
    if late:
        verdict.notes.append(
            f"{len(late)} executions took a final answer the device sent after their deadline "
            f"(up to {max(late):.1f} s after): the deadline was applied later than it fell"
        )
    applied = sorted(
        (ended - r.deadline).total_seconds()
        for r in records.values()
        if r.status in DEADLINE_ENDINGS
        and (ended := next((t for kind, t in r.events if kind in ENDINGS), None)) is not None
    )
    if applied:
        # How far from "on time" the deadlines were applied: stuck only says which ones
        # crossed the grace, this shows how close the rest came.
        verdict.notes.append(
            f"{len(applied)} deadlines applied (EXPIRED, TIMED_OUT), after their deadline by: "
            f"p50 {percentile(applied, 0.5):.1f} s, p99 {percentile(applied, 0.99):.1f} s, "
            f"max {applied[-1]:.1f} s"
        )
    shown = Counter(f"{f.target} {f.how}" for f in faults)
    verdict.notes.append("faults: " + ", ".join(f"{k} x{n}" for k, n in sorted(shown.items())))
    verdict.notes.append(
        "fault timeline: " + "; ".join(f.timeline() for f in sorted(faults, key=lambda f: f.at))
    )


class _Explainer:
    """The lines that let a finding be diagnosed: what the client, the device and the
    record each say, and the faults while the execution ran."""

    def __init__(
        self,
        records: Mapping[str, Record],
        traces: Mapping[str, DeviceTrace],
        faults: list[Fault],
        submissions: Mapping[str, Submission],
    ) -> None:
        self.records = records
        self.traces = traces
        self.faults = faults
        self.submissions = submissions

    def __call__(self, execution_id: str) -> list[str]:
        lines = []
        sub = self.submissions.get(execution_id)
        record = self.records.get(execution_id)
        trace = self.traces.get(execution_id)
        if sub is not None:
            tried = _t(sub.first_try) if sub.first_try else "-"
            accepted = _t(sub.accepted_at) if sub.accepted_at else "never"
            errors = ", ".join(f"{k} x{n}" for k, n in sub.errors.items()) or "none"
            lines.append(
                f"client:  {sub.channel} key {sub.key} {sub.device_id} {sub.name} ttl {sub.ttl}: "
                f"first sent {tried}, accepted {accepted} after {sub.attempts} attempt(s); "
                f"errors {errors}"
            )
        if record is not None:
            events = ", ".join(f"{kind} {_t(at)}" for kind, at in record.events)
            lines.append(
                f"record:  {record.status}, deadline {_t(record.deadline)}; events {events}"
            )
            if record.log:
                log = ", ".join(f"{s} {_t(at)}" for s, _, at in record.log)
                lines.append(f"         answers received by the bridge: {log}")
        else:
            lines.append("record:  none in the event store")
        if trace is not None:
            got = ", ".join(f"{r.outcome} {_t(r.at)}" for r in trace.received)
            said = ", ".join(f"{a.status} {_t(a.at)}{_tried(a)}" for a in trace.answered)
            lines.append(f"device:  received {got or 'never'}; answered {said or 'nothing'}")
        else:
            lines.append("device:  never received it")
        if record is not None:
            start = record.events[0][1] if record.events else record.deadline
            end = max(record.deadline, record.events[-1][1]) if record.events else record.deadline
            during = [
                f.timeline()
                for f in self.faults
                if f.at <= end and (f.ready or f.back or f.at) >= start
            ]
            lines.append(f"faults:  {'; '.join(during) or 'none while it ran'}")
        return lines


def _t(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _tried(answer: Answered) -> str:
    """When the device first tried, if the broker took it much later."""
    if (answer.at - answer.tried_at).total_seconds() < 0.5:
        return ""
    return f" (tried from {_t(answer.tried_at)})"
