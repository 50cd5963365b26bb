"""The simulator's behaviour tables, without MQTT: what each command makes a device answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from baton_contracts.mqtt import CommandRequest
from baton_simulator.behaviours import (
    SILENT,
    THERMOSTAT,
    Action,
    Behaviour,
    go_offline,
    plan,
    progress,
    started,
    succeed,
)
from baton_simulator.device import Broker, RecentIds, SimulatedDevice


def request(name: str, params: dict[str, Any] | None = None) -> CommandRequest:
    return CommandRequest(
        execution_id=uuid4(),
        name=name,
        params=params or {},
        deadline=datetime.now(UTC) + timedelta(seconds=30),
    )


def answers(actions: list[Action]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.answer.status, a.answer.payload) for a in actions if a.answer is not None]


def test_set_temperature_starts_then_reports_the_new_temperature() -> None:
    actions = plan(THERMOSTAT, request("set_temperature", {"value": 24}))
    assert answers(actions) == [("STARTED", {}), ("SUCCEEDED", {"current_temperature": 24})]


def test_reboot_reports_progress_over_about_two_seconds() -> None:
    actions = plan(THERMOSTAT, request("reboot"))
    assert answers(actions) == [
        ("STARTED", {}),
        ("IN_PROGRESS", {"progress": 50}),
        ("SUCCEEDED", {}),
    ]
    assert sum(a.delay for a in actions) == pytest.approx(2.0)


def test_self_test_fails_with_a_message() -> None:
    actions = plan(THERMOSTAT, request("self_test"))
    statuses = [status for status, _ in answers(actions)]
    assert statuses == ["STARTED", "FAILED"]
    assert answers(actions)[-1][1]["message"]


def test_factory_reset_is_rejected_with_a_message() -> None:
    [(status, payload)] = answers(plan(THERMOSTAT, request("factory_reset")))
    assert status == "REJECTED"
    assert payload["message"]


def test_an_unknown_command_is_rejected_naming_it() -> None:
    [(status, payload)] = answers(plan(THERMOSTAT, request("make_coffee")))
    assert status == "REJECTED"
    assert "unknown command" in payload["message"]
    assert "make_coffee" in payload["message"]


@pytest.mark.parametrize("name", ["set_temperature", "reboot", "self_test", "whatever"])
def test_a_silent_device_never_answers(name: str) -> None:
    assert plan(SILENT, request(name)) == []


def test_answer_ids_are_unique_per_answer_and_stable_per_execution() -> None:
    command = request("reboot")
    ids = [a.answer.answer_id for a in plan(THERMOSTAT, command) if a.answer is not None]
    assert len(set(ids)) == len(ids) == 3
    assert all(i is not None and str(command.execution_id) in i for i in ids)
    again = [a.answer.answer_id for a in plan(THERMOSTAT, command) if a.answer is not None]
    assert again == ids


def test_a_new_behaviour_is_a_table() -> None:
    flaky = Behaviour(
        commands={"update": (started(), progress(30), go_offline(5.0), succeed(delay=0.5))},
    )
    actions = plan(flaky, request("update"))
    assert [s for s, _ in answers(actions)] == ["STARTED", "IN_PROGRESS", "SUCCEEDED"]
    offline = [a for a in actions if a.answer is None]
    assert [a.offline_for for a in offline] == [5.0]
    assert answers(plan(flaky, request("reboot")))[0][0] == "REJECTED"


def test_recent_ids_forget_the_oldest_beyond_the_limit() -> None:
    seen = RecentIds(limit=2)
    for item in ("a", "b", "c"):
        seen.add(item)
    assert "a" not in seen
    assert "b" in seen
    assert "c" in seen


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("baton/v1/devices/d1/executions/x/request", b"not json"),
        ("baton/v1/devices/d1/executions/x/request", b'{"name": "reboot"}'),
        ("baton/v1/devices/d1/executions/x/cancel", b"{}"),
        ("baton/v1/devices/d1/executions/x/request", None),
        ("baton/v1/devices/other/executions/x/request", b"{}"),
        ("somewhere/else", b"{}"),
    ],
)
def test_a_bad_message_is_logged_and_ignored(
    topic: str, payload: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    device = SimulatedDevice("d1", THERMOSTAT, Broker("127.0.0.1", 1883, "5"))
    device.handle(topic, payload)  # outside an event loop: starting a script would raise
    assert [r.levelname for r in caplog.records if r.name == "baton_simulator"] == ["WARNING"]


def test_the_protocol_must_be_one_baton_speaks() -> None:
    with pytest.raises(ValueError, match=r"5 or 3\.1\.1"):
        Broker("127.0.0.1", 1883, "4")
