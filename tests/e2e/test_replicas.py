"""Replicas: every service of the stack run twice, each job that must run once done by the
holder of its lease (docs/architecture.md, "Replicas"), and moved to the other replica
within seconds when the holder is killed (SIGKILL: no release, the lease must lapse).

The stack's own processes (instance `default`) start first and take the leases; a second
replica of the service under test (instance `b`) joins; the holder is then killed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from baton_cli.localstack import SERVICE_MODULES, Stack, free_port, wait_for_line
from baton_cli.processes import start_process
from baton_contracts.nats import (
    EVENTS_STREAM,
    LEASES_BUCKET,
    NOTIFICATION_ID_HEADER,
    PROJECTION_LEASE,
    RELAY_LEASE,
    SCHEDULER_LEASE,
)
from baton_platform import leases
from baton_platform.eventstore import open_executions
from baton_platform.mapping import read_events
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from tests.conftest import eventually_sync
from tests.e2e.conftest import API_KEY, TERMINAL, Baton, make_stack, running

pytestmark = pytest.mark.e2e

# A lapsed lease is taken at the next try: within TTL + one renewal interval of the kill.
TAKEOVER_S = leases.TTL_S + leases.RENEW_S + 2


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    with running(make_stack(tmp_path / "stack")) as started:
        yield started


class Replica:
    """A second process of one of the stack's services, on the stack's environment."""

    def __init__(self, stack: Stack, service: str, **env: str) -> None:
        self.log = stack.log_dir / f"{service}-b.log"
        environment = {**os.environ, **stack.service_env(service), "BATON_INSTANCE": "b", **env}
        with self.log.open("ab") as out:
            self.proc = start_process(
                [sys.executable, "-m", SERVICE_MODULES[service]],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
            )

    def wait_for(self, line: str) -> None:
        wait_for_line(self.log, 0, line, self.proc)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def send_until_taken(baton: Baton, device: str, name: str, params: dict[str, object]) -> Any:
    """Submit, again after each 503 `unavailable` (nothing stored), as a client would."""
    deadline = time.monotonic() + TAKEOVER_S + 10
    while True:
        response = baton.send(device, name, params)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 201, response.text
            return response.json()
        assert response.json()["code"] == "unavailable", response.text


def holder(stack: Stack, key: str) -> str | None:
    """Who holds lease `key` now (its holder name: `<service>.<instance>`)."""

    async def read() -> str | None:
        client = await nats.connect(stack.nats_url_as(OPS))
        try:
            bucket = await client.jetstream().key_value(LEASES_BUCKET)
            entry = await bucket.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        finally:
            await client.close()
        return None if entry.value is None else entry.value.decode()

    return asyncio.run(read())


def holding(stack: Stack, key: str) -> str | None:
    """The instance whose process holds lease `key`."""
    name = holder(stack, key)
    return None if name is None else name.split(".")[1]


def held_by(stack: Stack, key: str, instance: str, timeout: float) -> None:
    eventually_sync(
        lambda: holding(stack, key) == instance,
        timeout=timeout,
        interval=0.1,
        what=f"lease {key} held by {instance}",
    )


def test_a_wait_on_the_api_that_does_not_project_ends_at_once_and_it_takes_over(
    own_stack: Stack, replicas: list[Replica]
) -> None:
    other = httpx.Client(
        base_url=second_api(own_stack, replicas),
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=70,
    )
    assert holding(own_stack, PROJECTION_LEASE) == "default"

    # A reboot answers over some 2 s: the wait ends with the execution, not with the
    # read-your-writes wait after the submit.
    for device in ("demo-thermostat-1", "demo-thermostat-2"):
        response = other.post(
            f"/v1/devices/{device}/commands", json={"name": "reboot"}, params={"wait": 20}
        )
        answered = time.time()
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "SUCCEEDED"
        lag = answered - _at(body["updated_at"])
        assert lag < 1.0, f"answered {lag:.2f}s after the end: the end was not announced"

    own_stack.kill("api")
    killed = time.monotonic()
    # Submitted while nobody projects: the wait ends once this replica took the lease over
    # and projected the end.
    response = other.post(
        "/v1/devices/demo-thermostat-3/commands",
        json={"name": "set_temperature", "params": {"value": 23}},
        params={"wait": 20},
    )
    answered_after = time.monotonic() - killed
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "SUCCEEDED"
    assert holding(own_stack, PROJECTION_LEASE) == "b"
    assert answered_after < TAKEOVER_S + 2, f"{answered_after:.1f}s after the kill"
    # The views caught up with everything stored.
    eventually_sync(
        lambda: _views_position(own_stack) == _stored_position(own_stack),
        what="the views at the store's end",
    )
    listed = other.get("/v1/executions", params={"limit": 100}).json()["items"]
    assert [item["status"] for item in listed] == ["SUCCEEDED"] * 3


def test_the_relay_moves_to_the_other_dispatcher_and_nothing_is_lost_or_published_twice(
    own_stack: Stack, replicas: list[Replica]
) -> None:
    baton = Baton(own_stack)
    held_by(own_stack, RELAY_LEASE, "default", timeout=10)
    replica = Replica(own_stack, "dispatcher")
    replicas.append(replica)
    replica.wait_for("dispatcher ready")
    before = [
        baton.send(f"demo-thermostat-{n}", "set_temperature", {"value": 20 + n}, wait=10).json()
        for n in (1, 2)
    ]
    assert {e["status"] for e in before} == {"SUCCEEDED"}
    assert holding(own_stack, RELAY_LEASE) == "default"
    assert "took lease relay" not in replica.text()  # a standby: it answers, it does not relay

    own_stack.kill("dispatcher")
    killed = time.monotonic()
    # Submitted at once: the other dispatcher stores them once it holds the devices'
    # partitions (until the dead one's leases lapse, a submit may be refused with a 503 that
    # says nothing was stored), and they go out once it relays.
    after = [
        send_until_taken(baton, f"demo-thermostat-{n}", "set_temperature", {"value": 30 + n})
        for n in (3, 4)
    ]
    for execution in after:
        baton.wait_for(execution["id"], TERMINAL, timeout=TAKEOVER_S + 10)
        assert baton.get(execution["id"])["status"] == "SUCCEEDED"
    assert time.monotonic() - killed < TAKEOVER_S + 5
    assert holding(own_stack, RELAY_LEASE) == "b"
    assert "took lease relay" in replica.text()

    # The stream holds every stored event once, in notification order.
    settings = Settings(data_dir=own_stack.data_dir)
    executions = open_executions(settings)
    try:
        stored = [e.notification_id for e in read_events(executions, 0, 100_000)]
    finally:
        executions.close()

    def all_relayed() -> bool:
        return _stream_ids(own_stack) == stored

    eventually_sync(all_relayed, timeout=10, what="the stream equal to the store")


def test_deadlines_pending_when_the_leading_scheduler_is_killed_fire_once_in_time(
    own_stack: Stack, replicas: list[Replica]
) -> None:
    baton = Baton(own_stack)
    held_by(own_stack, SCHEDULER_LEASE, "default", timeout=10)
    replica = Replica(own_stack, "timeout-scheduler")
    replicas.append(replica)
    replica.wait_for("timeout-scheduler started")
    ttl = 4
    executions = [baton.send("demo-silent-1", "reboot", ttl=ttl).json() for _ in range(3)]
    baton.wait_for(executions[0]["id"], {"SENT"}, timeout=5)
    deadlines = own_stack.data_dir / "deadlines.sqlite"
    eventually_sync(lambda: _rows(deadlines) == 3, timeout=5, what="3 deadlines stored")

    assert "timeout-scheduler leading" not in replica.text()  # a standby
    own_stack.kill("timeout-scheduler")
    ended = [baton.wait_for(e["id"], TERMINAL, timeout=ttl + TAKEOVER_S + 10) for e in executions]

    for execution in ended:
        assert execution["status"] in {"TIMED_OUT", "EXPIRED"}, execution
        late = _at(execution["updated_at"]) - _at(execution["deadline"])
        # On time but for the lease changing hands: within the lease's TTL (and a renewal
        # interval, and the usual wait for the bridges' watermarks).
        assert late < leases.TTL_S + leases.RENEW_S + 2, f"{late:.2f}s late"
    assert holding(own_stack, SCHEDULER_LEASE) == "b"
    fired = replica.text()
    for execution in executions:
        assert fired.count(f"deadline fired: execution {execution['id']}") == 1
    leader = (own_stack.log_dir / "timeout-scheduler.log").read_text(errors="replace")
    assert not any(f"deadline fired: execution {e['id']}" in leader for e in executions)


def second_api(stack: Stack, replicas: list[Replica], **env: str) -> str:
    """A second api replica, ready, while the first projects (holds the lease); its URL.
    Its own polls of the views' position are 30 s apart: only the projecting replica's
    announcements can end its waits and wake its streams in time."""
    held_by(stack, PROJECTION_LEASE, "default", timeout=10)
    port = free_port()
    replicas.append(
        Replica(stack, "api", BATON_API_PORT=str(port), BATON_PROJECTION_POLL_INTERVAL="30", **env)
    )
    url = f"http://127.0.0.1:{port}"
    eventually_sync(lambda: _ready(url), timeout=30, interval=0.1, what="the second api ready")
    return url


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _at(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM deadlines").fetchone()[0])


def _views_position(stack: Stack) -> int:
    with sqlite3.connect(stack.data_dir / "views.sqlite") as db:
        row = db.execute("SELECT position FROM projection_position").fetchone()
        return int(row[0]) if row else 0


def _stored_position(stack: Stack) -> int:
    executions = open_executions(Settings(data_dir=stack.data_dir))
    try:
        return executions.recorder.max_notification_id() or 0
    finally:
        executions.close()


def _stream_ids(stack: Stack) -> list[int]:
    async def read() -> list[int]:
        client = await nats.connect(stack.nats_url_as(OPS))
        try:
            js = client.jetstream()
            info = await js.stream_info(EVENTS_STREAM)
            ids = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(EVENTS_STREAM, seq=seq)
                ids.append(int((msg.headers or {})[NOTIFICATION_ID_HEADER]))
            return ids
        finally:
            await client.close()

    return asyncio.run(read())
