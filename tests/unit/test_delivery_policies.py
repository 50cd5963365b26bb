"""Delivery policies in the Executions application (the dispatcher's write side): offline
queueing, one command at a time, cooldown, the per-device cap. One narrative per policy,
run against every persistence backend; on SQLite a second application over the same file
(a restarted dispatcher) carries on where the first stopped."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.errors import CooldownActive, QueueFull
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_platform.problems import problem_for

CATALOG = """
device_types:
  charger:
    delivery: one-at-a-time
    commands:
      StartCharging: {cooldown: 60}
      StopCharging: {}
  lamp:
    commands:
      blink: {}
      calibrate: {delivery: one-at-a-time}  # overrides the type's parallel delivery
devices:
  - {id: charger-1, type: charger}
  - {id: lamp-1, type: lamp}
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


Opener = Callable[[], Executions]


@pytest.fixture(params=["popo", "sqlite"])
def open_app(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the application; on SQLite every call is a fresh one over the same store."""
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG)
    catalog = Catalog.from_yaml(catalog_path)
    clock = Clock()
    if request.param == "popo":
        app = Executions(catalog, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
        return lambda: app
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "e.db")}
    return lambda: Executions(catalog, env=env, clock=clock, max_waiting=3)


def send(app: Executions, device: str, name: str, **extra: object) -> UUID:
    command = RequestCommand(device, name, {}, None, **extra)  # type: ignore[arg-type]
    return app.request(command).execution.id


def status(app: Executions, execution_id: UUID) -> tuple[ExecutionStatus, bool]:
    execution = app.get(execution_id)
    return execution.status, execution.dispatched


def finish(app: Executions, execution_id: UUID) -> None:
    app.record_answer(
        execution_id, app.get(execution_id).device_id, f"done-{execution_id}",
        AnswerStatus.SUCCEEDED, {}, datetime.now(UTC),
    )  # fmt: skip


def test_offline_devices_keep_commands_pending_until_they_connect(open_app: Opener) -> None:
    app = open_app()
    first = send(app, "lamp-1", "blink")
    assert status(app, first) == (ExecutionStatus.PENDING, True)  # unknown counts as online
    assert app.record_presence("lamp-1", False, datetime.now(UTC)) is not None
    assert app.record_presence("lamp-1", False, datetime.now(UTC)) is None  # no change
    waiting = [send(app, "lamp-1", "blink") for _ in range(2)]
    assert [status(app, w) for w in waiting] == [(ExecutionStatus.PENDING, False)] * 2

    app = open_app()  # a restarted dispatcher knows the device is offline
    assert status(app, send(app, "lamp-1", "blink"))[1] is False
    assert app.record_presence("lamp-1", True, datetime.now(UTC)) is not None
    assert all(app.get(w).dispatched for w in waiting)  # parallel: all go at once
    assert app.queue_of("lamp-1").waiting == []


def test_a_waiting_command_expires_when_its_ttl_runs_out(open_app: Opener) -> None:
    app = open_app()
    app.record_presence("lamp-1", False, datetime.now(UTC))
    waiting = send(app, "lamp-1", "blink")
    app.clock.now += timedelta(seconds=31)  # type: ignore[attr-defined]
    assert app.reach_deadline(waiting).execution.status is ExecutionStatus.EXPIRED
    assert app.queue_of("lamp-1").waiting == []
    app.record_presence("lamp-1", True, datetime.now(UTC))
    assert app.get(waiting).status is ExecutionStatus.EXPIRED  # never sent


def test_one_at_a_time_sends_the_next_when_the_previous_ended(open_app: Opener) -> None:
    app = open_app()
    first = send(app, "charger-1", "StopCharging")
    second = send(app, "charger-1", "StopCharging")
    third = send(app, "charger-1", "StopCharging")
    assert [app.get(e).dispatched for e in (first, second, third)] == [True, False, False]

    app = open_app()  # restarted: the order is kept
    finish(app, first)
    assert [app.get(e).dispatched for e in (second, third)] == [True, False]
    app.cancel(second, "no longer needed")
    assert app.get(third).dispatched
    assert app.queue_of("charger-1").in_flight == [third]


def test_cooldown_refuses_a_repeat_unless_ignored(open_app: Opener) -> None:
    app = open_app()
    send(app, "charger-1", "StartCharging")
    app.clock.now += timedelta(seconds=10)  # type: ignore[attr-defined]
    with pytest.raises(CooldownActive) as caught:
        send(app, "charger-1", "StartCharging")
    problem = problem_for(caught.value)
    assert (problem.status, problem.code, problem.retry_after) == (429, "cooldown-active", 50.0)
    assert "StartCharging" in problem.detail
    send(app, "charger-1", "StopCharging")  # another command has its own cooldown
    overridden = send(app, "charger-1", "StartCharging", ignore_cooldown=True)
    assert app.get(overridden).name == "StartCharging"
    app = open_app()
    app.clock.now += timedelta(seconds=61)  # type: ignore[attr-defined]
    send(app, "charger-1", "StartCharging")  # the cooldown is over


def test_the_per_device_cap_refuses_more_waiting_commands(open_app: Opener) -> None:
    app = open_app()
    app.record_presence("lamp-1", False, datetime.now(UTC))
    cap = app.max_waiting
    waiting = [send(app, "lamp-1", "blink") for _ in range(cap)]
    before = app.recorder.max_notification_id()
    with pytest.raises(QueueFull) as caught:
        send(app, "lamp-1", "blink")
    assert problem_for(caught.value).status == 429
    assert app.recorder.max_notification_id() == before  # nothing stored
    app.cancel(waiting[0], "make room")
    send(app, "lamp-1", "blink")  # room again


def test_a_full_queue_of_an_offline_device_names_no_time_to_retry(open_app: Opener) -> None:
    """Its commands go out when it reconnects, which no one knows: a `Retry-After` of a
    second would only have the client ask again and again. The detail says why."""
    app = open_app()
    app.record_presence("lamp-1", False, datetime.now(UTC))
    for _ in range(app.max_waiting):
        send(app, "lamp-1", "blink")
    with pytest.raises(QueueFull) as caught:
        send(app, "lamp-1", "blink")
    problem = problem_for(caught.value)
    assert (problem.status, problem.code, problem.retry_after) == (429, "queue-full", None)
    assert "'lamp-1' is offline" in problem.detail
    assert "once it is back online" in problem.detail


def test_a_full_queue_of_a_busy_device_says_to_retry_soon(open_app: Opener) -> None:
    """Online, its commands go out as those before them end: worth asking again soon."""
    app = open_app()
    app.record_presence("charger-1", True, datetime.now(UTC))
    send(app, "charger-1", "StopCharging")  # in flight: the rest wait (one at a time)
    for _ in range(app.max_waiting):
        send(app, "charger-1", "StopCharging")
    with pytest.raises(QueueFull) as caught:
        send(app, "charger-1", "StopCharging")
    problem = problem_for(caught.value)
    assert (problem.status, problem.code, problem.retry_after) == (429, "queue-full", 1.0)
    assert "'charger-1' is busy" in problem.detail


def test_a_copied_queue_shares_no_container_with_the_original() -> None:
    import copy

    from baton_domain.delivery import DeviceQueue

    queue = DeviceQueue("lamp-1")
    queue.admit(UUID(int=1), "blink", datetime.now(UTC), "parallel", 0, False, 10)
    clone = copy.deepcopy(queue)
    clone.admit(UUID(int=2), "blink", datetime.now(UTC), "parallel", 0, False, 10)
    clone.set_presence(False, datetime.now(UTC))
    assert (queue.in_flight, queue.online, len(queue.pending_events)) == ([UUID(int=1)], None, 2)
    assert (clone.in_flight, clone.online) == ([UUID(int=1), UUID(int=2)], False)


def test_a_command_can_override_the_types_delivery_policy(open_app: Opener) -> None:
    app = open_app()
    blink = send(app, "lamp-1", "blink")
    calibrate = send(app, "lamp-1", "calibrate")
    assert status(app, calibrate) == (ExecutionStatus.PENDING, False)  # the lamp is busy
    another = send(app, "lamp-1", "blink")
    assert app.get(another).dispatched  # parallel commands still go at once
    finish(app, blink)
    assert not app.get(calibrate).dispatched  # `another` is still in flight
    app = open_app()
    finish(app, another)
    assert app.get(calibrate).dispatched  # idle now: its turn


def test_a_copied_execution_shares_no_container_with_the_original() -> None:
    import copy

    from baton_domain.execution import CommandExecution

    now = datetime.now(UTC)
    execution = CommandExecution(
        id=UUID(int=1), device_id="lamp-1", device_type="lamp", name="blink",
        params={"times": 2}, ttl=30, deadline=now, idempotency_key=None, fingerprint="f",
        source="api", requested_name="blink", ephemeral=False, retry_of=None,
        requested_by="anonymous", tenant="default",
    )  # fmt: skip
    execution.dispatch()
    execution.collect_events()
    clone = copy.deepcopy(execution)
    clone.record_answer("lamp-1", "r1", AnswerStatus.SUCCEEDED, {"ok": True}, now)
    clone.record_retry(UUID(int=2), "anonymous")
    assert (execution.status, execution.log, execution.retries) == (ExecutionStatus.PENDING, [], [])
    assert execution.pending_events == []
    assert (clone.status, len(clone.log), clone.retries) == (
        ExecutionStatus.SUCCEEDED, 1, [UUID(int=2)]
    )  # fmt: skip
    assert [type(e).__name__ for e in clone.pending_events] == ["Published", "Succeeded", "Retried"]
    assert clone.params == execution.params and clone.deadline == execution.deadline
