"""The Executions application, one narrative run against every persistence backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from baton_domain.application import Executions, RequestCommand, idempotent_execution_id
from baton_domain.catalog import Catalog
from baton_domain.delivery import queue_id
from baton_domain.errors import (
    ExecutionDeleted,
    ExecutionNotFound,
    IdempotencyConflict,
    IllegalTransition,
    InvalidCommand,
    UnknownDevice,
)
from baton_domain.execution import CommandExecution
from baton_domain.statuses import AnswerStatus, ExecutionStatus
from baton_platform.eventstore import postgres_env

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["popo", "sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "popo":
        yield {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    elif request.param == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "events.sqlite"),
        }
    else:
        yield postgres_env(request.getfixturevalue("postgres_url"))


def test_an_execution_from_request_to_success(env: dict[str, str]) -> None:
    clock = Clock()
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=clock)
    outcome = app.request(
        RequestCommand("demo-thermostat-1", "set_temperature", {"value": 21}, None)
    )
    assert outcome.created and outcome.position is not None
    execution_id = outcome.execution.id
    assert outcome.execution.status is ExecutionStatus.PENDING
    assert outcome.execution.ttl == 30  # the command's default
    assert outcome.execution.deadline == clock.now + timedelta(seconds=30)

    assert app.record_published(execution_id).changed
    assert not app.record_published(execution_id).changed  # at-least-once delivery
    app.record_answer(execution_id, "demo-thermostat-1", "a", AnswerStatus.STARTED, {}, clock.now)
    done = app.record_answer(
        execution_id,
        "demo-thermostat-1",
        "b",
        AnswerStatus.SUCCEEDED,
        {"current_temperature": 21},
        clock.now,
    )
    assert done.execution.status is ExecutionStatus.SUCCEEDED
    assert app.get(execution_id).result == {"current_temperature": 21}
    types = [type(e).__name__ for e in app.events_of(execution_id)]
    assert types == ["Requested", "Dispatched", "Published", "Acknowledged", "Succeeded"]

    clock.now += timedelta(seconds=31)
    assert not app.reach_deadline(execution_id).changed  # already ended
    with pytest.raises(IllegalTransition):
        app.cancel(execution_id, "too late")

    # Positions in the notification log grow with every stored event.
    notifications = app.recorder.select_notifications(start=1, limit=100)
    assert [n.id for n in notifications] == sorted(n.id for n in notifications)
    assert notifications[-1].id == done.position


def test_deadline_expires_or_times_out(env: dict[str, str]) -> None:
    clock = Clock()
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=clock)
    pending = app.request(RequestCommand("demo-silent-1", "reboot", {}, 5)).execution.id
    sent = app.request(RequestCommand("demo-silent-1", "reboot", {}, 5)).execution.id
    app.record_published(sent)
    clock.now += timedelta(seconds=5)
    assert app.reach_deadline(pending).execution.status is ExecutionStatus.EXPIRED
    assert app.reach_deadline(sent).execution.status is ExecutionStatus.TIMED_OUT


def test_idempotency_key(env: dict[str, str]) -> None:
    app = Executions(Catalog.from_yaml(DEMO), env=env)
    first = RequestCommand(
        "demo-thermostat-1", "reboot", {}, None, idempotency_key="k1", principal="p"
    )
    a = app.request(first)
    b = app.request(first)
    assert a.created and not b.created
    assert a.execution.id == b.execution.id
    # Another principal's identical key is another request.
    other = RequestCommand(
        "demo-thermostat-1", "reboot", {}, None, idempotency_key="k1", principal="q"
    )
    assert app.request(other).execution.id != a.execution.id
    changed = RequestCommand(
        "demo-thermostat-2", "reboot", {}, None, idempotency_key="k1", principal="p"
    )
    with pytest.raises(IdempotencyConflict):
        app.request(changed)


def test_bad_requests_store_nothing(env: dict[str, str]) -> None:
    app = Executions(Catalog.from_yaml(DEMO), env=env)
    with pytest.raises(UnknownDevice):
        app.request(RequestCommand("nope", "reboot", {}, None))
    with pytest.raises(InvalidCommand) as unknown:
        app.request(RequestCommand("demo-thermostat-1", "dance", {}, None))
    assert unknown.value.errors[0].field == "name"
    with pytest.raises(InvalidCommand) as invalid:
        app.request(RequestCommand("demo-thermostat-1", "set_temperature", {"value": 99}, None))
    assert [e.field for e in invalid.value.errors] == ["params.value"]
    assert "maximum" in invalid.value.errors[0].reason
    assert app.recorder.select_notifications(start=1, limit=10) == []
    with pytest.raises(ExecutionNotFound):
        app.get(uuid4())


def test_retry_links_both_ways_delete_and_purge(env: dict[str, str]) -> None:
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=Clock())
    first = app.request(
        RequestCommand("demo-thermostat-1", "self_test", {}, 7, ephemeral=True)
    ).execution.id
    with pytest.raises(IllegalTransition):
        app.retry(first, "key:admin", "api")  # still running
    app.cancel(first, "stop")
    retried = app.retry(first, "key:admin", "api")
    assert retried.created and retried.position is not None
    second = retried.execution
    assert (second.retry_of, second.name, second.ttl, second.ephemeral) == (
        first, "self_test", 7, True,
    )  # fmt: skip
    assert app.get(first).retries == [second.id]

    deleted = app.delete(second.id, "by admin")
    assert deleted.execution.status is ExecutionStatus.CANCELED  # it was running
    with pytest.raises(ExecutionNotFound):
        app.get(second.id)
    assert [type(e).__name__ for e in app.events_of(second.id)][-2:] == ["Canceled", "Deleted"]
    with pytest.raises(ExecutionNotFound):
        app.delete(second.id, "again")

    count, position = app.purge([first, second.id, uuid4()], "purged")
    assert count == 1 and position is not None
    with pytest.raises(ExecutionNotFound):
        app.get(first)
    assert app.purge([first], "purged") == (0, None)


def test_a_retry_asked_again_with_its_id_or_key_finds_the_retry_it_made(
    env: dict[str, str],
) -> None:
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=Clock())
    first = app.request(RequestCommand("demo-thermostat-1", "self_test", {}, 7)).execution.id
    app.cancel(first, "stop")
    chosen = uuid4()
    made = app.retry(first, "key:op", "api", retry_id=chosen)
    again = app.retry(first, "key:op", "api", retry_id=chosen)  # its answer was lost
    assert (made.created, made.execution.id, made.execution.retry_of) == (True, chosen, first)
    assert (again.created, again.changed, again.execution.id) == (False, False, chosen)
    assert app.get(first).retries == [chosen]

    keyed = app.retry(first, "key:op", "api", idempotency_key="redo-1")
    assert keyed.execution.id == idempotent_execution_id("key:op", "redo-1")
    assert app.retry(first, "key:op", "api", idempotency_key="redo-1").created is False
    assert app.get(first).retries == [chosen, keyed.execution.id]

    # The key already names a retry of another execution, or a submit: not this retry.
    other = app.request(RequestCommand("demo-thermostat-2", "self_test", {}, 7)).execution.id
    app.cancel(other, "stop")
    with pytest.raises(IdempotencyConflict, match="different request"):
        app.retry(other, "key:op", "api", idempotency_key="redo-1")
    app.request(RequestCommand("demo-thermostat-1", "reboot", {}, None, "k2", principal="key:op"))
    with pytest.raises(IdempotencyConflict):
        app.retry(first, "key:op", "api", idempotency_key="k2")
    with pytest.raises(InvalidCommand, match="retry_id does not match"):
        app.retry(first, "key:op", "api", retry_id=uuid4(), idempotency_key="redo-2")

    # A deleted retry's key stays used, and the refusal says why.
    app.delete(keyed.execution.id, "by admin")
    with pytest.raises(IdempotencyConflict, match="since deleted"):
        app.retry(first, "key:op", "api", idempotency_key="redo-1")


def test_an_alias_is_recorded_with_its_manifest_name(env: dict[str, str], tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "device_types: {lamp: {commands: {change_lux: {aliases: [change_color_temperature]}}}}\n"
        "devices: [{id: lamp-1, type: lamp}]\n"
    )
    app = Executions(Catalog.from_yaml(catalog), env=env, clock=Clock())
    execution = app.request(RequestCommand("lamp-1", "change_color_temperature", {}, None))
    assert (execution.execution.name, execution.execution.requested_name) == (
        "change_lux", "change_color_temperature",
    )  # fmt: skip


def test_who_asked_is_recorded_on_every_event_a_caller_caused(env: dict[str, str]) -> None:
    """requested, canceled, retried, deleted, purged: each names its caller; what Baton did
    on its own (dispatching, a deadline) names nobody. Read back from the store."""
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=Clock())
    command = RequestCommand("demo-thermostat-1", "self_test", {}, 7, principal="key:alice")
    first = app.request(command).execution.id
    app.cancel(first, "stop", by="key:bob")
    second = app.retry(first, "key:carol", "api").execution.id
    app.delete(second, "by admin", by="key:admin")  # running: canceled, then deleted
    third = app.request(RequestCommand("demo-thermostat-2", "self_test", {}, 7)).execution.id
    app.purge([third], "purged", by="baton:retention")

    def by(execution_id: UUID) -> list[tuple[str, str | None]]:
        found = []
        for event in app.events_of(execution_id):
            who = getattr(event, "requested_by", getattr(event, "by", "-"))
            if who != "-":
                found.append((type(event).__name__, who))
        return found

    assert by(first) == [
        ("Requested", "key:alice"), ("Canceled", "key:bob"), ("Retried", "key:carol"),
    ]  # fmt: skip
    assert by(second) == [
        ("Requested", "key:carol"), ("Canceled", "key:admin"), ("Deleted", "key:admin"),
    ]  # fmt: skip
    assert by(third) == [
        ("Requested", "anonymous"), ("Canceled", "baton:retention"), ("Deleted", "baton:retention"),
    ]  # fmt: skip


def test_events_stored_before_who_asked_was_recorded_read_as_nobody() -> None:
    requested: dict[str, object] = {"name": "reboot"}
    CommandExecution.Requested.upcast_v1_v2(requested)
    CommandExecution.Requested.upcast_v2_v3(requested)
    assert requested["requested_by"] is None
    for event_class in (
        CommandExecution.Canceled,
        CommandExecution.Retried,
        CommandExecution.Deleted,
    ):
        state: dict[str, object] = {}
        event_class.upcast_v1_v2(state)
        assert state == {"by": None}


def test_on_postgres_the_store_goes_on_after_the_server_dropped_its_connections(
    postgres_url: str,
) -> None:
    """A server restart drops every connection of the pool: the next command still stores
    (eventsourcing tries again on another connection), and so does a reader's next read."""
    import psycopg

    from baton_platform.sql import conninfo, postgres_params

    app = Executions(Catalog.from_yaml(DEMO), env=postgres_env(postgres_url))
    try:
        first = app.request(RequestCommand("demo-thermostat-1", "reboot", {}, None))
        with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (postgres_params(postgres_url)["dbname"],),
            ).fetchall()
        assert dropped  # the pool's connections
        second = app.request(RequestCommand("demo-thermostat-2", "reboot", {}, None))
        assert second.position is not None and first.position is not None
        assert second.position > first.position
        assert app.recorder.max_notification_id() == second.position
    finally:
        app.close()


def test_committed_reads_what_the_last_commit_left(env: dict[str, str]) -> None:
    """What any thread may read while the writer writes: the stored execution, never a batch
    in progress; a deleted one, an unknown id or another stream's id is not found."""
    app = Executions(Catalog.from_yaml(DEMO), env=env, clock=Clock())
    requested = app.request(RequestCommand("demo-thermostat-1", "reboot", {}, 5)).execution

    def cancel_and_look() -> tuple[ExecutionStatus, ExecutionStatus]:
        app.cancel(requested.id, "stop")
        return app.get(requested.id).status, app.committed(requested.id).status

    [looked] = app.run_batch([cancel_and_look])
    assert looked.unwrap() == (ExecutionStatus.CANCELED, ExecutionStatus.PENDING)
    committed = app.committed(requested.id)
    assert (committed.status, committed.deadline) == (ExecutionStatus.CANCELED, requested.deadline)
    app.delete(requested.id, "gone")
    with pytest.raises(ExecutionDeleted):
        app.committed(requested.id)
    for other in (uuid4(), queue_id("demo-thermostat-1")):
        with pytest.raises(ExecutionNotFound):
            app.committed(other)
