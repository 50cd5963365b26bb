"""Open-loop load: commands submitted at a fixed offered rate, whatever the stack does.

Each step schedules one `POST /v1/devices/{device}/commands?wait=W` every 1/rate seconds
(devices taken round robin) and never waits for an answer before sending the next: a
command's latency runs from the moment it was due, so a stack that falls behind is seen
falling behind rather than slowing the load down. The api's `?wait=` answers each request
when the execution has ended (one notifier per execution in the api, no polling here), so
the answer's status and arrival time say whether the command SUCCEEDED within the
threshold.

A step passes when at least `target` (99 %) of its commands SUCCEEDED within `threshold`
(1 s). It stops early once it cannot pass any more (more commands already failed or
overdue than the 1 % it may lose). `find_max` steps the offered rate up until a step
fails, then bisects between the best pass and the first failure.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from baton_domain.statuses import ExecutionStatus
from tests.benchmarks.lean_http import HttpError, LeanClient
from tests.benchmarks.procs import CpuSnapshot, Pids
from tests.quantiles import percentile

SUCCEEDED = ExecutionStatus.SUCCEEDED.value
UNFINISHED = ",".join(s.value for s in ExecutionStatus if not s.is_terminal)
DOOM_CHECK_S = 0.25


@dataclass(frozen=True)
class LoadSettings:
    devices: list[str]
    threshold: float = 1.0  # seconds from due to SUCCEEDED
    target: float = 0.99  # the share of commands that must make it
    wait: float = 5.0  # ?wait= on each submit
    ttl: int = 10


@dataclass
class StepResult:
    rate: float  # offered, commands/s
    planned: int
    issued: int = 0
    elapsed: float = 0.0  # seconds of offered load: issued / rate
    window: float = 0.0  # seconds from the first command until the stack settled after it
    aborted: bool = False
    # Seconds from due to SUCCEEDED; inf for a command that did not succeed.
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)  # how late the generator sent each
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per process, whole step

    def in_time(self, threshold: float) -> int:
        return sum(1 for latency in self.latencies if latency <= threshold)

    def passed(self, settings: LoadSettings) -> bool:
        return not self.aborted and self.in_time(settings.threshold) >= settings.target * (
            self.planned
        )

    def completed_rate(self, settings: LoadSettings) -> float:
        """Commands per second that SUCCEEDED within the threshold."""
        return self.in_time(settings.threshold) / self.elapsed if self.elapsed else 0.0

    def latency(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)

    def lag(self, q: float) -> float:
        return percentile(sorted(self.lags), q)


class Load:
    def __init__(self, client: LeanClient, settings: LoadSettings) -> None:
        self.client = client
        self.settings = settings
        self._turn = 0
        self._body = json.dumps(
            {"name": "set_temperature", "params": {"value": 21}, "ttl": settings.ttl}
        ).encode()

    async def submit(self, wait: bool = True) -> str:
        """One command, waited for unless `wait` is false; returns its status (or what
        went wrong)."""
        devices = self.settings.devices
        device = devices[self._turn % len(devices)]
        self._turn += 1
        path = f"/v1/devices/{device}/commands"
        if wait:
            path += f"?wait={self.settings.wait:g}"
        try:
            status, body = await self.client.request("POST", path, self._body)
        except HttpError:
            return "connection failed"
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return f"HTTP {status} not JSON"
        if status in (200, 201):
            return str(answer.get("status"))
        # A problem document: its type's last word says which (queue-full, outcome-unknown).
        return f"HTTP {status} {str(answer.get('type', '')).rsplit('/', 1)[-1]}".rstrip()

    async def step(
        self, rate: float, seconds: float, pids: Pids, settle: Callable[[], Awaitable[None]]
    ) -> StepResult:
        """Offer `rate` commands/s for `seconds`; returns once every answer is in and
        `settle` has waited for the stack to finish what the step gave it (its CPU counts
        all of that)."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        result = StepResult(rate, planned=max(1, round(rate * seconds)))
        may_lose = result.planned - math.ceil(settings.target * result.planned)
        pending: dict[int, float] = {}
        failed = 0
        tasks: set[asyncio.Task[None]] = set()

        async def one(n: int, due: float) -> None:
            nonlocal failed
            status = await self.submit()
            latency = loop.time() - due
            del pending[n]
            result.outcomes[status] += 1
            succeeded = status == SUCCEEDED
            result.latencies.append(latency if succeeded else math.inf)
            if not succeeded or latency > settings.threshold:
                failed += 1

        def doomed(now: float) -> bool:
            overdue = sum(1 for due in pending.values() if due < now - settings.threshold)
            return failed + overdue > may_lose

        cpu_before = CpuSnapshot.take(pids)
        start = next_check = loop.time()
        for n in range(result.planned):
            due = start + n / rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            result.lags.append(now - due)
            pending[n] = due
            task = asyncio.create_task(one(n, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.issued = n + 1
            if now >= next_check:
                next_check = now + DOOM_CHECK_S
                if doomed(now):
                    result.aborted = True
                    break
        result.elapsed = result.issued / rate
        await asyncio.gather(*tasks)
        await settle()
        cpu_after = CpuSnapshot.take(pids)
        result.cpu = cpu_after.since(cpu_before)
        result.window = cpu_after.at - cpu_before.at
        return result


@dataclass(frozen=True)
class Search:
    start_rate: float
    factor: float = 2.0  # the step up (and down) before the first failure (pass)
    refine: int = 2  # bisections between the best pass and the first failure
    max_steps: int = 8
    seconds: float = 60.0


async def find_max(
    run_step: Callable[[float, float], Awaitable[StepResult]],
    search: Search,
    passed: Callable[[StepResult], bool],
) -> tuple[StepResult | None, list[StepResult]]:
    """Step the offered rate until the highest passing rate is known to within the
    refinements asked for; returns (the best passing step, every step)."""
    steps: list[StepResult] = []
    best: StepResult | None = None
    highest_pass: float | None = None
    lowest_fail: float | None = None
    rate, refined = search.start_rate, 0
    while len(steps) < search.max_steps:
        step = await run_step(rate, search.seconds)
        steps.append(step)
        if passed(step):
            highest_pass = rate
            if best is None or step.rate > best.rate:
                best = step
        else:
            lowest_fail = rate if lowest_fail is None else min(lowest_fail, rate)
        if lowest_fail is None:
            rate *= search.factor
        elif highest_pass is None:
            rate /= search.factor
        elif refined < search.refine:
            rate, refined = math.sqrt(highest_pass * lowest_fail), refined + 1
        else:
            break
    return best, steps
