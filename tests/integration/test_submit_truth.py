"""Issue 6, defects 4 and 5, against a real nats-server, the real dispatcher and the real api.

When the dispatcher cannot answer a submit in time, the api answers `outcome-unknown` with
the execution id it fixed beforehand; a GET or a retry with the same Idempotency-Key then
settles what happened, and never makes a second execution.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from baton_api.app import create_app
from baton_cli.localstack import Server
from baton_contracts.nats import SUBMIT_SUBJECT, ExecutionReply, SubmitCommand
from baton_dispatcher.app import Dispatcher
from baton_dispatcher.writer import Writer
from baton_platform.commands import CommandHandlers
from baton_platform.settings import Settings
from tests.conftest import eventually, service_settings

pytestmark = pytest.mark.integration

KEY = "truth-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
URL = "/v1/devices/demo-thermostat-1/commands"
BODY = {"name": "set_temperature", "params": {"value": 22}}
TIMEOUT = 1.0  # the api's request timeout: short, so the tests do not wait long


@pytest.fixture
def settings(nats_server: Server, tmp_path: Path) -> Settings:
    return service_settings(
        nats_server,
        tmp_path,
        projection_poll_interval=0.05,
        request_timeout=TIMEOUT,
        api_keys=KEY,
    )


@contextmanager
def dispatcher_thread(settings: Settings) -> Iterator[None]:
    """The real dispatcher on its own thread and event loop: litestar's AsyncTestClient
    blocks the test's loop while a request is in flight, so a dispatcher sharing it could
    never answer."""
    started = threading.Event()
    failed: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        dispatcher = Dispatcher(settings)
        try:
            await dispatcher.start()
        except BaseException as exc:
            failed.append(exc)
            started.set()
            raise
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        try:
            await holder["stop"].wait()
        finally:
            await dispatcher.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="dispatcher")
    thread.start()
    started.wait(30)
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


@asynccontextmanager
async def baton(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The dispatcher and the api; the api ready (NATS connected)."""
    with dispatcher_thread(settings):
        app = create_app(settings)
        async with AsyncTestClient(app, raise_server_exceptions=False) as client:

            async def ready() -> bool:
                return (await client.get("/ready")).status_code == 200

            await eventually(ready, what="api ready")
            yield client


def unknown_outcome(response: Any) -> str:
    """The execution id of an `outcome-unknown` answer (checked whole)."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "outcome-unknown", body
    assert "may have been stored" in body["detail"]
    assert response.headers["location"] == f"/v1/executions/{body['execution_id']}"
    assert "retry-after" not in response.headers
    return str(body["execution_id"])


async def total(client: AsyncTestClient[Any]) -> int:
    listed = await client.get("/v1/executions", headers=AUTH)
    assert listed.status_code == 200, listed.text
    return int(listed.json()["total_count"])


async def test_a_submit_stuck_behind_a_busy_dispatcher_is_unknown_and_never_stored_late(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher is busy (its submit handler paused) past the api's timeout: the api
    says the outcome is unknown; the dispatcher, reaching the request after its requester
    stopped waiting, stores nothing; a GET says so and a keyed retry makes the one execution."""
    gate = threading.Event()
    reached: list[ExecutionReply] = []
    original = Writer.submit

    async def busy(self: Writer, command: SubmitCommand) -> ExecutionReply:
        await asyncio.to_thread(gate.wait, 10)
        reply = await original(self, command)
        reached.append(reply)
        return reply

    monkeypatch.setattr(Writer, "submit", busy)
    async with baton(settings) as client:
        headers = {**AUTH, "Idempotency-Key": "order-7"}
        started = time.monotonic()
        response = await client.post(URL, json=BODY, headers=headers)
        assert time.monotonic() - started < TIMEOUT + 1
        execution_id = unknown_outcome(response)

        gate.set()

        async def dispatcher_reached_it() -> bool:
            return bool(reached)

        await eventually(dispatcher_reached_it, what="the dispatcher reached it")
        [dropped] = reached
        assert dropped.problem is not None and dropped.problem.code == "request-expired"
        assert dropped.execution is None

        missing = await client.get(response.headers["location"], headers=AUTH)
        assert missing.status_code == 404 and missing.json()["code"] == "execution-not-found"

        retried = await client.post(URL, json=BODY, headers=headers)
        assert retried.status_code == 201, retried.text
        assert retried.json()["id"] == execution_id
        found = await client.get(response.headers["location"], headers=AUTH)
        assert found.status_code == 200
        assert await total(client) == 1


@pytest.mark.parametrize("key", [None, "order-8"])
async def test_a_submit_stored_after_the_api_gave_up_is_settled_without_a_second_execution(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    """The write itself is slow (it started in time, and lands after the api gave up): the
    answer is `outcome-unknown`; a GET finds the execution, a keyed retry gets it back."""
    release = threading.Event()
    original = CommandHandlers.submit

    def slow(self: CommandHandlers, command: SubmitCommand) -> ExecutionReply:
        release.wait(10)
        return original(self, command)

    monkeypatch.setattr(CommandHandlers, "submit", slow)
    async with baton(settings) as client:
        headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
        response = await client.post(URL, json=BODY, headers=headers)
        execution_id = unknown_outcome(response)
        release.set()

        async def settled() -> bool:
            found = await client.get(response.headers["location"], headers=AUTH)
            return found.status_code == 200 and found.json()["id"] == execution_id

        await eventually(settled, what="a GET settles it")
        if key is not None:
            retried = await client.post(URL, json=BODY, headers=headers)
            assert retried.status_code == 200, retried.text  # the same execution, not a new one
            assert retried.json()["id"] == execution_id
        assert await total(client) == 1


async def test_a_dispatcher_failure_is_answered_at_once_not_left_to_time_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: CommandHandlers, command: SubmitCommand) -> ExecutionReply:
        raise RuntimeError("the store is on fire")

    monkeypatch.setattr(CommandHandlers, "submit", broken)
    async with baton(settings) as client:
        started = time.monotonic()
        response = await client.post(URL, json=BODY, headers=AUTH)
        assert time.monotonic() - started < TIMEOUT
        assert response.status_code == 500, response.text
        assert response.json()["code"] == "internal-error"
        assert response.json()["execution_id"]  # the one to GET before sending it again
        assert "on fire" not in response.text


async def test_an_empty_key_over_nats_is_an_invalid_message_problem(
    settings: Settings, nc: Client
) -> None:
    async with baton(settings) as client:
        for _ in range(2):  # the second used to go unanswered
            msg = await nc.request(
                SUBMIT_SUBJECT,
                b'{"device_id": "demo-thermostat-1", "name": "reboot", "idempotency_key": ""}',
                timeout=TIMEOUT,
            )
            reply = ExecutionReply.model_validate_json(msg.data)
            assert reply.problem is not None and reply.problem.code == "invalid-message"
            assert [e.field for e in reply.problem.errors] == ["idempotency_key"]
        assert await total(client) == 0
