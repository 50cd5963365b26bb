"""The benchmark's instrument (tests/benchmarks): its rate search, its pass rule, its
open-loop steps, its HTTP client and its store writer. No figure of Baton is asserted here;
these check that the bench measures what docs/benchmarks.md says it does."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baton_domain.catalog import Catalog
from baton_domain.statuses import ExecutionStatus
from tests.benchmarks.history import open_store, write_commands
from tests.benchmarks.lean_http import LeanClient
from tests.benchmarks.load import (
    Load,
    LoadSettings,
    Search,
    StepResult,
    find_max,
)
from tests.benchmarks.profile import OTHER, by_library
from tests.conftest import DEMO
from tests.quantiles import percentile

SETTINGS = LoadSettings(devices=["d1", "d2"], threshold=1.0, target=0.99)


def step_with(latencies: list[float], planned: int | None = None, rate: float = 10.0) -> StepResult:
    step = StepResult(rate=rate, planned=planned or len(latencies), issued=len(latencies))
    step.latencies = latencies
    step.elapsed = len(latencies) / rate
    return step


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert math.isnan(percentile([], 0.5))


def test_a_step_passes_with_99_percent_in_time_and_fails_below() -> None:
    assert step_with([0.1] * 99 + [math.inf]).passed(SETTINGS)
    assert not step_with([0.1] * 98 + [1.5, math.inf]).passed(SETTINGS)
    # Commands it never sent (a step stopped early) count against it.
    assert not step_with([0.1] * 90, planned=100).passed(SETTINGS)


def test_completed_rate_counts_only_commands_in_time() -> None:
    step = step_with([0.1] * 8 + [1.2, math.inf])  # 10 commands over 1 s
    assert step.completed_rate(SETTINGS) == pytest.approx(8.0)


async def test_find_max_brackets_the_highest_passing_rate() -> None:
    capacity = 70.0
    offered: list[float] = []

    async def run_step(rate: float, seconds: float) -> StepResult:
        offered.append(rate)
        return step_with([0.1 if rate <= capacity else math.inf] * 100, rate=rate)

    search = Search(start_rate=25.0, factor=2.0, refine=2, max_steps=8, seconds=1.0)
    best, steps = await find_max(run_step, search, lambda s: s.passed(SETTINGS))
    # 25, 50 pass; 100 fails; then sqrt(50*100) = 70.7 fails, sqrt(50*70.7) = 59.5 passes.
    assert offered == pytest.approx([25.0, 50.0, 100.0, 70.71, 59.46], rel=1e-3)
    assert best is not None and best.rate == pytest.approx(59.46, rel=1e-3)
    assert len(steps) == 5


async def test_find_max_steps_down_when_the_first_rate_fails_and_stops_at_max_steps() -> None:
    offered: list[float] = []

    async def run_step(rate: float, seconds: float) -> StepResult:
        offered.append(rate)
        return step_with([math.inf] * 10)

    search = Search(start_rate=40.0, factor=2.0, refine=2, max_steps=3, seconds=1.0)
    best, _ = await find_max(run_step, search, lambda s: s.passed(SETTINGS))
    assert offered == [40.0, 20.0, 10.0]
    assert best is None


# --- an open-loop step against a stand-in api ----------------------------------------------------


class StandIn:
    """An HTTP server answering every submit after `delay` seconds with `status`."""

    def __init__(self, delay: float, status: str = "SUCCEEDED") -> None:
        self.delay = delay
        self.status = status
        self.paths: list[str] = []
        self.concurrent = self.most_concurrent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request_line := await reader.readline():
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            self.paths.append(request_line.split()[1].decode())
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
            await asyncio.sleep(self.delay)
            self.concurrent -= 1
            body = json.dumps({"status": self.status}).encode()
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        writer.close()


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, LeanClient]]:
    api = StandIn(delay=0.2)
    server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    client = LeanClient("127.0.0.1", server.sockets[0].getsockname()[1], {})
    yield api, client
    client.close()
    server.close()


async def nothing() -> None:
    return None


async def test_a_step_offers_its_rate_whatever_the_answers_take(
    stand_in: tuple[StandIn, LeanClient],
) -> None:
    """Open loop: at 50/s with answers taking 0.2 s, ~10 are in flight at once; a closed
    loop would hold one and fall to 5/s."""
    api, client = stand_in
    load = Load(client, SETTINGS)
    step = await load.step(50.0, 1.0, {"bench": os.getpid()}, nothing)
    assert step.issued == 50
    assert step.passed(SETTINGS)
    assert api.most_concurrent >= 5
    assert all(0.2 <= latency < 1.0 for latency in step.latencies)
    assert api.paths[0] == "/v1/devices/d1/commands?wait=5"
    assert api.paths[1].startswith("/v1/devices/d2/")
    assert step.cpu["bench"] >= 0


async def test_a_step_that_cannot_pass_stops_early(stand_in: tuple[StandIn, LeanClient]) -> None:
    api, client = stand_in
    api.status = ExecutionStatus.TIMED_OUT.value
    step = await Load(client, SETTINGS).step(50.0, 4.0, {}, nothing)
    assert step.aborted
    assert step.issued < step.planned
    assert not step.passed(SETTINGS)
    assert step.outcomes == {"TIMED_OUT": step.issued}


async def test_the_lean_client_keeps_connections_alive(
    stand_in: tuple[StandIn, LeanClient],
) -> None:
    api, client = stand_in
    api.delay = 0
    for _ in range(5):
        status, body = await client.request("POST", "/v1/x", b"{}")
        assert (status, json.loads(body)) == (201, {"status": "SUCCEEDED"})
    assert client.opened == 1


def test_write_commands_stores_succeeding_commands(tmp_path: Path) -> None:
    app = open_store(tmp_path, Catalog.from_yaml(DEMO))
    try:
        rate = write_commands(app, ["demo-thermostat-1"], count=5, batch=2)
        assert rate > 0
        notifications = app.recorder.select_notifications(start=1, limit=100)
        types = [n.topic.rsplit(":", 1)[-1] for n in notifications]
        assert types.count("Requested") == 5
        assert types.count("Succeeded") == 5
        assert len(types) == 25  # five events each
    finally:
        app.close()


def test_the_stacks_fsync_each_jetstream_write_unless_asked_for_the_comparison(
    tmp_path: Path,
) -> None:
    from baton_cli.localstack import start_nats
    from tests.benchmarks.commands import Bench, parse_args

    assert Bench(parse_args([]), tmp_path).sync == {
        "jetstream_fsync": True,
        "events_persist": "default",
    }
    compared = Bench(parse_args(["--jetstream-sync", "default"]), tmp_path)
    assert compared.sync == {"jetstream_fsync": False, "events_persist": "default"}
    unsynced_events = Bench(parse_args(["--events-persist", "async"]), tmp_path)
    assert unsynced_events.sync == {"jetstream_fsync": True, "events_persist": "async"}
    from tests.benchmarks.stacks import fleet_stack

    with fleet_stack(tmp_path, "async", 1, "mosquitto", events_persist="async") as stack:
        assert stack.extra_env["BATON_NATS_EVENTS_PERSIST"] == "async"
    with fleet_stack(tmp_path, "default", 1, "mosquitto") as stack:
        assert "BATON_NATS_EVENTS_PERSIST" not in stack.extra_env
    for fsync in (True, False):
        server = start_nats(tmp_path / f"nats-{fsync}", fsync_each_write=fsync)
        try:
            config = (tmp_path / f"nats-{fsync}" / "nats.conf").read_text()
        finally:
            server.stop()
        assert ("sync_interval: always" in config) is fsync


def test_profile_charges_each_sample_to_its_innermost_library(tmp_path: Path) -> None:
    raw = tmp_path / "api.txt"
    raw.write_text(
        "main (app.py:1);handle (baton_api/edges.py:9);request (nats/aio/client.py:5);"
        "model_validate_json (pydantic/main.py:847) 3\n"
        "main (app.py:1);handle (baton_api/edges.py:9);request (nats/aio/client.py:5) 2\n"
        "main (app.py:1);select (selectors.py:468) 4\n"
        "main (app.py:1) 1\n"
    )
    assert by_library(raw) == {
        "asyncio, threads": 0.4,
        "pydantic": 0.3,
        "nats client": 0.2,
        OTHER: 0.1,
    }
