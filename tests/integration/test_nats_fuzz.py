"""NATS fuzzing: malformed messages on every subject the dispatcher and the scheduler read.

The real dispatcher and timeout-scheduler run in-process against a real nats-server. A fixed
corpus (seeded, so a failure is reproducible: `BATON_NATS_FUZZ_SEED`; `BATON_NATS_FUZZ_CASES`
per subject) of random bytes, invalid UTF-8, deep JSON, wrong types, huge numbers, missing and
unknown fields, truncated JSON and non-objects goes to each request subject, into
BATON_REPORTS and into BATON_EVENTS. Then:

- every request is answered, with the subject's reply model; one that does not fit the
  message schema gets an `invalid-message` problem naming the fields, and is counted;
- every report that is not a report is dead-lettered with a reason and counted; every report
  is acknowledged (the consumer is left with nothing pending: no stall, no loop);
- a malformed lifecycle event is counted by the scheduler and skipped;
- afterwards a valid command still goes all the way: submitted, reported on, and ended by
  the scheduler's deadline.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.aio.client import Client
from pydantic import BaseModel, TypeAdapter, ValidationError

from baton_cli.localstack import Server
from baton_contracts.nats import (
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTERS_STREAM,
    DEADLINE_SUBJECT,
    DELETE_SUBJECT,
    EVENTS_STREAM,
    MAX_COMMAND_BYTES,
    PURGE_SUBJECT,
    REPORT_ADAPTER,
    REPORTS_STREAM,
    RETRY_SUBJECT,
    SUBMIT_SUBJECT,
    CancelCommand,
    CatalogChange,
    CatalogReply,
    DeadlineDue,
    DeadlineReply,
    DeleteCommand,
    ExecutionReply,
    LifecycleEvent,
    PurgeCommand,
    PurgeReply,
    RetryCommand,
    SubmitCommand,
    dead_letter_subject,
    event_subject,
    partition_of,
    report_subject,
)
from baton_dispatcher.app import Dispatcher
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats_access import reports_durable
from baton_platform.settings import Settings
from baton_timeout_scheduler.app import TimeoutScheduler
from baton_timeout_scheduler.edges import DURABLE as SCHEDULER_DURABLE
from tests.conftest import eventually, service_settings

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

SEED = int(os.environ.get("BATON_NATS_FUZZ_SEED", "20261202"))
CASES = int(os.environ.get("BATON_NATS_FUZZ_CASES", "250"))  # per subject
DEVICE = "demo-thermostat-1"
NOW = "2026-12-02T12:00:00+00:00"

JSONish = Any


# --- the corpus ---------------------------------------------------------------------------

WRONG_VALUES: list[JSONish] = [
    None, True, False, 0, -1, 1.5, "", "x", "\u0000", [], {}, [1, "a"], {"a": {"b": None}},
    "9" * 400, "not-a-uuid", "2026-13-45T99:99:99", -(10**30),
]  # fmt: skip
# Written into the JSON text as they are: beyond what a double or an int64 holds.
HUGE_LITERALS = ["1e308", "1e400", "-1e400", "99999999999999999999", "1" + "0" * 400, "NaN"]


def mutations(base: dict[str, JSONish], rng: random.Random) -> Iterator[bytes]:
    """Endless malformed variants of a valid message `base`."""
    fields = list(base)
    makers: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: json.dumps(base).encode()[: rng.randint(0, len(json.dumps(base)) - 1)],
        lambda: b"[" * rng.choice([1_000, 10_000, 100_000]),
        lambda: ('{"' + rng.choice(fields) + '":' + "[" * 5_000 + "]" * 5_000 + "}").encode(),
        lambda: json.dumps(rng.choice([[], "x", 1, None, True, [base]])).encode(),
        lambda: _with(base, rng.choice(fields), rng.choice(WRONG_VALUES)),
        lambda: json.dumps({k: v for k, v in base.items() if k != rng.choice(fields)}).encode(),
        lambda: _with(base, "unexpected_" + str(rng.randint(0, 9)), 1),
        lambda: _raw(base, rng.choice(fields), rng.choice(HUGE_LITERALS)),
        lambda: _raw(base, rng.choice(fields), '"\xff\xfe' + "é" + '"', encoding="latin-1"),
        lambda: _raw(base, rng.choice(fields), '"a\\ud800b"'),  # a lone surrogate
        lambda: _with(base, rng.choice(fields), "a" * rng.choice([1_000, 100_000])),
    ]
    while True:
        yield rng.choice(makers)()


def _with(base: dict[str, JSONish], field: str, value: JSONish) -> bytes:
    return json.dumps({**base, field: value}).encode()


def _raw(base: dict[str, JSONish], field: str, literal: str, encoding: str = "utf-8") -> bytes:
    marker = "@@FUZZ@@"
    text = json.dumps({**base, field: marker}).replace(f'"{marker}"', literal)
    return text.encode(encoding, errors="surrogateescape")


def corpus(base: dict[str, JSONish], fits: Callable[[bytes], bool], seed: int) -> list[bytes]:
    """`CASES` distinct malformed variants of `base`: none of them fits the schema."""
    rng = random.Random(seed)
    found: dict[bytes, None] = {}
    for body in mutations(base, rng):
        if not fits(body):
            found[body] = None
        if len(found) == CASES:
            return list(found)
    raise AssertionError("unreachable")  # pragma: no cover


def fits(model: type[BaseModel] | TypeAdapter[Any]) -> Callable[[bytes], bool]:
    """Whether a body is a valid message for `model` (a wire model or a TypeAdapter)."""
    validate = model.validate_json if isinstance(model, TypeAdapter) else model.model_validate_json

    def check(body: bytes) -> bool:
        try:
            validate(body)
        except ValidationError:
            return False
        return True

    return check


SOME_ID = str(uuid4())
REAL_SUBMIT = json.dumps({"device_id": DEVICE, "name": "reboot", "ttl": 60}).encode()
REQUESTS: list[tuple[str, type[BaseModel], dict[str, JSONish], type[BaseModel]]] = [
    (SUBMIT_SUBJECT, SubmitCommand, {"device_id": DEVICE, "name": "reboot", "params": {}, "ttl": 5},
     ExecutionReply),
    (CANCEL_SUBJECT, CancelCommand, {"execution_id": SOME_ID, "reason": "fuzz"}, ExecutionReply),
    (RETRY_SUBJECT, RetryCommand, {"execution_id": SOME_ID, "principal": "p"}, ExecutionReply),
    (DELETE_SUBJECT, DeleteCommand, {"execution_id": SOME_ID, "reason": "fuzz"}, ExecutionReply),
    (PURGE_SUBJECT, PurgeCommand, {"execution_ids": [SOME_ID], "reason": "fuzz"}, PurgeReply),
    (CATALOG_CHANGE_SUBJECT, CatalogChange,
     {"op": "put-device", "device": {"id": "fuzz-1", "type": "thermostat"}}, CatalogReply),
    (DEADLINE_SUBJECT, DeadlineDue, {"execution_id": SOME_ID, "kind": "execution"},
     DeadlineReply),
]  # fmt: skip

REPORT_BASES: list[dict[str, JSONish]] = [
    {"kind": "answer", "report_id": "r", "device_id": DEVICE, "execution_id": SOME_ID,
     "status": "SUCCEEDED", "payload": {}, "received_at": NOW},
    {"kind": "published", "report_id": "p", "device_id": DEVICE, "execution_id": SOME_ID,
     "received_at": NOW},
    {"kind": "presence", "report_id": "o", "device_id": DEVICE, "online": True,
     "received_at": NOW},
    {"kind": "state", "report_id": "s", "device_id": DEVICE, "state": {"on": True},
     "received_at": NOW},
]  # fmt: skip

EXTREME_DEADLINES = [
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999Z", "2026-01-01T00:00:00", "1970-01-01T00:00:00Z",
]  # fmt: skip
EVENT_BASE: dict[str, JSONish] = {
    "notification_id": 1, "execution_id": SOME_ID, "version": 1, "type": "Requested",
    "occurred_at": NOW, "data": {"deadline": NOW},
}  # fmt: skip


def rejected(service: str, reason: str) -> float:
    value: float = REJECTED_MESSAGES.labels(service=service, reason=reason)._value.get()
    return value


# --- the services -------------------------------------------------------------------------


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path) -> Settings:
    return service_settings(nats_server, tmp_path, scheduler_tick=0.2)


@pytest.fixture
async def services(settings: Settings, nc: Client) -> AsyncIterator[None]:
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    scheduler = TimeoutScheduler(settings, retry_cap=0.5)
    await scheduler.start()
    yield
    await scheduler.stop()
    await dispatcher.stop()


# --- the fuzzing --------------------------------------------------------------------------


@pytest.mark.usefixtures("services")
async def test_malformed_requests_each_get_an_invalid_message_problem(nc: Client) -> None:
    for index, (subject, model, base, reply_model) in enumerate(REQUESTS):
        bodies = corpus(base, fits(model), SEED + index)
        reason = "invalid-" + subject.rsplit(".", 1)[-1]
        before = rejected("dispatcher", reason)
        for body in bodies:
            msg = await nc.request(subject, body, timeout=5)
            reply = reply_model.model_validate_json(msg.data)
            problem = reply.problem  # type: ignore[attr-defined]
            assert problem is not None, (subject, body[:200], msg.data[:300])
            assert problem.code == "invalid-message", (subject, body[:200], problem)
            assert problem.status == 422
            assert problem.errors and all(e.field and e.reason for e in problem.errors)
        assert rejected("dispatcher", reason) - before == len(bodies), subject


@pytest.mark.usefixtures("services")
async def test_well_formed_requests_for_nothing_get_a_problem_not_a_failure(nc: Client) -> None:
    """Valid in shape, naming what does not exist: refused by the domain, never a crash."""
    rng = random.Random(SEED)
    for _ in range(CASES // 5):
        unknown = str(UUID(int=rng.getrandbits(128)))
        for subject, body in [
            (SUBMIT_SUBJECT, {"device_id": f"nope-{rng.randint(0, 99)}", "name": "reboot"}),
            (SUBMIT_SUBJECT, {"device_id": DEVICE, "name": "set_temperature",
                              "params": {"value": rng.choice([1e308, -1e308, "x", None])}}),
            (CANCEL_SUBJECT, {"execution_id": unknown}),
            (RETRY_SUBJECT, {"execution_id": unknown}),
            (DELETE_SUBJECT, {"execution_id": unknown}),
        ]:  # fmt: skip
            msg = await nc.request(subject, json.dumps(body).encode(), timeout=5)
            reply = ExecutionReply.model_validate_json(msg.data)
            assert reply.problem is not None, (subject, body)
            assert reply.problem.status < 500, (subject, body, reply.problem)
        purged = PurgeReply.model_validate_json(
            (await nc.request(PURGE_SUBJECT, json.dumps({"execution_ids": [unknown]}).encode(),
                              timeout=5)).data
        )  # fmt: skip
        assert purged.problem is None and purged.deleted == 0
        due = DeadlineReply.model_validate_json(
            (await nc.request(DEADLINE_SUBJECT, json.dumps({"execution_id": unknown}).encode(),
                              timeout=5)).data
        )  # fmt: skip
        assert due.outcome == "unknown"


@pytest.mark.usefixtures("services")
async def test_malformed_reports_are_dead_lettered_and_nothing_stalls(nc: Client) -> None:
    js = nc.jetstream()
    bodies = [
        body
        for index, base in enumerate(REPORT_BASES)
        for body in corpus(base, fits(REPORT_ADAPTER), SEED + 100 + index)
    ]
    before = rejected("dispatcher", "malformed-report")
    dead_before = await _count(nc, DEAD_LETTERS_STREAM, dead_letter_subject("dispatcher"))
    for index, body in enumerate(bodies):
        await js.publish(report_subject(DEVICE), body, headers={"Nats-Msg-Id": f"fuzz-{index}"})
    await _drained(nc, REPORTS_STREAM, reports_durable(partition_of(DEVICE)))
    assert rejected("dispatcher", "malformed-report") - before == len(bodies)
    dead = await _dead_letters(nc, dead_before)
    assert len(dead) == len(bodies)
    assert all(reason.startswith("malformed report") for reason in dead)

    await _a_command_still_goes_all_the_way(nc)


@pytest.mark.usefixtures("services")
async def test_well_formed_reports_for_nothing_are_refused_by_name(nc: Client) -> None:
    """Valid reports about executions and devices that do not exist, with odd payloads and
    huge numbers: each refused under a named reason (or applied), none left pending."""
    js = nc.jetstream()
    rng = random.Random(SEED + 7)
    real = []
    for _ in range(5):
        submitted = ExecutionReply.model_validate_json(
            (await nc.request(SUBMIT_SUBJECT, REAL_SUBMIT, timeout=5)).data
        )
        assert submitted.execution is not None, submitted
        real.append(str(submitted.execution.id))
    bodies: list[bytes] = []
    for index in range(CASES):
        base = dict(rng.choice(REPORT_BASES))
        base["report_id"] = f"ok-{index}"
        base["execution_id"] = rng.choice([str(uuid4()), *real])
        base["device_id"] = rng.choice([DEVICE, "nope", "demo-lamp-1"])
        if base["kind"] == "answer":
            base["status"] = rng.choice(["STARTED", "SUCCEEDED", "FAILED", None])
            base["payload"] = {"n": rng.choice([10**30, -(10**400), 1e308, -0.0, "é\u0000", {}])}
        if base["kind"] == "state":
            base["state"] = {"x": rng.choice([10**30, 1e308, True, "on", {"deep": [1]}])}
        bodies.append(json.dumps(base).encode())
    dead_before = await _count(nc, DEAD_LETTERS_STREAM, dead_letter_subject("dispatcher"))
    for index, body in enumerate(bodies):
        await js.publish(report_subject(DEVICE), body, headers={"Nats-Msg-Id": f"ok-{index}"})
    await _drained(nc, REPORTS_STREAM, reports_durable(partition_of(DEVICE)))
    # Nothing failed in the dispatcher: only answers without a status were not reports.
    dead = await _dead_letters(nc, dead_before)
    assert all(reason.startswith("malformed report") for reason in dead), dead
    await _a_command_still_goes_all_the_way(nc)


@pytest.mark.usefixtures("services")
async def test_malformed_lifecycle_events_are_counted_by_the_scheduler(nc: Client) -> None:
    js = nc.jetstream()

    def is_event(body: bytes) -> bool:
        # What the scheduler can use: a lifecycle event, and a Requested one with a deadline.
        try:
            event = LifecycleEvent.model_validate_json(body)
            TypeAdapter(datetime).validate_python(event.data["deadline"])
        except (ValidationError, KeyError):
            return False
        return True

    bodies = corpus(EVENT_BASE, is_event, SEED + 200)
    before = rejected("timeout-scheduler", "malformed-event")
    for index, body in enumerate(bodies):
        await js.publish(
            event_subject(uuid4(), "Requested"), body, stream=EVENTS_STREAM,
            headers={"Nats-Msg-Id": f"fuzz-event-{index}"},
        )  # fmt: skip
    await _drained(nc, EVENTS_STREAM, SCHEDULER_DURABLE)
    assert rejected("timeout-scheduler", "malformed-event") - before == len(bodies)

    # Well-formed, with deadlines at the ends of time (and one without a time zone).
    for index, deadline in enumerate(EXTREME_DEADLINES):
        event = {**EVENT_BASE, "execution_id": str(uuid4()), "data": {"deadline": deadline}}
        await js.publish(
            event_subject(event["execution_id"], "Requested"), json.dumps(event).encode(),
            stream=EVENTS_STREAM, headers={"Nats-Msg-Id": f"extreme-event-{index}"},
        )  # fmt: skip
    await _drained(nc, EVENTS_STREAM, SCHEDULER_DURABLE)
    await _a_command_still_goes_all_the_way(nc)


@pytest.mark.usefixtures("services")
async def test_requests_over_the_size_limit_are_refused_and_store_nothing(nc: Client) -> None:
    """A submit that NATS carries but whose events it could not (they repeat the params) is
    refused with 413, not stored: stored, it would stop the outbox relay."""
    params = {"value": 22, "padding": "x" * (MAX_COMMAND_BYTES + 1)}
    execution_id = uuid4()
    command = SubmitCommand(
        device_id=DEVICE, name="set_temperature", params=params, execution_id=execution_id
    )
    body = command.model_dump_json().encode()
    assert MAX_COMMAND_BYTES < len(body) < 1024 * 1024  # within the server's max_payload
    pairs: list[tuple[str, type[ExecutionReply] | type[CatalogReply]]] = [
        (SUBMIT_SUBJECT, ExecutionReply),
        (CATALOG_CHANGE_SUBJECT, CatalogReply),
    ]
    for subject, reply_model in pairs:
        verb = subject.rsplit(".", 1)[-1]
        before = rejected("dispatcher", f"oversized-{verb}")
        reply = reply_model.model_validate_json((await nc.request(subject, body, timeout=5)).data)
        assert reply.problem is not None and reply.problem.status == 413, reply
        assert reply.problem.code == "payload-too-large"
        assert rejected("dispatcher", f"oversized-{verb}") - before == 1
    assert await _types(nc, execution_id) == []
    await _a_command_still_goes_all_the_way(nc)


# --- checks -------------------------------------------------------------------------------


async def _a_command_still_goes_all_the_way(nc: Client) -> None:
    """A valid submit is stored, a report on it applied, and the scheduler ends it."""
    js = nc.jetstream()
    command = SubmitCommand(device_id=DEVICE, name="reboot", ttl=1)
    reply = ExecutionReply.model_validate_json(
        (await nc.request(SUBMIT_SUBJECT, command.model_dump_json().encode(), timeout=5)).data
    )
    assert reply.problem is None and reply.execution is not None, reply
    execution_id = reply.execution.id
    published = {
        "kind": "published", "report_id": f"published:{execution_id}", "device_id": DEVICE,
        "execution_id": str(execution_id), "received_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    await js.publish(report_subject(DEVICE), json.dumps(published).encode())

    async def ended() -> list[str] | None:
        types = await _types(nc, execution_id)
        return types if "Published" in types and "TimedOut" in types else None

    await eventually(ended, timeout=10, what="Published, then TimedOut by the scheduler")


async def _types(nc: Client, execution_id: UUID) -> list[str]:
    js = nc.jetstream()
    sub = await js.subscribe(
        event_subject(execution_id, "*"), stream=EVENTS_STREAM, ordered_consumer=True
    )
    types: list[str] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except TimeoutError:
                return types
            types.append(LifecycleEvent.model_validate_json(msg.data).type)
    finally:
        await sub.unsubscribe()


async def _drained(nc: Client, stream: str, durable: str, timeout: float = 30) -> None:
    """Every message of `stream` handled and acknowledged by consumer `durable`."""
    js = nc.jetstream()

    async def done() -> bool:
        info = await js.consumer_info(stream, durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(done, timeout=timeout, what=f"{durable} drained")


async def _count(nc: Client, stream: str, subject: str) -> int:
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def _dead_letters(nc: Client, skip: int) -> list[str]:
    """The reasons of the dispatcher's dead letters after the first `skip`."""
    js = nc.jetstream()
    sub = await js.subscribe(
        dead_letter_subject("dispatcher"), stream=DEAD_LETTERS_STREAM, ordered_consumer=True
    )
    reasons = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                break
            reasons.append((msg.headers or {}).get(DEAD_LETTER_REASON_HEADER, ""))
    finally:
        await sub.unsubscribe()
    return reasons[skip:]
