"""What a simulated device does with each command, as data (whatever its wire profile).

A `Behaviour` maps a command name to a `Script`: the steps the device takes, in order. A step
waits, then (optionally) answers with a status and a payload computed from the request, then
(optionally) reports the device's state, then (optionally) drops off the broker for a while.
A new device type or scripted behaviour is a new table, not a new code path: `plan` turns a
script and a request into concrete actions, and the device only carries them out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from baton_contracts.mqtt import AnswerStatusWord, CommandRequest, DeviceAnswer

PayloadFn = Callable[[CommandRequest], dict[str, Any]]
StateFn = Callable[[CommandRequest], dict[str, Any]]


def no_payload(request: CommandRequest) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Step:
    """Wait `delay` seconds, answer `status` with `payload(request)` (nothing when `status`
    is None), report `state(request)` as the device's state (when given), then stay off the
    broker for `offline_for` seconds."""

    status: AnswerStatusWord | None
    payload: PayloadFn = no_payload
    delay: float = 0.0
    offline_for: float = 0.0
    state: StateFn | None = None


Script = tuple[Step, ...]


# --- the vocabulary scripts are written in -------------------------------------------------


def started(delay: float = 0.0) -> Step:
    return Step("STARTED", delay=delay)


def progress(percent: int, delay: float = 0.0) -> Step:
    return Step("IN_PROGRESS", lambda _: {"progress": percent}, delay=delay)


def succeed(payload: PayloadFn = no_payload, delay: float = 0.0) -> Step:
    return Step("SUCCEEDED", payload, delay=delay)


def fail(message: str, delay: float = 0.0) -> Step:
    return Step("FAILED", lambda _: {"message": message}, delay=delay)


def reject(message: str, delay: float = 0.0) -> Step:
    return Step("REJECTED", lambda _: {"message": message}, delay=delay)


def go_offline(seconds: float, delay: float = 0.0) -> Step:
    """Drop the connection for `seconds`; the persistent session keeps what arrives meanwhile."""
    return Step(None, delay=delay, offline_for=seconds)


def report_state(state: dict[str, Any], delay: float = 0.0) -> Step:
    """Report `state` on the device's state topic (where its profile has one)."""
    return Step(None, delay=delay, state=lambda _: dict(state))


def reject_unknown(request: CommandRequest) -> dict[str, Any]:
    return {"message": f"unknown command {request.name!r}"}


REJECT_UNKNOWN: Script = (Step("REJECTED", reject_unknown),)


@dataclass(frozen=True)
class Behaviour:
    """A device type's scripts by command name; `otherwise` runs for any other command."""

    commands: Mapping[str, Script] = field(default_factory=dict)
    otherwise: Script = REJECT_UNKNOWN

    def script_for(self, name: str) -> Script:
        return self.commands.get(name, self.otherwise)

    def timed(self, timing: Timing) -> Behaviour:
        """The same scripts with `timing`'s delays in place of their own."""
        if timing == Timing():
            return self
        return Behaviour(
            commands={name: timing.apply(script) for name, script in self.commands.items()},
            otherwise=timing.apply(self.otherwise),
        )


@dataclass(frozen=True)
class Timing:
    """Answer times set from outside (`baton simulate --answer-delay/--progress-delay`), so a
    bench or a test can make a fleet as quick or as slow as it needs.

    `answer_delay`: how long a device takes from a request to its first step (its first
    answer, usually STARTED). `progress_delay`: the wait before each later step (progress,
    the final answer, a state report). None keeps the behaviour's own delay for those steps.
    A script's last answer so comes `answer_delay + (steps - 1) * progress_delay` after the
    request.
    """

    answer_delay: float | None = None
    progress_delay: float | None = None

    def __post_init__(self) -> None:
        for delay in (self.answer_delay, self.progress_delay):
            if delay is not None and delay < 0:
                raise ValueError(f"a delay cannot be negative: {delay}")

    def apply(self, script: Script) -> Script:
        return tuple(
            replace(step, delay=delay)
            if (delay := self.answer_delay if n == 0 else self.progress_delay) is not None
            else step
            for n, step in enumerate(script)
        )

    def over(self, default: Timing) -> Timing:
        """This timing, with `default`'s delays where this one sets none."""
        return Timing(
            default.answer_delay if self.answer_delay is None else self.answer_delay,
            default.progress_delay if self.progress_delay is None else self.progress_delay,
        )


# --- the tables ----------------------------------------------------------------------------


def _current_temperature(request: CommandRequest) -> dict[str, Any]:
    return {"current_temperature": request.params.get("value")}


THERMOSTAT = Behaviour(
    commands={
        "set_temperature": (started(), succeed(_current_temperature)),
        # About 2 s in all, so a reboot is long enough to observe progress and to cancel.
        "reboot": (started(), progress(50, delay=1.0), succeed(delay=1.0)),
        "self_test": (started(), fail("self test failed: temperature sensor not responding")),
        "factory_reset": (reject("factory reset is not allowed on this device"),),
    }
)

# Receives every command and never answers: what Baton's execution timeout is for.
SILENT = Behaviour(otherwise=())

# iotee's lock (seed 003), on the raw-mapped profile: its answers are words without a body.
IOTEE = Behaviour(
    commands={
        "lock": (started(), succeed()),
        "unlock": (started(), succeed()),
        "self_test": (started(), fail("self test failed")),
    }
)

# Any device type without a table of its own: every command starts, then succeeds.
GENERIC = Behaviour(otherwise=(started(), succeed()))

# An EV charger (deploy/catalog/policies.yaml): it answers, then reports the state the
# command asked for, which is what a verification rule checks.
CHARGER = Behaviour(
    commands={
        "StartCharging": (started(), succeed(delay=0.2), report_state({"charging": True})),
        "StopCharging": (started(), succeed(delay=0.2), report_state({"charging": False})),
    },
    otherwise=(started(), succeed(delay=0.3)),
)

# A charger that says it started charging but reports it is not: a verification fails.
STUBBORN_CHARGER = Behaviour(
    commands={
        "StartCharging": (started(), succeed(delay=0.2), report_state({"charging": False})),
        "StopCharging": (started(), succeed(delay=0.2), report_state({"charging": False})),
    },
    otherwise=(started(), succeed(delay=0.3)),
)

BEHAVIOURS: Mapping[str, Behaviour] = {
    "thermostat": THERMOSTAT,
    "silent": SILENT,
    "iotee": IOTEE,
    "generic": GENERIC,
    "charger": CHARGER,
    "stubborn-charger": STUBBORN_CHARGER,
}


# --- a script made concrete for one request ------------------------------------------------


@dataclass(frozen=True)
class Action:
    delay: float
    answer: DeviceAnswer | None
    offline_for: float = 0.0
    state: dict[str, Any] | None = None


def plan(behaviour: Behaviour, request: CommandRequest) -> list[Action]:
    """The actions a device takes for `request`, in order.

    Answer ids are `{execution_id}-{n}`: unique per answer, and the same if the device runs
    the same execution again (say, after a restart), so Baton records a repeat only once.
    """
    actions: list[Action] = []
    answered = 0
    for step in behaviour.script_for(request.name):
        answer = None
        if step.status is not None:
            answered += 1
            answer = DeviceAnswer(
                status=step.status,
                payload=step.payload(request),
                answer_id=f"{request.execution_id}-{answered}",
            )
        state = None if step.state is None else step.state(request)
        actions.append(Action(step.delay, answer, step.offline_for, state))
    return actions
