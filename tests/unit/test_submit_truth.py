"""Issue 6, defects 4-6: a submit's answer tells the truth.

4. An empty (or blank) Idempotency-Key is refused, over HTTP and NATS; the domain treats
   every key that is not None as a key; a write conflict that outlasts the retries is an
   answered problem, never silence.
5. A submit the dispatcher did not answer in time is an *unknown* outcome (503
   `outcome-unknown` with the execution id the api fixed beforehand and its Location), not
   "nothing was stored"; the dispatcher drops a request whose requester stopped waiting.
6. A body over the documented limit is 413 `payload-too-large`, naming the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from litestar.testing import TestClient
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from baton_api.app import create_app
from baton_api.gateway import NatsGateway
from baton_api.inmemory import InMemoryGateway
from baton_api.limits import MAX_BODY_BYTES
from baton_api.nats_link import NatsLink
from baton_contracts.nats import (
    RETRY_SUBJECT,
    RetryCommand,
    SubmitCommand,
    partition_of,
    partition_subject,
)
from baton_dispatcher.writer import Writer
from baton_domain.application import Executions, RequestCommand, idempotent_execution_id
from baton_domain.catalog import Catalog
from baton_domain.errors import IdempotencyConflict, InvalidCommand
from baton_platform.commands import CommandHandlers
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROBLEM = "application/problem+json"
URL = "/v1/devices/demo-thermostat-1/commands"
BODY = {"name": "set_temperature", "params": {"value": 21}}
TIMEOUT = 5.0


@pytest.fixture
def executions() -> Executions:
    return Executions(Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def client_for(tmp_path: Path, executions: Executions, gateway: Any) -> TestClient[Any]:
    settings = Settings(data_dir=tmp_path, api_keys=KEY, projection_poll_interval=0.05)
    app = create_app(settings, gateway=gateway, executions=executions)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path: Path, executions: Executions) -> Iterator[TestClient[Any]]:
    with client_for(tmp_path, executions, InMemoryGateway(executions)) as test_client:
        yield test_client


def problem_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    return body


def stored(executions: Executions) -> int:
    return executions.recorder.max_notification_id() or 0


# --- 4. the empty Idempotency-Key ----------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_or_blank_idempotency_key_is_refused_naming_the_header(
    client: TestClient[Any], executions: Executions, key: str
) -> None:
    headers = {**AUTH, "Idempotency-Key": key}
    for _ in range(2):  # the first used to be 201, every later one a failure
        body = problem_of(client.post(URL, json=BODY, headers=headers), 422, "validation-failed")
        assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]
    assert stored(executions) == 0
    assert client.post(URL, json=BODY, headers=AUTH).status_code == 201


@pytest.mark.parametrize("key", ["", " ", "\t"])
def test_submit_command_refuses_an_empty_or_blank_key(key: str) -> None:
    with pytest.raises(ValidationError) as refused:
        SubmitCommand(device_id="demo-thermostat-1", name="reboot", idempotency_key=key)
    assert refused.value.errors()[0]["loc"] == ("idempotency_key",)
    assert SubmitCommand(device_id="d", name="reboot", idempotency_key=" a ").idempotency_key


def test_the_domain_treats_every_key_that_is_not_none_as_a_key(executions: Executions) -> None:
    command = RequestCommand("demo-thermostat-1", "reboot", {}, None, idempotency_key="")
    first = executions.request(command)
    again = executions.request(command)  # used to raise the store's IntegrityError
    assert first.created and not again.created
    assert again.execution.id == first.execution.id
    assert first.execution.fingerprint == command.fingerprint()


async def test_a_write_conflict_that_outlasts_the_retries_is_an_answered_problem(
    executions: Executions, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsourcing.persistence import IntegrityError

    def always_conflicting(*_aggregates: object, **_kw: object) -> None:
        raise IntegrityError("another writer got there first")

    monkeypatch.setattr(executions, "save", always_conflicting)
    writer = Writer(executions, on_stored=lambda: None)
    try:
        reply = await writer.submit(SubmitCommand(device_id="demo-thermostat-1", name="reboot"))
    finally:
        writer.close()
    assert reply.problem is not None and reply.execution is None
    assert (reply.problem.status, reply.problem.code) == (503, "write-conflict")
    assert reply.problem.retry_after is not None


# --- 5. an unknown outcome is never "nothing stored" ---------------------------------------


class FakeNats:
    """A connected NATS client whose request fails as `error` says; records what was sent."""

    is_connected = True
    max_payload = 1024 * 1024

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes]] = []

    async def request(self, subject: str, payload: bytes, timeout: float) -> Any:
        self.sent.append((subject, payload))
        raise self.error


def failing_gateway(error: Exception) -> tuple[NatsGateway, FakeNats]:
    link = NatsLink("nats://unused", on_event=lambda: None)
    fake = FakeNats(error)
    link.client = fake  # type: ignore[assignment]
    return NatsGateway(link, TIMEOUT), fake


def sent_command(fake: FakeNats) -> SubmitCommand:
    [(subject, payload)] = fake.sent
    # Straight to the subject of the device's partition: only its dispatcher answers there.
    assert subject == partition_subject(partition_of("demo-thermostat-1"), "submit")
    return SubmitCommand.model_validate_json(payload)


@pytest.mark.parametrize("key", [None, "order-42"])
def test_a_submit_the_dispatcher_did_not_answer_is_an_unknown_outcome(
    tmp_path: Path, executions: Executions, key: str | None
) -> None:
    gateway, fake = failing_gateway(NatsTimeoutError())
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    with client_for(tmp_path, executions, gateway) as client:
        before = datetime.now(UTC)
        response = client.post(URL, json=BODY, headers=headers)
        body = problem_of(response, 503, "outcome-unknown")
        command = sent_command(fake)
        # The api fixed the id before asking; a key still decides it (keyed retries meet).
        assert command.execution_id is not None
        if key is not None:
            assert command.execution_id == idempotent_execution_id(command.principal, key)
        assert body["execution_id"] == str(command.execution_id)
        assert response.headers["location"] == f"/v1/executions/{command.execution_id}"
        assert "may have been stored" in body["detail"]
        assert "retry-after" not in response.headers  # a blind retry is what must not happen
        # The dispatcher is told when the api stops waiting, with time left for its answer.
        assert command.answer_by is not None
        assert before < command.answer_by < before + timedelta(seconds=TIMEOUT)
        # Nothing was stored here, and a GET says so.
        problem_of(
            client.get(response.headers["location"], headers=AUTH), 404, "execution-not-found"
        )


@pytest.mark.parametrize("key", [None, "redo-42"])
def test_a_retry_the_dispatcher_did_not_answer_is_an_unknown_outcome_naming_its_id(
    tmp_path: Path, executions: Executions, key: str | None
) -> None:
    """As a submit: the api fixes the new execution's id before asking, so the 503 names
    the execution a GET settles it with, and the request is one the dispatcher applies once."""
    first = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, None))
    executions.cancel(first.execution.id, "stop")
    gateway, fake = failing_gateway(NatsTimeoutError())
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    with client_for(tmp_path, executions, gateway) as client:
        before = datetime.now(UTC)
        response = client.post(f"/v1/executions/{first.execution.id}/retry", headers=headers)
        body = problem_of(response, 503, "outcome-unknown")
        [(subject, payload)] = fake.sent
        command = RetryCommand.model_validate_json(payload)
        assert subject == RETRY_SUBJECT and command.execution_id == first.execution.id
        assert command.retry_id is not None and command.idempotency_key == key
        if key is not None:
            assert command.retry_id == idempotent_execution_id(command.principal, key)
        assert body["execution_id"] == str(command.retry_id)
        assert response.headers["location"] == f"/v1/executions/{command.retry_id}"
        assert "retry-after" not in response.headers
        assert command.answer_by is not None
        assert before < command.answer_by < before + timedelta(seconds=TIMEOUT)


async def test_the_dispatcher_drops_a_retry_whose_requester_stopped_waiting(
    executions: Executions,
) -> None:
    first = executions.request(RequestCommand("demo-thermostat-1", "reboot", {}, None))
    executions.cancel(first.execution.id, "stop")
    before = rejected("request-expired")
    writer = Writer(executions, on_stored=lambda: None)
    late = RetryCommand(
        execution_id=first.execution.id,
        retry_id=uuid4(),
        answer_by=datetime.now(UTC) - timedelta(milliseconds=1),
    )
    try:
        dropped = await writer.retry(late)
    finally:
        writer.close()
    assert dropped.problem is not None and dropped.execution is None
    assert (dropped.problem.code, dropped.problem.execution_id) == (
        "request-expired", late.retry_id,
    )  # fmt: skip
    assert rejected("request-expired") == before + 1
    assert executions.get(first.execution.id).retries == []


@pytest.mark.parametrize("connected", [True, False])
def test_only_a_request_that_was_never_sent_is_nothing_stored(
    tmp_path: Path, executions: Executions, connected: bool
) -> None:
    gateway, fake = failing_gateway(NoRespondersError())
    fake.is_connected = connected
    with client_for(tmp_path, executions, gateway) as client:
        response = client.post(URL, json=BODY, headers=AUTH)
    body = problem_of(response, 503, "unavailable")
    assert "nothing was stored" in body["detail"]
    assert response.headers["retry-after"] == "1"
    assert "execution_id" not in body


def test_the_domain_uses_the_execution_id_it_is_given(executions: Executions) -> None:
    chosen = uuid4()
    command = RequestCommand("demo-thermostat-1", "reboot", {}, None, execution_id=chosen)
    first = executions.request(command)
    assert first.created and first.execution.id == chosen
    again = executions.request(command)  # a repeat finds it: no second execution
    assert not again.created and again.execution.id == chosen
    with pytest.raises(IdempotencyConflict):
        executions.request(
            RequestCommand("demo-thermostat-1", "reboot", {}, 9, execution_id=chosen)
        )


def test_a_key_and_an_execution_id_that_disagree_are_refused(executions: Executions) -> None:
    command = RequestCommand(
        "demo-thermostat-1", "reboot", {}, None, idempotency_key="k", execution_id=uuid4()
    )
    with pytest.raises(InvalidCommand) as refused:
        executions.request(command)
    assert [e.field for e in refused.value.errors] == ["execution_id"]
    agreeing = RequestCommand(
        "demo-thermostat-1",
        "reboot",
        {},
        None,
        idempotency_key="k",
        execution_id=idempotent_execution_id("anonymous", "k"),
    )
    assert executions.request(agreeing).created


def rejected(reason: str) -> float:
    return float(REJECTED_MESSAGES.labels(service="dispatcher", reason=reason)._value.get())


async def test_the_dispatcher_drops_a_submit_whose_requester_stopped_waiting(
    executions: Executions,
) -> None:
    before = rejected("request-expired")
    writer = Writer(executions, on_stored=lambda: None)
    late = SubmitCommand(
        device_id="demo-thermostat-1",
        name="reboot",
        execution_id=uuid4(),
        answer_by=datetime.now(UTC) - timedelta(milliseconds=1),
    )
    in_time = late.model_copy(
        update={"execution_id": uuid4(), "answer_by": datetime.now(UTC) + timedelta(seconds=5)}
    )
    try:
        dropped = await writer.submit(late)
        taken = await writer.submit(in_time)
    finally:
        writer.close()
    assert dropped.problem is not None and dropped.execution is None
    assert (dropped.problem.status, dropped.problem.code) == (503, "request-expired")
    assert rejected("request-expired") == before + 1
    assert taken.created and taken.execution is not None
    assert taken.execution.id == in_time.execution_id
    assert stored(executions) == taken.position  # only the one in time was stored


def test_the_in_memory_path_answers_like_the_dispatcher(executions: Executions) -> None:
    chosen = uuid4()
    reply = CommandHandlers(executions).submit(
        SubmitCommand(device_id="demo-thermostat-1", name="reboot", execution_id=chosen)
    )
    assert reply.execution is not None and reply.execution.id == chosen


# --- 6. bodies too large for the message bus ----------------------------------------------


def big_params(size: int) -> dict[str, Any]:
    return {"value": 21, "blob": "x" * size}


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (URL, {"name": "set_temperature", "params": big_params(MAX_BODY_BYTES)}),
        (
            "/fleets/api/v1/commands",  # the Fleets dialect
            {
                "thingId": "demo-thermostat-1",
                "action": "reboot",
                "params": big_params(MAX_BODY_BYTES),
            },
        ),
        (URL, {"name": "set_temperature", "params": big_params(2 * 1024 * 1024)}),
    ],
)
def test_a_body_over_the_limit_is_413_naming_the_limit(
    client: TestClient[Any], executions: Executions, url: str, body: dict[str, Any]
) -> None:
    response = client.post(url, json=body, headers=AUTH)
    found = problem_of(response, 413, "payload-too-large")
    assert str(MAX_BODY_BYTES) in found["detail"]
    assert "retry-after" not in response.headers
    assert stored(executions) == 0


def test_a_body_just_under_the_limit_is_not_refused_for_its_size(client: TestClient[Any]) -> None:
    body = {"name": "set_temperature", "params": {"value": 21, "blob": "x" * 1000}}
    assert client.post(URL, json=body, headers=AUTH).status_code != 413


def test_a_command_too_large_for_the_bus_is_413_not_503(
    tmp_path: Path, executions: Executions
) -> None:
    gateway, _fake = failing_gateway(MaxPayloadError())
    with client_for(tmp_path, executions, gateway) as client:
        response = client.post(URL, json=BODY, headers=AUTH)
    problem_of(response, 413, "payload-too-large")
    assert "retry-after" not in response.headers


def test_a_small_body_that_grows_on_the_wire_is_413_before_it_is_sent(
    tmp_path: Path, executions: Executions
) -> None:
    """`1E15` is 4 bytes in the body and 18 once encoded: the encoded command is measured."""
    gateway, fake = failing_gateway(NatsTimeoutError())
    numbers = "[" + ",".join(["1E15"] * (MAX_BODY_BYTES // 5 - 100)) + "]"
    raw = '{"name": "set_temperature", "params": {"value": 21, "n": ' + numbers + "}}"
    assert len(raw) < MAX_BODY_BYTES
    with client_for(tmp_path, executions, gateway) as client:
        response = client.post(
            URL, content=raw, headers={**AUTH, "Content-Type": "application/json"}
        )
    problem_of(response, 413, "payload-too-large")
    assert fake.sent == []
