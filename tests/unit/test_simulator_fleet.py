"""A simulated fleet without a broker: answer times, fleet ids, the open files limit, and the
`baton simulate --fleet/--answer-delay` and `baton catalog fleet` commands."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import baton_simulator
from baton_cli.main import app
from baton_domain.catalog import Catalog
from baton_simulator import CHARGER, SILENT, THERMOSTAT, Timing, TooManyDevices, fleet_ids
from baton_simulator.behaviours import plan
from tests.unit.test_simulator_behaviours import request

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "catalog" / "demo.yaml"
runner = CliRunner()


def delays(behaviour: Any, name: str) -> list[float]:
    return [action.delay for action in plan(behaviour, request(name, {"value": 21}))]


def test_answer_delay_sets_the_time_to_the_first_answer_only() -> None:
    timed = THERMOSTAT.timed(Timing(answer_delay=0.005))
    assert delays(timed, "set_temperature") == [0.005, 0.0]
    assert delays(timed, "reboot") == [0.005, 1.0, 1.0]  # later steps keep their own


def test_progress_delay_sets_the_wait_before_every_later_step() -> None:
    timed = THERMOSTAT.timed(Timing(progress_delay=0.01))
    assert delays(timed, "reboot") == [0.0, 0.01, 0.01]
    assert delays(CHARGER.timed(Timing(0.002, 0.003)), "StartCharging") == [0.002, 0.003, 0.003]


def test_timing_keeps_what_each_step_answers_and_the_unknown_command_rule() -> None:
    timed = THERMOSTAT.timed(Timing(0.1, 0.2))
    for name in ("set_temperature", "reboot", "factory_reset", "no_such_command"):
        untimed = plan(THERMOSTAT, request(name, {"value": 21}))
        got = plan(timed, request(name, {"value": 21}))
        assert [a.answer.status if a.answer else None for a in got] == [
            a.answer.status if a.answer else None for a in untimed
        ]
    assert delays(timed, "no_such_command") == [0.1]
    assert THERMOSTAT.timed(Timing()) is THERMOSTAT
    assert SILENT.timed(Timing(0.1, 0.1)).script_for("anything") == ()


def test_a_timing_cannot_be_negative_and_fills_in_from_a_default() -> None:
    with pytest.raises(ValueError):
        Timing(answer_delay=-1)
    assert Timing(progress_delay=2).over(Timing(1, 3)) == Timing(1, 2)


def test_fleet_ids_are_stable_so_a_smaller_fleet_is_the_start_of_a_larger_one() -> None:
    assert fleet_ids(3) == ["sim-00001", "sim-00002", "sim-00003"]
    assert fleet_ids(1000, "lab-")[:10] == fleet_ids(10, "lab-")
    assert len(set(fleet_ids(10_000))) == 10_000


def test_the_open_files_limit_is_raised_for_a_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: set_to.append(limits))
    baton_simulator.raise_fd_limit(10_000)
    assert set_to == [(10_000 + baton_simulator.SPARE_FDS, 65536)]
    set_to.clear()
    baton_simulator.raise_fd_limit(100)  # fits already: left alone
    assert set_to == []


def test_a_fleet_beyond_the_hard_limit_is_refused_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    with pytest.raises(TooManyDevices, match="ulimit -Hn"):
        baton_simulator.raise_fd_limit(10_000)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    recorded: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def fake_run_simulator(*args: Any, **kwargs: Any) -> None:
        recorded.append((args, kwargs))

    monkeypatch.setattr(baton_simulator, "run_simulator", fake_run_simulator)
    return recorded


def test_simulate_a_fleet_with_answer_times(calls: list[Any]) -> None:
    result = runner.invoke(
        app,
        ["simulate", "--fleet", "1000", "--answer-delay", "5ms", "--progress-delay", "0.2s"],
    )
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = calls
    assert args[3:5] == ([], [])
    specs = kwargs["specs"]
    assert [s.device_id for s in specs] == fleet_ids(1000)
    assert {s.wire.profile for s in specs} == {"baton"}
    assert delays(specs[0].behaviour, "reboot") == [0.005, 0.2, 0.2]


def test_answer_times_by_behaviour(calls: list[Any]) -> None:
    result = runner.invoke(
        app,
        [
            "simulate", "-d", "t1", "--silent", "s1",
            "--fleet", "2", "--type", "charger", "--prefix", "ev-",
            "--answer-delay", "1", "--answer-delay", "charger=10ms", "--connect-batch", "7",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(_, kwargs)] = calls
    by_id = {s.device_id: s.behaviour for s in kwargs["specs"]}
    assert list(by_id) == ["t1", "s1", "ev-00001", "ev-00002"]
    assert delays(by_id["t1"], "set_temperature") == [1.0, 0.0]
    assert delays(by_id["ev-00002"], "StartCharging") == [0.01, 0.2, 0.0]
    assert by_id["s1"].script_for("reboot") == ()
    assert kwargs["connect_batch"] == 7


def test_simulate_keeps_a_journal_where_asked(calls: list[Any], tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    result = runner.invoke(app, ["simulate", "-d", "a"], env={"BATON_SIMULATOR_JOURNAL": str(path)})
    assert result.exit_code == 0, result.output
    [(_, kwargs)] = calls
    assert kwargs["journal"].path == path
    assert path.exists()


def test_one_answer_time_for_every_device_is_passed_as_is(calls: list[Any]) -> None:
    result = runner.invoke(app, ["simulate", "-d", "a", "--answer-delay", "250ms"])
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = calls
    assert args[3:5] == (["a"], [])
    assert kwargs == {"timing": Timing(answer_delay=0.25)}


@pytest.mark.parametrize(
    "args",
    [
        ["--answer-delay", "soon"],
        ["--answer-delay", "-5ms"],
        ["--progress-delay", "nan"],
        ["--answer-delay", "toaster=5ms"],
        ["--fleet", "0"],
        ["--fleet", "3", "--behaviour", "toaster"],
        ["--fleet", "3", "--catalog", str(DEMO)],
    ],
)
def test_simulate_refuses_wrong_fleet_options(calls: list[Any], args: list[str]) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert calls == []


def test_catalog_fleet_writes_the_devices_simulate_fleet_runs(tmp_path: Path) -> None:
    out = tmp_path / "fleet.yaml"
    result = runner.invoke(
        app, ["catalog", "fleet", "1000", "--base", str(DEMO), "--prefix", "sim-", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    catalog = Catalog.model_validate(yaml.safe_load(out.read_text()))
    base = Catalog.model_validate(yaml.safe_load(DEMO.read_text()))
    assert catalog.device_types == base.device_types
    assert [d.id for d in catalog.devices] == [d.id for d in base.devices] + fleet_ids(1000)
    assert {d.type for d in catalog.devices} == {"thermostat"}


def test_catalog_fleet_to_stdout_and_its_errors() -> None:
    result = runner.invoke(app, ["catalog", "fleet", "2", "--base", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert [d["id"] for d in yaml.safe_load(result.stdout)["devices"]][-2:] == fleet_ids(2)
    unknown = runner.invoke(app, ["catalog", "fleet", "2", "--base", str(DEMO), "--type", "x"])
    assert unknown.exit_code == 1
    assert "no device type 'x'" in unknown.output
    bad = runner.invoke(app, ["catalog", "fleet", "1", "--base", str(DEMO), "--prefix", "b@d "])
    assert bad.exit_code == 1
    assert "not make a valid catalog" in bad.output
