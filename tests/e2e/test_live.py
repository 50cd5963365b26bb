"""Live updates over Server-Sent Events on the whole stack (docs/api.md, "Live updates"):
one execution's stream from its first change to its end, the tenant's feed filtered, a
client resuming with Last-Event-ID getting every later change once, other tenants and
callers without a key getting nothing, and `baton tail` / `baton events --follow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton_cli.live import Event, parse
from baton_cli.localstack import Stack
from tests.conftest import eventually_sync
from tests.e2e.conftest import API_KEY, TERMINAL, Baton, make_stack, running, wait_ready
from tests.e2e.test_waiters import consecutive_free_ports

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Keep-alives every half second: an idle stream shows it is alive, and no read waits long.
    made = make_stack(
        tmp_path_factory.mktemp("live"),
        extra_env={"BATON_LIVE_KEEPALIVE": "0.5"},
        metrics_port=consecutive_free_ports(4),  # the api's counts its open streams
    )
    with running(made) as started:
        yield started


def tenant_key(baton: Baton, tenant: str, role: str) -> dict[str, str]:
    """The headers of a new key with `role` in a new tenant `tenant`."""
    made = baton.http.post("/v1/tenants", json={"id": tenant, "name": tenant})
    assert made.status_code == 201, made.text
    key = baton.http.post("/v1/keys", json={"role": role, "name": role, "tenant": tenant})
    assert key.status_code == 201, key.text
    return {"Authorization": f"Bearer {key.json()['key']}"}


def read(
    url: str,
    until: Callable[[list[Event]], bool],
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    timeout: float = 20.0,
    started: Callable[[], Any] | None = None,
) -> tuple[list[Event], bool]:
    """The stream's events until `until` holds (returns them and whether the server ended
    the stream); `started` runs once the answer's headers are in (the stream's start is
    fixed by then)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    with httpx.stream(
        "GET", url, headers={**AUTH, **(headers or {})}, params=params, timeout=5
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        if started is not None:
            started()
        for event in parse(response.iter_lines()):
            events.append(event)
            if until(events):
                return events, False
            assert time.monotonic() < deadline, f"stream too slow; so far {events}"
        return events, True


def test_one_execution_streams_from_its_first_change_to_its_end(baton: Baton) -> None:
    sent = baton.send("demo-thermostat-1", "set_temperature", {"value": 22})
    assert sent.status_code == 201, sent.text
    execution_id = sent.json()["id"]

    events, ended = read(
        f"{baton.stack.api_url}/v1/executions/{execution_id}/events", lambda _: False
    )

    assert ended, "the stream ends after the execution does"
    kinds = [e.event for e in events]
    assert kinds[0] == "Requested" and kinds[-1] == "Succeeded", kinds
    assert [e.data["seq"] for e in events] == list(range(1, len(events) + 1))
    positions = [int(e.id or 0) for e in events]
    assert positions == sorted(set(positions)), "ids increase, each once"
    assert all(int(e.id or 0) == e.data["position"] for e in events)
    assert {e.data["execution_id"] for e in events} == {execution_id}
    assert events[-1].data["status"] == "SUCCEEDED"
    assert events[0].data["status"] == "PENDING"
    for field in ("device_id", "name", "status", "seq", "at"):
        assert all(field in e.data for e in events), field

    # Resuming after its third event: exactly the rest, then the end.
    rest, ended = read(
        f"{baton.stack.api_url}/v1/executions/{execution_id}/events",
        lambda _: False,
        headers={"Last-Event-ID": events[2].id or ""},
    )
    assert ended and [e.id for e in rest] == [e.id for e in events[3:]]
    # Resuming after its last: nothing more, and the stream ends (it has ended).
    nothing, ended = read(
        f"{baton.stack.api_url}/v1/executions/{execution_id}/events",
        lambda _: False,
        params={"last_event_id": events[-1].id or ""},
    )
    assert ended and nothing == []


def test_the_feed_resumes_with_last_event_id_without_a_gap_or_a_repeat(baton: Baton) -> None:
    url = f"{baton.stack.api_url}/v1/events"
    filters = {"device_id": "demo-thermostat-2"}
    sent: list[str] = []

    def send_three() -> None:
        for value in (20, 21, 22):
            response = baton.send("demo-thermostat-2", "set_temperature", {"value": value})
            assert response.status_code == 201, response.text
            sent.append(response.json()["id"])

    def ended_all(events: list[Event]) -> bool:
        ended = {e.data["execution_id"] for e in events if e.data["status"] in TERMINAL}
        return len(sent) == 3 and ended >= set(sent)

    # The whole feed of the three, read in one go (from before the first).
    everything, _ = read(url, ended_all, params=filters, started=send_three)
    assert {e.data["device_id"] for e in everything} == {"demo-thermostat-2"}
    assert {e.data["execution_id"] for e in everything} == set(sent)
    ids = [int(e.id or 0) for e in everything]
    assert ids == sorted(set(ids))

    # A client that dropped after its fourth event and resumes, by header or by query.
    cut = everything[3].id or ""
    for how in ({"headers": {"Last-Event-ID": cut}}, {"params": {**filters, "last_event_id": cut}}):
        params = how.get("params", filters)
        resumed, _ = read(
            url,
            lambda got: bool(got) and got[-1].id == everything[-1].id,
            headers=how.get("headers"),
            params=params,
        )
        assert [e.id for e in resumed] == [e.id for e in everything[4:]], how


def test_the_feed_filters_by_status_and_name(baton: Baton) -> None:
    url = f"{baton.stack.api_url}/v1/events"
    start = baton.http.get("/v1/executions", params={"limit": 1})  # any read: the stack is up
    assert start.status_code == 200
    sent: dict[str, str] = {}

    def send() -> None:
        for name in ("set_temperature", "self_test"):  # the simulator fails self_test
            params = {"value": 23} if name == "set_temperature" else {}
            response = baton.send("demo-thermostat-3", name, params)
            sent[name] = response.json()["id"]

    failed, _ = read(
        url,
        lambda got: any(e.data["execution_id"] == sent.get("self_test") for e in got),
        params={
            "device_id": "demo-thermostat-3",
            "status": "FAILED,SUCCEEDED",
            "name": "self_test",
        },
        started=send,
    )
    assert [(e.event, e.data["status"], e.data["name"]) for e in failed] == [
        ("Failed", "FAILED", "self_test")
    ]


def test_bad_input_gets_a_problem_and_other_tenants_see_nothing(baton: Baton) -> None:
    api = baton.stack.api_url
    for params, headers, field in (
        ({"status": "DONE"}, {}, "status"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ({"last_event_id": "-1"}, {}, "last_event_id"),
        ({"stauts": "FAILED"}, {}, "stauts"),
    ):
        response = httpx.get(f"{api}/v1/events", params=params, headers={**AUTH, **headers})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert field in json.dumps(response.json()["errors"])
    assert httpx.get(f"{api}/v1/events").status_code == 401

    execution_id = baton.send("demo-thermostat-4", "set_temperature", {"value": 24}).json()["id"]
    other = tenant_key(baton, "e2e-live-other", "viewer")
    assert httpx.get(f"{api}/v1/executions/{execution_id}/events", headers=other).status_code == 404
    # The other tenant's feed from the very first position: keep-alives, none of default's.
    with httpx.stream(
        "GET", f"{api}/v1/events", headers={**other, "Last-Event-ID": "0"}, timeout=5
    ) as r:
        assert r.status_code == 200
        comments = 0
        for line in r.iter_lines():
            assert not line.startswith("data:"), line
            comments += line.startswith(": keep-alive")
            if comments == 2:
                break


def open_streams(stack: Stack) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_ports()['api']}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("baton_api_live_streams "))
    return float(line.split()[1])


def test_a_stream_ends_on_the_server_when_its_client_goes_away(baton: Baton) -> None:
    before = open_streams(baton.stack)
    url = f"{baton.stack.api_url}/v1/events"
    with httpx.Client(headers=AUTH, timeout=5) as client:
        streams = [client.send(client.build_request("GET", url), stream=True) for _ in range(3)]
        # Kept: a line iterator dropped half-way closes its connection.
        lines = [stream.iter_lines() for stream in streams]
        assert [next(line) for line in lines] == [": live"] * 3
        assert open_streams(baton.stack) == before + 3
        for stream in streams:
            stream.close()
    eventually_sync(
        lambda: open_streams(baton.stack) == before,
        timeout=10,
        interval=0.1,
        what="the streams of the clients gone ended",
    )


def baton_cli(stack: Stack, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BATON_API_URL": stack.api_url, "BATON_API_KEY": API_KEY}
    baton = Path(sys.executable).with_name("baton")
    return subprocess.Popen(
        [str(baton), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_lines(tail: subprocess.Popen[str], execution_id: str) -> list[dict[str, Any]]:
    """`baton tail --json`'s lines until the one that shows `execution_id` succeeded."""
    assert tail.stdout is not None
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = tail.stdout.readline()
        assert line, tail.stderr.read() if tail.stderr else "tail ended"
        seen.append(json.loads(line))
        if seen[-1]["status"] == "SUCCEEDED" and seen[-1]["execution_id"] == execution_id:
            return seen
    raise AssertionError(f"tail never showed {execution_id} succeed: {seen}")


def test_baton_tail_and_events_follow(baton: Baton) -> None:
    # From the feed's start (this device's only command is this test's): the tail may
    # connect after the command ended, and must show it all the same.
    tail = baton_cli(baton.stack, "tail", "--device", "demo-thermostat-5", "--since", "0", "--json")
    try:
        assert tail.stdout is not None
        execution_id = baton.send("demo-thermostat-5", "reboot").json()["id"]
        followed = baton_cli(baton.stack, "events", execution_id, "--follow", "--json")
        out, err = followed.communicate(timeout=30)
        assert followed.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["event"] == "Requested" and lines[-1]["status"] == "SUCCEEDED", lines
        assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))

        seen = read_lines(tail, execution_id)
        assert {s["device_id"] for s in seen} == {"demo-thermostat-5"}
        assert [s["id"] for s in seen if s["execution_id"] == execution_id] == [
            line["id"] for line in lines
        ]

        # The api restarts under it: tail reconnects with Last-Event-ID, misses nothing of
        # what came meanwhile and repeats nothing.
        baton.stack.stop("api")
        baton.stack.start("api")
        wait_ready(baton.stack)
        second = baton.send("demo-thermostat-5", "reboot").json()["id"]
        after = read_lines(tail, second)
        ids = [int(s["id"]) for s in seen + after]
        assert ids == sorted(set(ids)), "no repeats, in order"
        assert [s["seq"] for s in after if s["execution_id"] == second] == list(
            range(1, len([s for s in after if s["execution_id"] == second]) + 1)
        )
    finally:
        tail.terminate()
        tail.wait(timeout=10)
