"""`make run-cluster`'s supervision of its replicas (baton_cli.rolling), over stand-in
processes: a replica stopped by a rolling restart is started again under its name, one that
fails at its start stops the stack, and `baton dev restart` says when there is nothing to
restart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from baton_cli.localstack import Stack
from baton_cli.main import app
from baton_cli.rolling import MIN_UP_S, Supervisor, read_processes, restart_mark


@dataclass
class Process:
    """A stand-in for a started process: running until `exit`."""

    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class Spawning(Stack):
    """A replicated stack whose processes are stand-ins: `spawn` records instead."""

    spawned: list[str] = field(default_factory=list)

    def spawn(self, name: str) -> None:
        self.spawned.append(name)
        self.processes[name] = Process(pid=1000 + len(self.spawned))  # type: ignore[assignment]


def stack(tmp_path: Path) -> Spawning:
    made = Spawning(data_dir=tmp_path, api_key="k", catalog=Path(), replicas=2)
    made.broker = "mosquitto"  # two bridges (MQTT 5), whatever is installed here
    made.replica_api_ports = [20001, 20002]
    pids = iter(range(100, 200))
    made.processes = {name: Process(next(pids)) for name in made.names}  # type: ignore[misc]
    made.processes["simulator"] = Process(next(pids))  # type: ignore[assignment]
    return made


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def supervised(tmp_path: Path) -> tuple[Spawning, Supervisor, Clock, list[str]]:
    made, clock = stack(tmp_path), Clock()
    said: list[str] = []
    supervisor = Supervisor(made, tmp_path / "processes.json", said.append, clock)
    supervisor.begin()
    return made, supervisor, clock, said


def test_a_replica_stopped_after_running_a_while_is_started_again_under_its_name(
    tmp_path: Path,
) -> None:
    made, supervisor, clock, said = supervised(tmp_path)
    clock.now = MIN_UP_S + 1
    made.processes["dispatcher-1"].returncode = 0

    assert supervisor.step() == []

    assert made.spawned == ["dispatcher-1"]
    assert said == ["dispatcher-1 stopped (exit 0); started it again"]
    record = read_processes(tmp_path / "processes.json")
    assert record["dispatcher-1"]["pid"] == made.processes["dispatcher-1"].pid
    assert record["api-2"]["ready"] == "http://127.0.0.1:20002/ready"
    assert record["dispatcher-2"]["ready"] is None
    assert "simulator" not in record  # not a replica: not restarted, not listed


def test_a_replica_that_stops_soon_after_its_start_stops_the_stack(tmp_path: Path) -> None:
    made, supervisor, clock, _ = supervised(tmp_path)
    clock.now = MIN_UP_S + 1
    made.processes["api-1"].returncode = -15
    assert supervisor.step() == []
    clock.now += 1.0
    made.processes["api-1"].returncode = 1

    assert supervisor.step() == ["api-1"]  # again at once: a broken start, not a restart

    assert made.spawned == ["api-1"]


def test_a_replica_restart_asked_for_right_after_its_start_is_a_restart(tmp_path: Path) -> None:
    made, supervisor, clock, _said = supervised(tmp_path)
    clock.now = 1.0  # `baton dev restart` just after the banner
    restart_mark(tmp_path / "processes.json", "device-bridge-2").touch()
    made.processes["device-bridge-2"].returncode = 0

    assert supervisor.step() == []

    assert made.spawned == ["device-bridge-2"]
    assert not restart_mark(tmp_path / "processes.json", "device-bridge-2").exists()


def test_the_simulator_stopping_stops_the_stack(tmp_path: Path) -> None:
    made, supervisor, clock, _ = supervised(tmp_path)
    clock.now = MIN_UP_S + 1
    made.processes["simulator"].returncode = 1

    assert supervisor.step() == ["simulator"]
    assert made.spawned == []


def test_the_record_is_gone_once_the_stack_stops(tmp_path: Path) -> None:
    _, supervisor, _, _ = supervised(tmp_path)
    supervisor.forget()
    assert read_processes(tmp_path / "processes.json") == {}


def test_restart_without_a_cluster_running_says_so_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "processes.json").write_text(json.dumps({"api-1": {"pid": 1}}))

    result = CliRunner().invoke(app, ["dev", "restart", "--data-dir", str(tmp_path)])

    assert result.exit_code == 1
    assert result.output.startswith("error: no `make run-cluster` runs")
    assert "Traceback" not in result.output
