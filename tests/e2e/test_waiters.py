"""Many clients waiting (`?wait=`) on commands that never end do not slow anyone else.

WAITERS concurrent `?wait=20` submits to demo-silent-1 (the simulator never answers it; the
thermostat type delivers `parallel`, so every command is sent at once and none waits in
the device's queue, where BATON_MAX_WAITING_PER_DEVICE would refuse the 101st). While they
all wait, a normal command to another device must come back SUCCEEDED within its own wait.
Its latency is printed, not asserted: the machine decides it.

The waiters are keyed repeats of EXECUTIONS commands stored first (WAITERS / EXECUTIONS
per execution), not WAITERS new commands: a burst of 1,000 new ones on a shared 2-core
machine can outrun BATON_REQUEST_TIMEOUT (503s), which is not what this test is about. A
repeat is a read in the dispatcher, and in the api it is the same request: submit, then
wait on the views. One test process holds the 1,000 HTTP connections; the api's
`baton_api_waiting_requests` gauge says when every one of them is waiting.

Getting 1,000 requests through httpx and into their wait took 5.7 s on a quiet machine
and more than 10 s on one loaded by other test runs, so the waiters wait WAIT = 40 s and
the test gives them WAIT - 10 s to all be waiting: the normal command (its own wait 5 s)
is then sent and answered while every waiter still waits.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from baton_cli.localstack import Stack, free_port
from tests.conftest import eventually
from tests.e2e.conftest import API_KEY, make_stack, running

pytestmark = pytest.mark.e2e

WAITERS = 1000
EXECUTIONS = 100
WAIT = 40
GAUGE = "baton_api_waiting_requests"


def consecutive_free_ports(count: int) -> int:
    """A base port with the `count` ports from it free (the stack's metrics ports)."""
    for _ in range(50):
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        try:
            base = free_port()  # from this worker's range (tests/conftest.py)
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = make_stack(tmp_path_factory.mktemp("stack"), metrics_port=consecutive_free_ports(4))
    with running(made) as started:
        yield started


async def test_a_thousand_waiters_do_not_slow_a_normal_command(stack: Stack) -> None:
    limits = httpx.Limits(max_connections=WAITERS + 10, max_keepalive_connections=WAITERS + 10)
    metrics_url = f"http://127.0.0.1:{stack.metrics_ports()['api']}/metrics"
    async with httpx.AsyncClient(
        base_url=stack.api_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=WAIT + 40,
        limits=limits,
    ) as http:

        async def send(key: str, wait: float | None) -> httpx.Response:
            return await http.post(
                "/v1/devices/demo-silent-1/commands",
                # A ttl past the test: the executions stay SENT while waited on.
                json={"name": "set_temperature", "params": {"value": 20}, "ttl": 300},
                params={"wait": wait} if wait else {},
                headers={"Idempotency-Key": key},
            )

        keys = [f"waiters-{i}" for i in range(EXECUTIONS)]
        storing = asyncio.Semaphore(20)

        async def store(key: str) -> httpx.Response:
            async with storing:
                return await send(key, None)

        stored = await asyncio.gather(*(store(key) for key in keys))
        assert [r.status_code for r in stored] == [201] * EXECUTIONS, stored[-1].text

        async def waiting() -> float:
            text = (await http.get(metrics_url)).text
            line = next(line for line in text.splitlines() if line.startswith(GAUGE + " "))
            count = float(line.split()[1])
            return count if count >= WAITERS else 0

        started = time.monotonic()
        waiters = [asyncio.create_task(send(keys[i % EXECUTIONS], WAIT)) for i in range(WAITERS)]
        await eventually(waiting, timeout=WAIT - 10, interval=0.1, what=f"{WAITERS} waiting")
        all_waiting_after = time.monotonic() - started

        before = time.monotonic()
        normal = await http.post(
            "/v1/devices/demo-thermostat-2/commands",
            json={"name": "set_temperature", "params": {"value": 22}},
            params={"wait": 5},
        )
        latency = time.monotonic() - before
        still_waiting = sum(not task.done() for task in waiters)

        answers = await asyncio.gather(*waiters)

    print(
        f"\n{WAITERS} waiters waiting after {all_waiting_after:.1f} s; a normal command "
        f"meanwhile: {latency * 1000:.0f} ms"
    )
    assert normal.status_code == 201, normal.text
    assert normal.json()["status"] == "SUCCEEDED"
    assert still_waiting == WAITERS
    assert [answer.status_code for answer in answers] == [200] * WAITERS  # repeats
    # Answered after their wait with the state then: sent, never answered.
    bodies: list[dict[str, Any]] = [answer.json() for answer in answers]
    assert {body["status"] for body in bodies} == {"SENT"}
    assert {body["id"] for body in bodies} == {r.json()["id"] for r in stored}
