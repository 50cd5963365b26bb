"""`baton dev run` (`make run`): the stack it wires, without starting it (issue 6, defects 15
and 20): the simulator runs the catalog in use; each service has its own metrics port, on by
default and printed in the banner; a busy port is one clear line naming the setting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from baton_cli import devstack
from baton_cli.devstack import (
    DEFAULT_METRICS_PORT,
    _banner,
    dev_app,
    dev_stack,
    first_command,
    metrics_port_problem,
)
from baton_cli.devstate import write_state
from baton_cli.localstack import SERVICE_MODULES, Stack, free_port
from baton_cli.main import app, catalog_specs
from baton_domain.catalog import Catalog
from baton_platform.metrics import serve_metrics
from baton_simulator import SILENT, THERMOSTAT

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "deploy/catalog/seeds.yaml"
DEMO = ROOT / "deploy/catalog/demo.yaml"


# --- defect 15: the simulator runs the catalog in use -----------------------------------------


@pytest.mark.parametrize("catalog", ["seeds", "demo", "profiles"])
def test_the_simulator_of_make_run_runs_the_devices_of_the_catalog_in_use(
    tmp_path: Path, catalog: str
) -> None:
    path = ROOT / f"deploy/catalog/{catalog}.yaml"
    dev = dev_stack(data_dir=tmp_path, api_key="k", catalog=path)
    assert dev.simulator_args() == ["--catalog", str(path)]
    # What `baton simulate --catalog` then runs: every device, in its type's profile.
    simulated = {spec.device_id for spec in catalog_specs(path, [], [])}
    assert simulated == {device.id for device in Catalog.from_yaml(path).devices}


def test_the_demo_catalog_keeps_its_silent_device_silent() -> None:
    specs = {s.device_id: s for s in catalog_specs(ROOT / "deploy/catalog/demo.yaml", [], [])}
    assert specs["demo-silent-1"].behaviour is SILENT
    assert specs["demo-thermostat-1"].behaviour is THERMOSTAT


# --- defect 20: one metrics port per service ---------------------------------------------------


def test_each_service_gets_its_own_metrics_port(tmp_path: Path) -> None:
    dev = dev_stack(data_dir=tmp_path, api_key="k", catalog=SEEDS, metrics_port=9180)
    ports = {name: int(dev.service_env(name)["BATON_METRICS_PORT"]) for name in SERVICE_MODULES}
    assert ports == {
        "dispatcher": 9180,
        "timeout-scheduler": 9181,
        "device-bridge": 9182,
        "api": 9183,
    }
    banner = _banner(dev)
    for name, port in ports.items():
        assert f"http://127.0.0.1:{port}/metrics   ({name})" in banner


def test_metrics_off_is_said_to_every_service(tmp_path: Path) -> None:
    """ "0", not left out: an inherited BATON_METRICS_PORT would otherwise reach all four."""
    dev = dev_stack(data_dir=tmp_path, api_key="k", catalog=SEEDS, metrics_port=0)
    assert {dev.service_env(name)["BATON_METRICS_PORT"] for name in SERVICE_MODULES} == {"0"}
    assert "/metrics" not in _banner(dev)


def test_make_run_serves_metrics_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no setting, `baton dev run` asks for the default ports, checked before anything
    starts: taking one of them shows the default is on (and stops it before any process)."""
    monkeypatch.delenv("BATON_METRICS_PORT", raising=False)
    taken = DEFAULT_METRICS_PORT + 2
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", taken))
        except OSError:
            pytest.skip(f"port {taken} is in use on this machine")
        sock.listen()
        result = CliRunner().invoke(dev_app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"BATON_METRICS_PORT={DEFAULT_METRICS_PORT}: port {taken} (device-bridge" in (
        result.output
    )
    assert not (tmp_path / "log").exists()  # nothing was started


def test_make_run_starts_every_process_in_a_session_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C on `make run` reaches only `baton dev run`, which stops the services before the
    servers they use: nothing it starts is tied to it, as the tests' processes are to them
    (tests/integration/test_harness.py starts such a stack)."""
    built: list[Stack] = []

    def stop_before_starting(stack: Stack) -> str:
        built.append(stack)
        return "stopped before starting anything"

    monkeypatch.setattr(devstack, "metrics_port_problem", stop_before_starting)
    result = CliRunner().invoke(dev_app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert [stack.own_session for stack in built] == [True]
    assert not dev_stack(data_dir=tmp_path, api_key="k", catalog=DEMO).own_session


def held_ports(count: int) -> list[socket.socket]:
    """`count` consecutive loopback ports, each listened on here. All of them are held, so
    what the test sees cannot depend on whether another process took a neighbour (a run
    of the suite once found base+1 taken while it held only base+3)."""
    for _ in range(50):
        base = free_port()
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
                sock.listen()
        except OSError:
            for sock in held:
                sock.close()
            continue
        return held
    raise AssertionError(f"no {count} consecutive free ports found")


def test_a_busy_metrics_port_stops_make_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    held = held_ports(len(SERVICE_MODULES))
    base = held[0].getsockname()[1]
    try:
        monkeypatch.setenv("BATON_METRICS_PORT", str(base))
        result = CliRunner().invoke(dev_app, ["run", "--data-dir", str(tmp_path)])
    finally:
        for sock in held:
            sock.close()
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()[-1:]
    assert line.startswith(f"BATON_METRICS_PORT={base}: port {base} (dispatcher metrics")
    assert "Traceback" not in result.output
    assert not (tmp_path / "log").exists()  # nothing was started


def test_make_run_takes_no_setting_from_the_last_stack_s_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The record `baton send` & co. read (baton_cli.devstate) is of the last stack, maybe a
    `make run-cluster` since stopped: its database, catalog and NATS credentials are not this
    stack's to start on."""
    last = tmp_path / "cluster"
    write_state(
        {
            "BATON_DATABASE_URL": "postgresql://baton:x@127.0.0.1:1/postgres",
            "BATON_CATALOG_PATH": str(last / "gone.yaml"),
            "BATON_NATS_CREDENTIALS": str(last / "credentials.json"),
        },
        1,
    )
    for key in ("BATON_DATABASE_URL", "BATON_CATALOG_PATH", "BATON_NATS_CREDENTIALS"):
        monkeypatch.setenv(key, "")  # unset as far as the record goes; restored afterwards
    held = held_ports(len(SERVICE_MODULES))  # so that it stops before starting anything
    try:
        monkeypatch.setenv("BATON_METRICS_PORT", str(held[0].getsockname()[1]))
        result = CliRunner().invoke(app, ["dev", "run", "--data-dir", str(tmp_path / "var")])
    finally:
        for sock in held:
            sock.close()
    assert result.exit_code == 1, result.output
    assert "BATON_METRICS_PORT=" in result.output  # it got as far as its ports
    for key in ("BATON_DATABASE_URL", "BATON_CATALOG_PATH", "BATON_NATS_CREDENTIALS"):
        assert os.environ[key] == "", key


def test_a_busy_metrics_port_is_one_line_naming_the_setting(busy: socket.socket) -> None:
    port = busy.getsockname()[1]
    with pytest.raises(SystemExit) as caught:
        serve_metrics(port)
    message = str(caught.value.code)
    assert message.startswith(f"BATON_METRICS_PORT={port}: cannot serve metrics")
    assert "\n" not in message


def test_a_service_on_a_busy_metrics_port_exits_with_that_line_not_a_traceback(
    busy: socket.socket, tmp_path: Path
) -> None:
    port = busy.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "baton_device_bridge"],
        env={
            "BATON_METRICS_PORT": str(port),
            "BATON_DATA_DIR": str(tmp_path),
            "BATON_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"BATON_METRICS_PORT={port}:")


# --- the banner's first command fits the catalog in use ----------------------------------------


def test_the_banner_shows_a_command_of_the_catalog_in_use(tmp_path: Path) -> None:
    demo = _banner(dev_stack(data_dir=tmp_path, api_key="k", catalog=DEMO))
    assert "/v1/devices/demo-thermostat-1/commands" in demo
    assert "baton send demo-thermostat-1 set_temperature --param value=22" in demo

    seeds = _banner(dev_stack(data_dir=tmp_path, api_key="k", catalog=SEEDS))
    device, name, params = first_command(SEEDS)
    catalog = Catalog.from_yaml(SEEDS)
    assert device == catalog.devices[0].id
    spec = catalog.device_types[catalog.devices[0].type].commands[name]
    assert not spec.params.get("required") and params == {}
    assert f"/v1/devices/{device}/commands" in seeds and "demo-thermostat" not in seeds


def test_run_cluster_s_banner_gives_the_url_of_its_own_store_and_hides_the_operator_s(
    tmp_path: Path,
) -> None:
    """`pg_dump "$BATON_DATABASE_URL"` (docs/operations.md, "Backup and restore") needs the
    URL of the throwaway server the cluster started; a URL the operator gave is theirs."""
    url = "postgresql://baton:s3cret@127.0.0.1:5433/postgres"
    stack = dev_stack(data_dir=tmp_path, api_key="k", catalog=DEMO, replicas=2)
    stack.database_url = url
    assert f"BATON_DATABASE_URL={url}" in _banner(stack)
    given = _banner(stack, own_store=False)
    assert "s3cret" not in given and "postgresql://baton:***@127.0.0.1:5433/postgres" in given


def test_metrics_ports_left_in_time_wait_by_the_last_stack_are_free(tmp_path: Path) -> None:
    """`make stop` then `make run-cluster`: the last stack's scraped metrics ports are in
    TIME_WAIT for a minute, which stops no metrics server from listening on them (they bind
    with SO_REUSEADDR, as http.server does), so the check before the start may not call
    them taken."""
    held = held_ports(len(SERVICE_MODULES))
    base = held[0].getsockname()[1]
    for listener in held:
        listener.close()
    for port in range(base, base + len(SERVICE_MODULES)):
        with socket.socket() as server:  # a metrics server of the last stack, scraped once
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            client = socket.create_connection(("127.0.0.1", port))
            served, _ = server.accept()
            served.close()  # the server's side closes first: its port is left in TIME_WAIT
            client.close()
    plain = socket.socket()  # what the check did: refused while TIME_WAIT lasts
    with plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", base))

    stack = dev_stack(data_dir=tmp_path, api_key="k", catalog=DEMO, metrics_port=base)
    assert metrics_port_problem(stack) is None
