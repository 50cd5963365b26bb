"""Delivery policies end to end: presence and offline queueing, TTL expiry while offline,
one command at a time, cooldown and its override, each also across a dispatcher killed with
SIGKILL and restarted.

One stack for the module (deploy/catalog/policies.yaml, every device simulated). Stopping
the simulator takes every simulated device offline (each says so on its retained status
topic before it disconnects); starting it brings them back online. The tests run in order
and each leaves the simulator running.

Seeing that something did NOT happen: `relay-1` has no presence on the wire (raw-mapped
without a status topic), so Baton counts it as always online and sends to it whatever the
simulator does. A command to it submitted *after* one to an offline charger goes through the
same dispatcher, event stream, bridge and views; once it is SENT, the charger's command
would be SENT too had it been dispatched.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import ROOT, TERMINAL, Baton, dump_logs, make_stack, running

pytestmark = pytest.mark.e2e

CATALOG = ROOT / "deploy/catalog/policies.yaml"
CHARGERS = ("charger-1", "charger-2", "charger-3", "charger-stubborn-1", "charger-stubborn-2")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(
        make_stack(tmp_path_factory.mktemp("policies"), catalog=CATALOG, simulate_catalog=True)
    ) as started:
        yield started


@pytest.fixture(scope="module")
def baton(stack: Stack) -> Baton:
    return Baton(stack)


@pytest.fixture(autouse=True)
def logs_on_failure(stack: Stack) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(dump_logs(stack))
        raise


# --- helpers ----------------------------------------------------------------------------------


def log_size(stack: Stack, name: str) -> int:
    path = stack.log_dir / f"{name}.log"
    return path.stat().st_size if path.exists() else 0


def wait_log(stack: Stack, name: str, offset: int, lines: list[str], timeout: float = 15) -> None:
    """Wait until every one of `lines` appears in the service's log after `offset`."""
    path: Path = stack.log_dir / f"{name}.log"
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        if all(line in text for line in lines):
            return
        time.sleep(0.05)
    missing = [line for line in lines if line not in text]
    raise AssertionError(f"{missing} not in {path} within {timeout}s")


def presence(stack: Stack, online: bool, offset: int) -> None:
    """The dispatcher has applied every charger's presence report (it logs each change)."""
    word = "online" if online else "offline"
    wait_log(stack, "dispatcher", offset, [f"{device} is {word}" for device in CHARGERS])


def take_offline(stack: Stack) -> None:
    offset = log_size(stack, "dispatcher")
    stack.stop("simulator")  # a clean stop: each device publishes `offline` first
    presence(stack, online=False, offset=offset)


def bring_online(stack: Stack) -> None:
    offset = log_size(stack, "dispatcher")
    stack.start("simulator")
    presence(stack, online=True, offset=offset)


def restart_dispatcher(stack: Stack, kill: bool = True) -> None:
    if kill:
        stack.kill("dispatcher")
    else:
        stack.stop("dispatcher")
    stack.start("dispatcher")


def send_when_up(baton: Baton, device: str, name: str, **kwargs: Any) -> httpx.Response:
    """Submit, waiting out the 503s of a dispatcher that is still starting."""
    deadline = time.monotonic() + 20
    while True:
        response = baton.send(device, name, **kwargs)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def stored_types(stack: Stack, execution_id: str) -> list[str]:
    """The types of the execution's stored events, oldest first (`baton events --json`)."""
    result = subprocess.run(
        [sys.executable, "-m", "baton_cli.main", "events", "--json", execution_id],
        env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["type"] for line in result.stdout.splitlines()]


def submitted(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def still_pending_after_a_control(baton: Baton, execution_ids: list[str]) -> None:
    """A command to the always-online relay, submitted after them, gets SENT while they
    stay PENDING: had any of them been dispatched, it would be SENT by now too."""
    control = submitted(send_when_up(baton, "relay-1", "pulse"))
    baton.wait_for(control, {"SENT", "TIMED_OUT"}, timeout=10)
    for execution_id in execution_ids:
        assert baton.get(execution_id)["status"] == "PENDING"


# --- offline queueing -------------------------------------------------------------------------


def test_a_command_for_an_offline_device_waits_and_goes_out_when_it_is_back(
    stack: Stack, baton: Baton
) -> None:
    take_offline(stack)
    first = submitted(baton.send("charger-1", "Reset"))
    still_pending_after_a_control(baton, [first])

    # The dispatcher dies with the command waiting; its successor knows the device is
    # still offline (the queue is event-sourced) and keeps the next one waiting too.
    restart_dispatcher(stack)
    second = submitted(send_when_up(baton, "charger-1", "StopCharging"))
    still_pending_after_a_control(baton, [first, second])

    bring_online(stack)
    done = [baton.wait_for(e, TERMINAL, timeout=15) for e in (first, second)]
    assert [d["status"] for d in done] == ["SUCCEEDED", "SUCCEEDED"]
    # One at a time, in the order they were submitted.
    assert _started(done[1]) >= _ended(done[0])


def test_a_device_that_dies_is_offline_by_its_last_will(stack: Stack, baton: Baton) -> None:
    offset = log_size(stack, "dispatcher")
    stack.kill("simulator")  # no DISCONNECT: the broker publishes each device's last will
    presence(stack, online=False, offset=offset)
    waiting = submitted(baton.send("charger-1", "Reset"))
    still_pending_after_a_control(baton, [waiting])
    bring_online(stack)
    assert baton.wait_for(waiting, TERMINAL, timeout=15)["status"] == "SUCCEEDED"


def test_a_command_that_waits_past_its_ttl_expires_and_is_never_sent(
    stack: Stack, baton: Baton
) -> None:
    take_offline(stack)
    expiring = submitted(baton.send("charger-2", "Reset", ttl=2))
    restart_dispatcher(stack)  # killed while the command waits: the deadline still holds
    expired = baton.wait_for(expiring, TERMINAL, timeout=2 + 2 + 3)
    assert expired["status"] == "EXPIRED"

    bring_online(stack)
    # A later command to the same device goes out and ends; the expired one never went.
    later = submitted(send_when_up(baton, "charger-2", "Reset"))
    assert baton.wait_for(later, TERMINAL, timeout=15)["status"] == "SUCCEEDED"
    after = baton.get(expiring, expand_log=True)
    assert after["status"] == "EXPIRED"
    assert after["log"] == []


# --- one at a time ----------------------------------------------------------------------------


def _started(execution: dict[str, Any]) -> str:
    entry: str = execution["log"][0]["received_at"]
    return entry


def _ended(execution: dict[str, Any]) -> str:
    entry: str = execution["log"][-1]["received_at"]
    return entry


def test_one_at_a_time_each_starts_after_the_previous_ended_even_across_a_crash(
    stack: Stack, baton: Baton
) -> None:
    ids = [submitted(baton.send("charger-3", "Reset")) for _ in range(4)]
    baton.wait_for(ids[0], {"SUCCEEDED"}, timeout=10)
    restart_dispatcher(stack)  # between two of them
    done = [baton.wait_for(e, TERMINAL, timeout=20) for e in ids]
    assert [d["status"] for d in done] == ["SUCCEEDED"] * 4
    for before, after in itertools.pairwise(done):
        assert [e["status"] for e in after["log"]] == ["STARTED", "SUCCEEDED"]
        # The device said STARTED for the next only after its SUCCEEDED for the previous
        # (both stamped by the one bridge, as it read them).
        assert _started(after) >= _ended(before), (before, after)
    # Every fact on record, in the defined order (docs/statuses.md): the bridge's `published`
    # report races the device's STARTED, yet each stream holds one Published, before it.
    for execution_id in ids:
        assert stored_types(stack, execution_id) == [
            "Requested", "Dispatched", "Published", "Acknowledged", "Succeeded",
        ]  # fmt: skip


# --- cooldown -----------------------------------------------------------------------------------


def test_cooldown_refuses_a_repeat_with_429_unless_overridden(stack: Stack, baton: Baton) -> None:
    first = submitted(baton.send("charger-stubborn-1", "StartCharging"))
    # The cooldown outlives the dispatcher: it is in the device's event-sourced queue.
    restart_dispatcher(stack)
    refused = send_when_up(baton, "charger-stubborn-1", "StartCharging")
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "cooldown-active"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(refused.headers["Retry-After"]) <= 5

    # Another command of the same device is not cooling down.
    other = submitted(baton.send("charger-stubborn-1", "StopCharging"))
    done = [baton.wait_for(e, TERMINAL, timeout=15) for e in (first, other)]
    assert [d["status"] for d in done] == ["SUCCEEDED"] * 2


def test_traxes_ignore_cooldown_sends_inside_the_cooldown(stack: Stack, baton: Baton) -> None:
    first = submitted(baton.send("charger-1", "StartCharging"))
    assert baton.send("charger-1", "StartCharging").status_code == 429
    # The v1 API has no override; Traxes' ignoreCooldown is one (so is SubmitCommand's
    # ignore_cooldown on the NATS submit subject, which it uses).
    overridden = baton.http.post(
        "/traxes/v1/entities/charger-1/commands",
        params={"ignoreCooldown": "true"},
        json={"type": "StartCharging"},
    )
    assert overridden.status_code == 201, overridden.text
    again = str(overridden.json()["id"])
    done = [baton.wait_for(e, TERMINAL, timeout=15) for e in (first, again)]
    assert [d["status"] for d in done] == ["SUCCEEDED"] * 2


# --- verification -------------------------------------------------------------------------------


def test_verification_succeeds_when_the_device_reports_the_state(baton: Baton) -> None:
    execution_id = submitted(send_when_up(baton, "charger-3", "StopCharging"))
    # The charger answers SUCCEEDED and reports {"charging": false}: the rule's state.
    baton.wait_for(execution_id, TERMINAL, timeout=10)
    deadline = time.monotonic() + 10
    while (found := baton.get(execution_id))["verification"]["status"] == "PENDING":
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    assert found["status"] == "SUCCEEDED"
    assert found["verification"]["status"] == "SUCCEEDED"
    assert found["verification"]["completed_at"] is not None
    assert found["verification"]["error"] is None


def test_verification_fails_when_the_state_never_comes(baton: Baton) -> None:
    # The stubborn charger answers SUCCEEDED but keeps reporting {"charging": false}.
    execution_id = submitted(send_when_up(baton, "charger-stubborn-2", "StartCharging"))
    done = baton.wait_for(execution_id, TERMINAL, timeout=10)
    assert done["status"] == "SUCCEEDED"
    deadline = time.monotonic() + 4 + 4  # `within: 4`, and the scheduler's time to fire
    while (found := baton.get(execution_id))["verification"]["status"] == "PENDING":
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    assert found["verification"]["status"] == "FAILED"
    assert found["verification"]["error"]["title"] == "Not verified"
    # The Traxes dialect shows the same, in its words.
    traxes = baton.http.get(f"/traxes/v1/entities/charger-stubborn-2/commands/{execution_id}")
    if traxes.status_code == 200:
        assert traxes.json()["verification"]["status"] == "Failed"
