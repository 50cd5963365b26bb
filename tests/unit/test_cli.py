"""The `baton` command: parameter parsing, `send` against a local HTTP server, `events` and
`replay` against a tmp event store, and the help texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import typer
from typer.testing import CliRunner

from baton_cli.localstack import free_port
from baton_cli.main import app, parse_param, parse_params
from baton_domain.application import RequestCommand
from baton_domain.catalog import Catalog, CommandSpec, Device, DeviceType
from baton_domain.statuses import AnswerStatus
from baton_platform.eventstore import open_executions
from baton_platform.settings import Settings
from baton_views import ExecutionViews
from tests.unit.cli_support import EXECUTION, PROBLEM, Answer, FakeApi, api

runner = CliRunner()
__all__ = ["api"]  # the fixture

# --- --param -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("value=24", ("value", 24)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("on=true", ("on", True)),
        ("nothing=null", ("nothing", None)),
        ('label="24"', ("label", "24")),
        ("label=hello", ("label", "hello")),
        ("empty=", ("empty", "")),
        ("list=[1,2]", ("list", [1, 2])),
        ('obj={"a":1}', ("obj", {"a": 1})),
        ("expr=a=b", ("expr", "a=b")),
        ("spaced= hi there", ("spaced", " hi there")),
    ],
)
def test_param_values_are_json_when_they_parse(text: str, expected: tuple[str, Any]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=24", ""])
def test_param_needs_a_key_and_an_equals_sign(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_param(text)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("value=NaN", "value"),
        ("value=Infinity", "value"),
        ("value=-Infinity", "value"),
        ("value=1e400", "value"),  # JSON's grammar, out of any float's range
        ("values=[1,NaN]", "values.1"),
    ],
)
def test_a_param_json_cannot_carry_is_a_usage_error(api: FakeApi, text: str, field: str) -> None:
    """Python's json reads NaN and the infinities, no JSON text holds them: refused, named,
    before any request (it could not be sent)."""
    result = runner.invoke(app, ["send", "d1", "set_temperature", "-p", text, "--api-url", api.url])
    assert result.exit_code == 2, result.output
    [said] = result.stderr.splitlines()
    assert f"--param: {field}: must be a finite number" in said
    assert "Traceback" not in result.output
    assert api.requests == []


def test_a_param_in_quotes_is_text_whatever_it_says() -> None:
    assert parse_param('value="NaN"') == ("value", "NaN")


def test_a_repeated_param_keeps_the_last_value() -> None:
    assert parse_params(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}


# --- send ----------------------------------------------------------------------------------


def test_send_posts_the_command_and_prints_the_execution(api: FakeApi) -> None:
    result = runner.invoke(
        app,
        [
            "send",
            "demo-thermostat-1",
            "set_temperature",
            "-p",
            "value=24",
            "--param",
            "unit=C",
            "--ttl",
            "30",
            "--json",
            "--api-url",
            api.url,
            "--api-key",
            "k1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXECUTION
    [request] = api.requests
    assert request == {
        "method": "POST",
        "path": "/v1/devices/demo-thermostat-1/commands",
        "route": "/v1/devices/demo-thermostat-1/commands",
        "query": {},
        "authorization": "Bearer k1",
        "body": {"name": "set_temperature", "params": {"value": 24, "unit": "C"}, "ttl": 30},
    }


def test_send_reads_url_and_key_from_the_environment(api: FakeApi) -> None:
    result = runner.invoke(
        app, ["send", "d1", "reboot"], env={"BATON_API_URL": api.url, "BATON_API_KEY": "env-key"}
    )
    assert result.exit_code == 0, result.output
    assert "PENDING" in result.stdout  # the summary
    assert EXECUTION["id"] in result.stdout
    [request] = api.requests
    assert request["path"] == "/v1/devices/d1/commands"
    assert request["authorization"] == "Bearer env-key"
    assert request["body"] == {"name": "reboot", "params": {}}


def test_send_uses_the_dev_key_by_default(api: FakeApi) -> None:
    result = runner.invoke(
        app, ["send", "d1", "reboot"], env={"BATON_API_URL": api.url, "BATON_API_KEY": None}
    )
    assert result.exit_code == 0, result.output
    assert api.requests[0]["authorization"] == "Bearer dev-admin-key"


def test_send_prints_a_problem_to_stderr_and_exits_1(api: FakeApi) -> None:
    api.on("POST", Answer(422, PROBLEM, "application/problem+json"))
    result = runner.invoke(
        app, ["send", "d1", "set_temperature", "-p", "value=hot", "--api-url", api.url]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: Invalid params (HTTP 422): the params do not match the command's schema",
        "  - params.value: must be a number",
    ]


def test_send_reports_a_non_json_error(api: FakeApi) -> None:
    api.on("POST", (500, "boom"))
    result = runner.invoke(app, ["send", "d1", "reboot", "--api-url", api.url])
    assert result.exit_code == 1
    assert "500" in result.stderr


def test_send_to_nothing_listening_exits_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["send", "d1", "reboot", "--api-url", url])
    assert result.exit_code == 2
    assert f"cannot reach the Baton API at {url}" in result.stderr


def test_send_rejects_a_malformed_param() -> None:
    result = runner.invoke(app, ["send", "d1", "reboot", "-p", "oops"])
    assert result.exit_code == 2  # a usage error, before any request
    assert "key=value" in result.stderr


# --- events and replay ---------------------------------------------------------------------


CATALOG = Catalog(
    device_types={
        "thermostat": DeviceType(
            commands={
                "set_temperature": CommandSpec(
                    params={"type": "object", "properties": {"value": {"type": "number"}}},
                    ttl=30,
                )
            }
        )
    },
    devices=[Device(id="t-1", type="thermostat")],
)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None) -> Path:
    """The environment the command reads: a data directory, and on PostgreSQL the URL too."""
    monkeypatch.setenv("BATON_DATA_DIR", str(tmp_path / "var"))
    if database_url is not None:
        monkeypatch.setenv("BATON_DATABASE_URL", database_url)
    return tmp_path / "var"


def store_one_execution(data_dir: Path) -> str:
    executions = open_executions(Settings(data_dir=data_dir), CATALOG)
    try:
        outcome = executions.request(RequestCommand("t-1", "set_temperature", {"value": 24}, None))
        execution_id = outcome.execution.id
        executions.record_published(execution_id)
        executions.record_answer(
            execution_id,
            "t-1",
            "r-1",
            AnswerStatus.SUCCEEDED,
            {"temperature": 24},
            outcome.execution.created_on,
        )
    finally:
        executions.close()
    return str(execution_id)


def test_events_prints_one_line_per_event(data_dir: Path) -> None:
    execution_id = store_one_execution(data_dir)
    result = runner.invoke(app, ["events", execution_id])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "Requested",
        "Dispatched",
        "Published",
        "Succeeded",
    ]
    time_, type_, data = lines[0].split(maxsplit=2)
    assert time_.startswith("20")
    assert type_ == "Requested"
    requested = json.loads(data)
    assert requested["device_id"] == "t-1"
    assert requested["params"] == {"value": 24}
    assert requested["ttl"] == 30
    assert "originator_id" not in requested
    assert json.loads(lines[3].split(maxsplit=2)[2])["answer"]["payload"] == {"temperature": 24}


def test_events_as_json_lines(data_dir: Path) -> None:
    execution_id = store_one_execution(data_dir)
    result = runner.invoke(app, ["events", execution_id, "--json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert events[1]["type"] == "Dispatched"
    assert events[1]["data"]["name"] == "set_temperature"


def test_events_of_an_unknown_execution_exits_1(data_dir: Path) -> None:
    store_one_execution(data_dir)
    unknown = str(uuid4())
    result = runner.invoke(app, ["events", unknown])
    assert result.exit_code == 1
    assert f"no execution {unknown}" in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's is the database, there or not
def test_events_without_an_event_store_exits_1(data_dir: Path) -> None:
    result = runner.invoke(app, ["events", str(uuid4())])
    assert result.exit_code == 1
    assert "no event store" in result.stderr
    assert not (data_dir / "events.sqlite").exists()


def test_replay_on_a_database_url_that_is_not_one_says_so_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A BATON_DATABASE_URL set from an empty shell variable (`.../$DB` with DB unset)."""
    monkeypatch.setenv("BATON_DATABASE_URL", "/restored")
    result = runner.invoke(app, ["replay"])
    assert result.exit_code == 1
    assert result.stderr == "error: not a postgresql:// URL: /restored (BATON_DATABASE_URL)\n"


def test_events_needs_a_uuid(data_dir: Path) -> None:
    result = runner.invoke(app, ["events", "not-a-uuid"])
    assert result.exit_code == 2


def test_replay_rebuilds_the_views(data_dir: Path) -> None:
    pytest.importorskip("baton_views.replay")
    store_one_execution(data_dir)
    store_one_execution(data_dir)
    result = runner.invoke(app, ["replay"])
    assert result.exit_code == 0, result.output
    assert "replayed 8 events" in result.stdout  # the executions' events
    # The position is the last notification, device-queue bookkeeping included.
    executions = open_executions(Settings(data_dir=data_dir))
    last = executions.recorder.max_notification_id()
    executions.close()
    assert last is not None and last > 8
    assert f"position {last}" in result.stdout
    views = ExecutionViews(Settings(data_dir=data_dir).views_database)
    try:
        assert views.position() == last and views.list().total_count == 2
    finally:
        views.close()
    again = runner.invoke(app, ["replay"])  # idempotent: the same again
    assert again.stdout == result.stdout


# --- help ----------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("send", "events", "replay", "simulate", "dev"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["send", "events", "replay", "simulate"])
def test_each_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


# --- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["send", "d1", "reboot", "--bogus"], "No such option: --bogus"),
        (["send"], "Missing argument 'device'"),
        (["send", "d1", "reboot", "--ttl", "soon"], "Invalid value for '--ttl'"),
        (["send", "d1", "reboot", "--ttl", "0"], "Invalid value for '--ttl'"),
        (["--bogus"], "No such option: --bogus"),
        (["nope"], "No such command 'nope'"),
        (["devices", "show"], "Missing argument 'device_id'"),
    ],
)
def test_a_usage_error_is_one_error_line_on_stderr_and_exits_2(args: list[str], said: str) -> None:
    """docs/cli.md: an error is one line on stderr starting `error:`; a usage error exits 2."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: "), line
    assert said in line
    assert line.endswith(" --help'")  # where the options are described


def test_a_group_without_a_command_still_prints_its_help() -> None:
    result = runner.invoke(app, ["devices"])
    assert "Usage" in result.output
    assert "error:" not in result.output


def test_simulate_refuses_an_unknown_protocol() -> None:
    result = runner.invoke(app, ["simulate", "--mqtt-protocol", "4"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("args", "devices", "silent"),
    [
        ([], [f"demo-thermostat-{n}" for n in range(1, 6)], ["demo-silent-1"]),
        (["-d", "a", "--device", "b", "--silent", "s"], ["a", "b"], ["s"]),
    ],
)
def test_simulate_runs_the_simulator(
    monkeypatch: pytest.MonkeyPatch, args: list[str], devices: list[str], silent: list[str]
) -> None:
    import baton_simulator

    calls: list[tuple[Any, ...]] = []

    async def fake_run_simulator(*call: Any) -> None:
        calls.append(call)

    monkeypatch.setattr(baton_simulator, "run_simulator", fake_run_simulator, raising=False)
    result = runner.invoke(
        app, ["simulate", *args], env={"BATON_MQTT_HOST": "mqtt.local", "BATON_MQTT_PORT": "1884"}
    )
    assert result.exit_code == 0, result.output
    [(host, port, protocol, got_devices, got_silent, stop)] = calls
    assert (host, port, protocol) == ("mqtt.local", 1884, "5")
    assert (got_devices, got_silent) == (devices, silent)
    assert stop is not None
