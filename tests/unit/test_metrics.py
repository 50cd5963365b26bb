"""What Baton's metrics compute (baton_platform.metrics): the stages of an execution from the
timestamps in its record, counted once per stored event however often a message comes; the
executions not ended per device type; each process of a stack on a metrics port of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prometheus_client import REGISTRY

from baton_cli.devstack import _banner, dev_stack
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.execution import CommandExecution
from baton_domain.statuses import AnswerStatus
from baton_platform import metrics
from baton_platform.metrics import stages_ended, unfinished_per_type
from tests.unit.test_execution_lifecycle import T0, new_execution

ROOT = Path(__file__).resolve().parents[2]
CATALOG = """
device_types:
  charger:
    commands:
      start: {}
devices:
  - {id: charger-1, type: charger}
"""


def ended(execution: CommandExecution) -> dict[str, list[float]]:
    """Every stage the execution's events end, as `observe_recorded` sees them."""
    found: dict[str, list[float]] = {}
    for event in execution.collect_events():
        for stage, seconds in stages_ended(event, execution):
            found.setdefault(stage, []).append(seconds)
    return found


def seconds(start: datetime | None, end: datetime | None) -> float:
    assert start is not None and end is not None
    return (end - start).total_seconds()


# --- the stages, from the record -----------------------------------------------------------


def test_each_stage_is_the_time_between_its_events() -> None:
    execution = new_execution()
    execution.mark_published()
    execution.record_answer("dev-1", "r1", AnswerStatus.STARTED, {}, T0)
    execution.record_answer("dev-1", "r2", AnswerStatus.IN_PROGRESS, {}, T0)
    execution.record_answer("dev-1", "r3", AnswerStatus.SUCCEEDED, {}, T0)
    events = execution.collect_events()
    published, started, succeeded = events[2], events[3], events[5]
    assert execution.published_at == published.timestamp
    assert execution.answered_at == started.timestamp  # the first answer, not a later one
    found: dict[str, list[float]] = {}
    for event in events:
        for stage, value in stages_ended(event, execution):
            found.setdefault(stage, []).append(value)
    assert found == {
        "sent": [seconds(execution.created_on, published.timestamp)],
        "acknowledged": [seconds(published.timestamp, started.timestamp)],
        "terminal": [seconds(started.timestamp, succeeded.timestamp)],
    }


def test_a_first_answer_that_ends_it_ends_two_stages() -> None:
    execution = new_execution()
    execution.record_answer("dev-1", "r1", AnswerStatus.FAILED, {}, T0)  # before `published`
    found = ended(execution)
    assert set(found) == {"sent", "acknowledged", "terminal"}
    assert found["terminal"] == [0.0]


def test_an_execution_nobody_answered_has_no_answer_stages() -> None:
    execution = new_execution()
    execution.mark_published()
    execution.reach_deadline(T0 + timedelta(seconds=31))
    assert set(ended(execution)) == {"sent"}


def test_the_marks_come_back_when_the_aggregate_is_read_from_its_events() -> None:
    execution = new_execution()
    execution.mark_published()
    execution.record_answer("dev-1", "r1", AnswerStatus.SUCCEEDED, {}, T0)
    again: Any = None
    for event in execution.collect_events():
        again = event.mutate(again)
    assert (again.published_at, again.answered_at) == (
        execution.published_at,
        execution.answered_at,
    )


# --- counted once per stored event ---------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Executions]:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    executions = Executions(
        Catalog.from_yaml(path),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        on_recorded=metrics.observe_recorded,
    )
    yield executions
    executions.close()


def counts() -> tuple[float, ...]:
    return (
        sample("baton_executions_total", command="start", status="SUCCEEDED"),
        sample("baton_execution_stage_seconds_count", stage="sent"),
        sample("baton_execution_stage_seconds_count", stage="acknowledged"),
        sample("baton_execution_stage_seconds_count", stage="terminal"),
        sample("baton_execution_duration_seconds_count", status="SUCCEEDED"),
    )


def succeed(app: Executions, execution_id: UUID, report: str = "r1") -> None:
    app.record_published(execution_id)
    app.record_answer(execution_id, "charger-1", report, AnswerStatus.SUCCEEDED, {}, T0)


def test_what_a_commit_stores_is_counted_once_and_a_repeat_not_again(app: Executions) -> None:
    before = counts()
    ids = [app.request(RequestCommand("charger-1", "start", {}, None)).execution.id]
    succeed(app, ids[0])
    # In one group commit, as the dispatcher stores them.
    ids.append(app.request(RequestCommand("charger-1", "start", {}, None)).execution.id)
    app.run_batch([lambda: app.record_published(ids[1])])
    app.run_batch(
        [
            lambda: app.record_answer(ids[1], "charger-1", "a", AnswerStatus.STARTED, {}, T0),
            lambda: app.record_answer(ids[1], "charger-1", "b", AnswerStatus.SUCCEEDED, {}, T0),
        ]
    )
    after_two = counts()
    assert [a - b for a, b in zip(after_two, before, strict=True)] == [2, 2, 2, 2, 2]
    # The same reports again (a redelivery, a replayed stream): nothing stored, nothing counted.
    succeed(app, ids[0])
    app.run_batch([lambda: succeed(app, ids[1], "b")])
    assert counts() == after_two


def test_a_failing_observer_fails_no_write(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)

    def broken(*_: Any) -> None:
        raise RuntimeError("observer down")

    app = Executions(
        Catalog.from_yaml(path),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        on_recorded=broken,
    )
    outcome = app.request(RequestCommand("charger-1", "start", {}, None))
    assert app.get(outcome.execution.id).status.value == "PENDING"


# --- the executions not ended, per device type ---------------------------------------------


def test_waiting_and_in_flight_are_summed_per_device_type() -> None:
    rows = [
        ("t-1", "PENDING", 2),
        ("t-1", "SENT", 1),
        ("t-2", "IN_PROGRESS", 3),
        ("c-1", "ACKNOWLEDGED", 1),
        ("gone", "PENDING", 4),  # its device left the catalog
    ]
    types = {"t-1": "thermostat", "t-2": "thermostat", "c-1": "charger", "l-1": "lamp"}
    assert unfinished_per_type(rows, types) == {
        "thermostat": (2, 4),
        "charger": (0, 1),
        "lamp": (0, 0),
        metrics.UNKNOWN_TYPE: (4, 0),
    }


def test_a_type_no_longer_there_leaves_the_gauges() -> None:
    metrics.set_unfinished({"lamp": (1, 2), "fan": (0, 3)})
    metrics.set_unfinished({"lamp": (0, 1)})
    assert sample("baton_executions_waiting", device_type="lamp") == 0
    assert sample("baton_executions_in_flight", device_type="lamp") == 1
    assert REGISTRY.get_sample_value("baton_executions_in_flight", {"device_type": "fan"}) is None
    metrics.clear_unfinished()
    assert REGISTRY.get_sample_value("baton_executions_in_flight", {"device_type": "lamp"}) is None


# --- a metrics port per process ------------------------------------------------------------


def test_every_replica_of_a_cluster_has_its_own_metrics_port_in_the_banner(
    tmp_path: Path,
) -> None:
    stack = dev_stack(
        data_dir=tmp_path,
        api_key="k",
        catalog=ROOT / "deploy/catalog/demo.yaml",
        metrics_port=9180,
        replicas=2,
        broker="mosquitto",
        api_port=8080,
        nats_port=4222,
        mqtt_port=1883,
        nats_nodes=3,
        replica_api_ports=[18081, 18082],  # what start_infrastructure chooses
    )
    ports = {name: int(stack.service_env(name)["BATON_METRICS_PORT"]) for name in stack.names}
    assert len(ports) == 8
    assert sorted(ports.values()) == list(range(9180, 9188))
    assert ports["dispatcher-2"] == 9184
    assert ports == stack.metrics_ports()
    banner = _banner(stack)
    for name, port in ports.items():
        assert f"http://127.0.0.1:{port}/metrics   ({name})" in banner


# --- rejections ------------------------------------------------------------------------------


def test_a_malformed_access_entry_is_counted_as_rejected() -> None:
    from baton_api.access import InMemoryAccess

    labels = {"service": "api", "reason": "malformed-access-entry"}
    before = sample("baton_rejected_messages_total", **labels)
    access = InMemoryAccess()
    access.apply("keys.k1", b"{not json")
    assert sample("baton_rejected_messages_total", **labels) == before + 1
    assert access.key("k1") is None  # and nothing taken from it
