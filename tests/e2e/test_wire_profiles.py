"""Every wire profile end to end: a command through the HTTP API reaches a simulated device
speaking its type's profile (deploy/catalog/profiles.yaml), and its answers come back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import TERMINAL, Baton, make_stack, running

pytestmark = pytest.mark.e2e

CATALOG = Path(__file__).resolve().parents[2] / "deploy/catalog/profiles.yaml"
JSON_DEVICES = ["baton-thermo-1", "fleets-thermo-1", "aws-thermo-1"]


@pytest.fixture(scope="module")
def profiles_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(
        make_stack(tmp_path_factory.mktemp("profiles"), catalog=CATALOG, simulate_catalog=True)
    ) as started:
        yield started


@pytest.fixture(scope="module")
def baton(profiles_stack: Stack) -> Baton:
    return Baton(profiles_stack)


@pytest.mark.parametrize("device", JSON_DEVICES)
def test_a_command_succeeds_with_its_result(baton: Baton, device: str) -> None:
    response = baton.send(device, "set_temperature", {"value": 21}, wait=10)
    assert response.status_code == 201, response.text
    execution = response.json()
    assert execution["status"] == "SUCCEEDED", execution
    assert execution["result"] == {"current_temperature": 21}


@pytest.mark.parametrize("device", JSON_DEVICES)
def test_a_refusal_comes_back_with_its_message(baton: Baton, device: str) -> None:
    execution = baton.send(device, "factory_reset", wait=10).json()
    assert execution["status"] == "REJECTED", execution
    assert "not allowed" in execution["error"]["message"]


def test_aws_failure_reason_becomes_the_error(baton: Baton) -> None:
    execution = baton.send("aws-thermo-1", "self_test", wait=10).json()
    assert execution["status"] == "FAILED", execution
    assert execution["error"]["code"] == "DEVICE_ERROR"
    assert "temperature sensor" in execution["error"]["message"]


def test_raw_mapped_lock_then_a_failing_self_test(baton: Baton) -> None:
    lock = baton.send("iotee-1", "lock", wait=10).json()
    assert lock["status"] == "SUCCEEDED", lock
    assert lock["result"] == {"answer": "done"}
    detail = baton.get(lock["id"], expand_log=True)
    assert [entry["status"] for entry in detail["log"]] == ["STARTED", "SUCCEEDED"]
    test = baton.send("iotee-1", "self_test").json()
    failed = baton.wait_for(test["id"], TERMINAL, timeout=10)
    assert failed["status"] == "FAILED", failed
    assert failed["error"]["answer"] == "err"


def test_a_silent_device_of_another_profile_times_out(baton: Baton) -> None:
    execution = baton.send("fleets-silent-1", "reboot", ttl=2).json()
    done = baton.wait_for(execution["id"], TERMINAL, timeout=6)
    assert done["status"] == "TIMED_OUT"
