"""The `baton` command against the whole stack, run as a user runs it (a subprocess, the
stack's settings in its environment, from a directory that is not the stack's): send --wait
and its exit codes, list, get, cancel, retry, delete, devices, types, catalog import
--dry-run; and nothing listening named with the URL tried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton_cli.localstack import Stack, free_port
from tests.e2e.conftest import ROOT, Baton

pytestmark = pytest.mark.e2e

BATON = Path(sys.executable).parent / "baton"
DEMO = ROOT / "deploy/catalog/demo.yaml"


def cli(stack: Stack, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BATON), *args],
        env={**os.environ, **stack.env()},
        cwd=cwd or Path("/"),
        capture_output=True,
        text=True,
        timeout=90,
    )


def cli_json(stack: Stack, *args: str) -> Any:
    done = cli(stack, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- send --wait and its exit codes ----------------------------------------------------------


def test_send_wait_expect_success_exits_0_when_it_succeeds(stack: Stack) -> None:
    done = cli(
        stack, "send", "demo-thermostat-1", "set_temperature", "-p", "value=21",
        "--wait", "20", "--expect-success",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "  status   SUCCEEDED" in done.stdout
    assert '  result   {"current_temperature":21}' in done.stdout


@pytest.mark.parametrize(
    ("device", "command", "status"),
    [
        ("demo-thermostat-2", "self_test", "FAILED"),
        ("demo-thermostat-3", "factory_reset", "REJECTED"),
    ],
)
def test_send_expect_success_exits_3_when_it_ends_otherwise(
    stack: Stack, device: str, command: str, status: str
) -> None:
    done = cli(stack, "send", device, command, "--wait", "20", "--expect-success", "--json")
    assert done.returncode == 3, done.stderr
    execution = json.loads(done.stdout)
    assert execution["status"] == status
    assert done.stderr == f"error: execution {execution['id']} ended {status}\n"


def test_send_expect_success_exits_4_when_the_wait_runs_out(stack: Stack) -> None:
    done = cli(stack, "send", "demo-silent-1", "reboot", "--wait", "1", "--expect-success")
    assert done.returncode == 4, done.stdout
    assert "is still" in done.stderr


def test_a_refused_command_is_one_line_per_problem_and_exit_1(stack: Stack) -> None:
    done = cli(stack, "send", "demo-thermostat-1", "set_temperature", "-p", "value=99")
    assert done.returncode == 1
    assert done.stdout == ""
    first, *fields = done.stderr.splitlines()
    assert first.startswith("error: ") and "(HTTP 422)" in first
    assert fields == ["  - params.value: 99 is greater than the maximum of 35"]


def test_nothing_listening_names_the_url_tried(stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(BATON), "list"],
        env={**os.environ, **stack.env(), "BATON_API_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot reach the Baton API at {url} (BATON_API_URL)")


# --- list, get, cancel, retry, delete -----------------------------------------------------------


def test_list_filters_and_pages(stack: Stack, baton: Baton) -> None:
    ids = [baton.send("demo-thermostat-4", "reboot").json()["id"] for _ in range(3)]
    page = cli_json(stack, "list", "-d", "demo-thermostat-4", "-n", "reboot", "--limit", "2")
    assert [e["id"] for e in page["items"]] == ids[::-1][:2]
    assert page["total_count"] == 3
    rest = cli_json(stack, "list", "-d", "demo-thermostat-4", "--cursor", page["next_cursor"])
    assert [e["id"] for e in rest["items"]] == ids[:1]
    assert cli_json(stack, "list", "-d", "demo-thermostat-4", "--since", "1d")["total_count"] == 3
    assert cli_json(stack, "list", "-d", "demo-thermostat-4", "--until", "1d")["items"] == []
    table = cli(stack, "list", "-d", "demo-thermostat-4")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()  # piped: the rows alone, no header
    assert [line.split()[0] for line in lines] == ids[::-1]
    assert table.stderr == "3 of 3 execution(s)\n"
    bad = cli(stack, "list", "-s", "NOT_A_STATUS")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ")


def test_cancel_retry_get_delete(stack: Stack, baton: Baton) -> None:
    sent = cli_json(stack, "send", "demo-silent-1", "reboot", "--ttl", "60")
    canceled = cli_json(stack, "cancel", sent["id"], "--reason", "changed my mind")
    assert canceled["status"] == "CANCELED"
    again = cli(stack, "cancel", sent["id"])
    assert again.returncode == 1
    assert len(again.stderr.splitlines()) == 1 and "(HTTP 409)" in again.stderr

    retried = cli_json(stack, "retry", sent["id"])
    assert retried["retry_of"] == sent["id"]
    shown = cli(stack, "get", sent["id"])
    assert shown.returncode == 0, shown.stderr
    assert "  status   CANCELED" in shown.stdout
    assert f"  retried  by {retried['id']}" in shown.stdout

    deleted = cli(stack, "delete", retried["id"])
    assert deleted.stdout == f"deleted execution {retried['id']}\n"
    gone = cli(stack, "get", retried["id"])
    assert gone.returncode == 1
    assert "(HTTP 404)" in gone.stderr


# --- devices and types -----------------------------------------------------------------------


def test_types_and_devices_add_show_remove(stack: Stack, tmp_path: Path) -> None:
    definition = tmp_path / "lamp.yaml"
    definition.write_text("commands:\n  toggle:\n    ttl: 5\n")
    added = cli(stack, "types", "add", "lamp", "-f", str(definition))
    assert added.stdout == "added device type lamp (toggle)\n", added.stderr
    assert cli_json(stack, "types", "show", "lamp")["commands"]["toggle"]["ttl"] == 5
    names = [t["name"] for t in cli_json(stack, "types", "list")["items"]]
    assert names == ["lamp", "thermostat"]
    twice = cli(stack, "types", "add", "lamp", "-f", str(definition))
    assert twice.returncode == 1 and "(HTTP 409)" in twice.stderr

    device = cli(stack, "devices", "add", "lamp-1", "-t", "lamp", "-l", "room=hall")
    assert device.stdout == "added device lamp-1 (lamp)\n", device.stderr
    shown = yaml.safe_load(cli(stack, "devices", "show", "lamp-1").stdout)
    assert shown["labels"] == {"room": "hall"}
    listed = cli(stack, "devices", "list", "--type", "lamp")
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["lamp-1", "lamp", "unknown", "-", "0", "room=hall"],  # it never connected
    ]
    assert listed.stderr == "1 of 1 device(s)\n"
    first = cli_json(stack, "devices", "list", "--limit", "2")
    assert [d["id"] for d in first["items"]] == ["demo-silent-1", "demo-thermostat-1"]
    rest = cli_json(stack, "devices", "list", "--cursor", first["next_cursor"])
    assert [d["id"] for d in rest["items"]][:1] == ["demo-thermostat-2"]

    in_use = cli(stack, "types", "remove", "lamp")
    assert in_use.returncode == 1 and "(HTTP 409)" in in_use.stderr
    assert cli(stack, "devices", "remove", "lamp-1").stdout == "removed device lamp-1\n"
    assert cli(stack, "types", "remove", "lamp").stdout == "removed device type lamp\n"
    missing = cli(stack, "devices", "show", "lamp-1")
    assert missing.returncode == 1 and "(HTTP 404)" in missing.stderr


# --- catalog import --dry-run ----------------------------------------------------------------


def test_catalog_import_dry_run_changes_nothing(stack: Stack, baton: Baton, tmp_path: Path) -> None:
    before = baton.http.get("/v1/catalog").json()
    document = yaml.safe_load(DEMO.read_text())
    document["devices"].append({"id": "lab-1", "type": "thermostat"})
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(document))
    done = cli(stack, "catalog", "import", str(good), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "+ device lab-1",
        f"{good} is valid; nothing changed (dry run)",
    ]

    document["device_types"]["thermostat"]["commands"]["reboot"]["ttl"] = -1
    document["devices"].append({"id": "lab-2"})  # no type
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    done = cli(stack, "catalog", "import", str(bad), "--dry-run")
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors[0].startswith("error: device_types.thermostat.commands.reboot.ttl: ")
    assert errors[1].startswith("error: devices.7.type: ")
    assert errors[-1] == f"error: {bad} is not a valid catalog (2 error(s)); nothing changed"
    assert baton.http.get("/v1/catalog").json() == before
    # What the import itself says of the same file: the same fields.
    real = cli(stack, "catalog", "import", str(bad))
    assert real.returncode == 1
    assert "device_types.thermostat.commands.reboot.ttl" in real.stderr
    assert baton.http.get("/v1/catalog").json() == before
