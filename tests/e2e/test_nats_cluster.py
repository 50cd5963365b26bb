"""The whole stack on a 3-node NATS cluster: commands go on through the death of a node.

The four services and the simulator run as their own processes against three nats-servers
(`Stack(nats_nodes=3)`: every stream and the access bucket with 3 replicas). The test kills
(SIGKILL, by pid) the node leading `BATON_EVENTS`, the stream every command goes through,
while commands are in flight, submits more while it is down, starts it again, then does the
same with the cluster's meta leader. Every command must end SUCCEEDED, once: one execution
per idempotency key, one run on the device, one success in its record.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from baton_cli.localstack import Server, Stack, meta_leader, wait_for_healthy
from baton_contracts.nats import EVENTS_STREAM
from baton_platform.nats import STREAMS
from baton_platform.nats_access import OPS
from tests.e2e.conftest import TERMINAL, Baton, make_stack, running

pytestmark = pytest.mark.e2e

DEVICES = [f"demo-thermostat-{n}" for n in range(1, 6)]
JOURNAL = "simulator-journal.jsonl"


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path / "stack",
        nats_nodes=3,
        extra_env={"BATON_SIMULATOR_JOURNAL": str(tmp_path / JOURNAL)},
    )
    with running(stack) as started:
        yield started


def stream_state(stack: Stack) -> dict[str, tuple[int, str | None]]:
    """Each Baton stream's replica count and leader, as the cluster says."""

    async def ask() -> dict[str, tuple[int, str | None]]:
        client = await nats.connect(stack.nats_urls_as(OPS))
        try:
            js = client.jetstream()
            found = {}
            for config in STREAMS:
                assert config.name is not None
                info = await js.stream_info(config.name)
                leader = info.cluster.leader if info.cluster is not None else None
                found[config.name] = (info.config.num_replicas or 1, leader)
            return found
        finally:
            await client.close()

    return asyncio.run(ask())


def submit(baton: Baton, device: str, value: int, key: str, give_up: float = 60) -> str:
    """Submit until the api answers with the execution, as a careful client does: the same
    `Idempotency-Key` after any error or timeout (`503 outcome-unknown` while NATS elects a
    leader), so a command the first try stored is not stored twice."""
    deadline = time.monotonic() + give_up
    while True:
        try:
            response = baton.send(
                device, "set_temperature", {"value": value}, headers={"Idempotency-Key": key}
            )
            if response.status_code in (200, 201):
                execution_id: str = response.json()["id"]
                return execution_id
            assert response.status_code in (429, 503), response.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{key} not accepted within {give_up}s"
        time.sleep(0.1)


def submit_round(baton: Baton, keys: dict[str, tuple[str, str]], label: str) -> None:
    """One command per device, each with a fresh key; `keys`: key -> (device, id)."""
    for n, device in enumerate(DEVICES):
        key = f"{label}-{n}-{uuid.uuid4()}"
        keys[key] = (device, submit(baton, device, 15 + n, key))


def node(stack: Stack, name: str | None) -> Server:
    assert name is not None
    return next(server for server in stack.nats_servers if server.name == name)


def kill_and_restart(
    stack: Stack, baton: Baton, victim: Server, keys: dict[str, tuple[str, str]], label: str
) -> None:
    """Commands in flight when `victim` dies, more while it is down, and after it is back."""
    submit_round(baton, keys, f"{label}-before")
    victim.kill()
    submit_round(baton, keys, f"{label}-down")
    victim.restart()
    wait_for_healthy(stack.nats_servers, timeout=60)
    submit_round(baton, keys, f"{label}-back")


def journal_runs(path: Path) -> Counter[str]:
    """How many times a device started each execution (the simulator's journal)."""
    runs: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "received" and entry["outcome"] == "run":
            runs[entry["execution_id"]] += 1
    return runs


def test_commands_survive_the_death_of_the_events_leader_and_of_the_meta_leader(
    cluster_stack: Stack, tmp_path: Path
) -> None:
    stack = cluster_stack
    baton = Baton(stack)
    streams = stream_state(stack)
    assert {replicas for replicas, _ in streams.values()} == {3}, streams
    keys: dict[str, tuple[str, str]] = {}

    events_leader = node(stack, streams[EVENTS_STREAM][1])
    kill_and_restart(stack, baton, events_leader, keys, "events-leader")
    meta = node(stack, meta_leader(stack.nats_servers))
    kill_and_restart(stack, baton, meta, keys, "meta-leader")

    assert not stack.dead(), f"{stack.dead()} died; logs in {stack.log_dir}"
    # Each key its own execution (a retried submit found the one it had stored).
    assert len(keys) == 6 * len(DEVICES)
    assert len({execution_id for _, execution_id in keys.values()}) == len(keys)
    for _, execution_id in keys.values():
        done = baton.wait_for(execution_id, TERMINAL, timeout=60)
        assert done["status"] == "SUCCEEDED", done
        statuses = [entry["status"] for entry in done["log"]]
        assert statuses.count("SUCCEEDED") == 1, statuses
    # The record holds these executions and no others, each run once by its device.
    for device in DEVICES:
        listed = baton.http.get(f"/v1/devices/{device}/executions", params={"limit": 100}).json()
        ours = {execution_id for d, execution_id in keys.values() if d == device}
        assert {item["id"] for item in listed["items"]} == ours, device
    runs = journal_runs(tmp_path / JOURNAL)
    assert {execution_id: runs[execution_id] for _, execution_id in keys.values()} == {
        execution_id: 1 for _, execution_id in keys.values()
    }
