"""The `baton` verbs over the API (list, get, cancel, retry, delete, devices, types, send
--wait, catalog import --dry-run) against a fake API: the requests they make, what they print
(piped: plain columns, no header, no colour, no trailing blanks), their exit codes; and how
the CLI finds the last dev stack's settings (devstate), `baton dev reset` and the `make run`
banner."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import typer
import yaml
from rich.text import Text
from typer.testing import CliRunner

from baton_cli.catalog import catalog_diff, catalog_errors
from baton_cli.devstack import PID_FILE, _banner, catalog_warning, dev_app, dev_stack
from baton_cli.devstate import CLIENT_SETTINGS, read_state, write_state
from baton_cli.executions import parse_moment
from baton_cli.localstack import free_port
from baton_cli.main import app
from baton_cli.output import moment, problem_lines
from baton_domain.catalog import Catalog
from tests.unit.cli_support import EXECUTION, Answer, FakeApi, api

__all__ = ["api"]  # the fixture

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy/catalog/demo.yaml"
ID = str(EXECUTION["id"])
ENDED = {**EXECUTION, "status": "SUCCEEDED", "result": {"current_temperature": 24}}
PAGE = {
    "items": [ENDED, {**EXECUTION, "id": "1c8e7d2f-7b9f-4d90-8b54-3f2e8e1f0c22"}],
    "total_count": 7,
    "total_count_exact": True,
    "next_cursor": "abc",
}


@pytest.fixture(autouse=True)
def clean_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BATON_* client setting from the outside; whatever a test's `baton` fills from a
    dev stack's state is undone after it."""
    for key in CLIENT_SETTINGS:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    # `baton simulate` run in-process by another test configured logging onto its runner's
    # stderr, closed since: what logs now (httpx) would write there and fail.
    for handler in list(logging.root.handlers):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
            logging.root.removeHandler(handler)


def invoke(api: FakeApi, *args: str) -> typer.testing.Result:
    return runner.invoke(app, [*args], env={"BATON_API_URL": api.url, "BATON_API_KEY": "k"})


# --- list -----------------------------------------------------------------------------------


def test_list_sends_every_filter_and_prints_a_table(api: FakeApi) -> None:
    api.on("GET", (200, PAGE))
    result = invoke(
        api,
        "list",
        "-d",
        "demo-thermostat-1",
        "-n",
        "set_temperature",
        "-s",
        "failed,TIMED_OUT",
        "-s",
        "SUCCEEDED",
        "--since",
        "2026-11-01T00:00:00",
        "--until",
        "2026-11-02T00:00:00Z",
        "--limit",
        "2",
        "--cursor",
        "xyz",
        "--oldest",
        "--ephemeral",
    )
    assert result.exit_code == 0, result.output
    [request] = api.requests
    assert request["route"] == "/v1/executions"
    assert request["query"] == {
        "limit": ["2"],
        "order": ["oldest"],
        "device_id": ["demo-thermostat-1"],
        "name": ["set_temperature"],
        "status": ["FAILED", "TIMED_OUT", "SUCCEEDED"],
        "created_after": ["2026-11-01T00:00:00+00:00"],
        "created_before": ["2026-11-02T00:00:00+00:00"],
        "cursor": ["xyz"],
        "show": ["ALL"],
    }
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        ID,
        "demo-thermostat-1",
        "set_temperature",
        "SUCCEEDED",
        "2026-11-01",
        "12:00:00",
        "2026-11-01",
        "12:00:00",
    ]
    assert len(lines) == 2
    assert all(line == line.rstrip() and "\x1b" not in line for line in lines)
    assert result.stderr == "2 of 7 execution(s); next page: --cursor abc\n"


@pytest.mark.parametrize(
    ("args", "page", "first_column"),
    [
        (["list"], PAGE, [ID, "1c8e7d2f-7b9f-4d90-8b54-3f2e8e1f0c22"]),
        (["devices", "list"], {"items": [{"id": "c-1", "type": "charger"}]}, ["c-1"]),
        (["types", "list"], {"items": [{"name": "lamp"}, {"name": "relay"}]}, ["lamp", "relay"]),
    ],
)
def test_a_piped_table_is_its_rows_alone(
    api: FakeApi, args: list[str], page: dict[str, Any], first_column: list[str]
) -> None:
    """docs/cli.md: piped, stdout holds the result alone; `| awk '{print $1}'` gives the ids."""
    api.on("GET", (200, page))
    result = invoke(api, *args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == first_column


def test_a_table_on_a_terminal_has_its_header(api: FakeApi) -> None:
    api.on("GET", (200, PAGE))
    terminal = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "200"}
    result = runner.invoke(app, ["list"], env={"BATON_API_URL": api.url, **terminal})
    assert result.exit_code == 0, result.output
    lines = [Text.from_ansi(line).plain.split() for line in result.stdout.splitlines()]
    assert lines[0] == ["ID", "DEVICE", "COMMAND", "STATUS", "CREATED", "UPDATED"]
    assert [line[0] for line in lines[1:]] == [ID, "1c8e7d2f-7b9f-4d90-8b54-3f2e8e1f0c22"]


def test_list_json_is_the_page_as_the_api_gives_it(api: FakeApi) -> None:
    api.on("GET", (200, PAGE))
    result = invoke(api, "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == PAGE
    assert api.requests[0]["query"] == {"limit": ["20"], "order": ["newest"]}


def test_list_of_nothing_says_so_on_stderr(api: FakeApi) -> None:
    api.on("GET", (200, {"items": [], "total_count": 0, "next_cursor": None}))
    result = invoke(api, "list")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no executions\n")


def test_relative_and_absolute_times() -> None:
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert parse_moment("10m", "--since", now) == "2026-11-01T11:50:00+00:00"
    assert parse_moment("2h", "--since", now) == "2026-11-01T10:00:00+00:00"
    assert parse_moment("1d", "--since", now) == "2026-10-31T12:00:00+00:00"
    assert parse_moment("2026-11-01T12:00:00+02:00", "--since") == "2026-11-01T12:00:00+02:00"
    with pytest.raises(typer.BadParameter, match="not a time"):
        parse_moment("yesterday", "--since")


def test_a_status_list_may_end_with_a_comma(api: FakeApi) -> None:
    api.on("GET", (200, {"items": [], "total_count": 0, "next_cursor": None}))
    result = invoke(api, "list", "-s", "failed,", "-s", "TIMED_OUT")
    assert result.exit_code == 0, result.output
    sent = parse_qs(urlsplit(api.requests[0]["path"]).query, keep_blank_values=True)
    assert sent["status"] == ["FAILED", "TIMED_OUT"]  # no `status=`, which the API refuses


@pytest.mark.parametrize("verb", ["list", "tail"])
@pytest.mark.parametrize("status", ["", " ", ","])
def test_a_status_naming_none_is_a_usage_error(api: FakeApi, verb: str, status: str) -> None:
    """Not a list of every status: the API refuses `status=` too."""
    result = invoke(api, verb, "--status", "FAILED", "--status", status)
    assert result.exit_code == 2, result.output
    assert "--status: empty" in result.stderr
    assert api.requests == []


@pytest.mark.parametrize(
    ("verb", "option"),
    [
        (["list"], "--name"),
        (["list"], "--device"),
        (["tail"], "--name"),
        (["tail"], "--device"),
        (["devices", "list"], "--type"),
    ],
)
@pytest.mark.parametrize("blank", ["", " ", "\t "])
def test_a_blank_filter_is_a_usage_error(
    api: FakeApi, verb: list[str], option: str, blank: str
) -> None:
    """Neither "no filter" (as `tail` read an empty one) nor one matching nothing (as the
    API read a blank one): the API refuses both, and so does the CLI, before asking it."""
    result = invoke(api, *verb, option, blank)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and f"{option}: empty" in line
    assert api.requests == []


def test_a_bad_time_is_a_usage_error_before_any_request(api: FakeApi) -> None:
    result = invoke(api, "list", "--since", "soon")
    assert result.exit_code == 2
    assert "not a time" in result.stderr
    assert api.requests == []


@pytest.mark.parametrize("ago", ["1000000d", "99999999999999999999d", f"{'9' * 400}s"])
def test_a_time_before_the_year_1_is_a_usage_error(api: FakeApi, ago: str) -> None:
    result = invoke(api, "list", "--since", ago)
    assert result.exit_code == 2, result.output
    assert "too long ago" in result.stderr
    assert "Traceback" not in result.output
    assert api.requests == []


# --- get, cancel, retry, delete ---------------------------------------------------------------


def test_get_prints_the_execution_and_its_answers(api: FakeApi) -> None:
    log = [{"received_at": "2026-11-01T12:00:01Z", "status": "SUCCEEDED", "payload": {"a": 1}}]
    api.on("GET", (200, {**ENDED, "log": log}))
    result = invoke(api, "get", ID, "--log")
    assert result.exit_code == 0, result.output
    assert api.requests[0]["route"] == f"/v1/executions/{ID}"
    assert api.requests[0]["query"] == {"expand": ["log"]}
    assert "  status   SUCCEEDED" in result.stdout
    assert '  answer   2026-11-01T12:00:01Z SUCCEEDED {"a":1}' in result.stdout


def test_get_json(api: FakeApi) -> None:
    api.on("GET", (200, ENDED))
    result = invoke(api, "get", ID, "--json")
    assert json.loads(result.stdout) == ENDED


def test_get_needs_an_execution_id(api: FakeApi) -> None:
    result = invoke(api, "get", "not-an-id")
    assert result.exit_code == 2
    assert api.requests == []


def test_cancel_posts_the_reason(api: FakeApi) -> None:
    api.on("POST", (200, {**EXECUTION, "status": "CANCELED"}))
    result = invoke(api, "cancel", ID, "--reason", "wrong room")
    assert result.exit_code == 0, result.output
    [request] = api.requests
    assert (request["method"], request["route"]) == ("POST", f"/v1/executions/{ID}/cancel")
    assert request["body"] == {"reason": "wrong room"}
    assert "  status   CANCELED" in result.stdout


def test_cancel_of_an_ended_execution_is_one_line_and_exit_1(api: FakeApi) -> None:
    problem = {"status": 409, "title": "Conflict", "detail": "the execution has ended"}
    api.on("POST", Answer(409, problem, "application/problem+json"))
    result = invoke(api, "cancel", ID)
    assert result.exit_code == 1
    assert result.stderr == "error: Conflict (HTTP 409): the execution has ended\n"


def test_retry_prints_the_new_execution(api: FakeApi) -> None:
    new = {**EXECUTION, "id": "1c8e7d2f-7b9f-4d90-8b54-3f2e8e1f0c22", "retry_of": ID}
    api.on("POST", (201, new))
    result = invoke(api, "retry", ID, "--json")
    assert result.exit_code == 0
    assert api.requests[0]["route"] == f"/v1/executions/{ID}/retry"
    assert json.loads(result.stdout)["retry_of"] == ID


def test_delete(api: FakeApi) -> None:
    api.on("DELETE", (204, None))
    result = invoke(api, "delete", ID)
    assert (result.exit_code, result.stdout) == (0, f"deleted execution {ID}\n")
    assert api.requests[0]["method"] == "DELETE"
    result = invoke(api, "delete", ID, "--json")
    assert json.loads(result.stdout) == {"id": ID, "deleted": True}


# --- send --wait and its exit codes -----------------------------------------------------------


def test_send_wait_follows_the_execution_until_it_ends(api: FakeApi) -> None:
    acknowledged = {**EXECUTION, "status": "ACKNOWLEDGED"}
    api.on("GET", (200, acknowledged), (200, acknowledged), (200, ENDED))
    result = invoke(api, "send", "d1", "reboot", "--wait", "10", "--expect-success")
    assert result.exit_code == 0, result.output
    assert [r["route"] for r in api.of("GET")] == [f"/v1/executions/{ID}"] * 3
    assert "  status   SUCCEEDED" in result.stdout
    assert result.stderr == ""  # piped: no live status line


@pytest.mark.parametrize(("status", "code"), [("FAILED", 3), ("TIMED_OUT", 3), ("SENT", 4)])
def test_send_expect_success_exit_codes(api: FakeApi, status: str, code: int) -> None:
    api.on("GET", (200, {**EXECUTION, "status": status}))
    result = invoke(api, "send", "d1", "reboot", "--wait", "0.5", "--expect-success")
    assert result.exit_code == code, result.output
    assert f"  status   {status}" in result.stdout
    verb = "ended" if code == 3 else "is still"
    assert result.stderr == f"error: execution {ID} {verb} {status}\n"


def test_send_without_wait_does_not_poll(api: FakeApi) -> None:
    result = invoke(api, "send", "d1", "reboot")
    assert result.exit_code == 0
    assert api.of("GET") == []


# --- devices and types -----------------------------------------------------------------------


def test_devices_list_pages_and_json(api: FakeApi) -> None:
    queue = {"waiting": 2, "in_flight": 1, "cooldowns": {}}
    page = {
        "items": [
            {
                "id": "c-1",
                "type": "charger",
                "labels": {},
                "presence": "unknown",
                "last_seen": None,
                "queue": {**queue, "waiting": 0},
            },
            {
                "id": "t-1",
                "type": "thermostat",
                "labels": {"room": "lab"},
                "presence": "online",
                "last_seen": "2026-11-01T12:00:00Z",
                "queue": queue,
            },
        ],
        "total_count": 3,
        "next_cursor": "t-1",
    }
    api.on("GET", (200, page))
    result = invoke(api, "devices", "list", "-t", "thermostat", "--limit", "2", "--cursor", "a")
    assert result.exit_code == 0, result.output
    assert api.requests[0]["query"] == {"limit": ["2"], "type": ["thermostat"], "cursor": ["a"]}
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["c-1", "charger", "unknown", "-", "0", "-"],
        ["t-1", "thermostat", "online", "2026-11-01", "12:00:00", "2", "room=lab"],
    ]
    assert result.stderr == "2 of 3 device(s); next page: --cursor t-1\n"
    assert json.loads(invoke(api, "devices", "list", "--json").stdout) == page


def test_devices_add_show_remove(api: FakeApi) -> None:
    device = {"id": "t-9", "type": "thermostat", "labels": {"room": "lab", "floor": "2"}}
    api.on("POST", (201, device))
    added = invoke(
        api, "devices", "add", "t-9", "-t", "thermostat", "-l", "room=lab", "-l", "floor=2"
    )
    assert (added.exit_code, added.stdout) == (0, "added device t-9 (thermostat)\n")
    assert api.of("POST")[0]["body"] == device
    api.on("GET", (200, device))
    shown = invoke(api, "devices", "show", "t-9")
    assert yaml.safe_load(shown.stdout) == device
    api.on("DELETE", (204, None))
    removed = invoke(api, "devices", "remove", "t-9")
    assert removed.stdout == "removed device t-9\n"
    assert api.of("DELETE")[0]["route"] == "/v1/devices/t-9"


def test_devices_add_refuses_a_label_without_a_value(api: FakeApi) -> None:
    result = invoke(api, "devices", "add", "t-9", "-t", "x", "-l", "room")
    assert result.exit_code == 2
    assert api.requests == []


def test_types_list_add_from_a_file_and_remove(api: FakeApi, tmp_path: Path) -> None:
    api.on(
        "GET",
        (
            200,
            {
                "items": [{"name": "thermostat", "commands": {"reboot": {}, "x": {}}}],
                "total_count": 1,
            },
        ),
    )
    listed = invoke(api, "types", "list")
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["thermostat", "baton", "reboot,", "x"],
    ]
    definition = tmp_path / "lamp.yaml"
    definition.write_text("commands:\n  toggle: {ttl: 5}\n")
    api.on("POST", (201, {"name": "lamp", "commands": {"toggle": {"ttl": 5}}}))
    added = invoke(api, "types", "add", "lamp", "-f", str(definition))
    assert (added.exit_code, added.stdout) == (0, "added device type lamp (toggle)\n")
    assert api.of("POST")[0]["body"] == {
        "name": "lamp",
        "definition": {"commands": {"toggle": {"ttl": 5}}},
    }
    api.on("DELETE", Answer(409, {"status": 409, "title": "Conflict", "detail": "devices have it"}))
    removed = invoke(api, "types", "remove", "lamp")
    assert (removed.exit_code, removed.stderr) == (
        1,
        "error: Conflict (HTTP 409): devices have it\n",
    )


def test_types_add_of_a_file_that_is_not_a_mapping(api: FakeApi, tmp_path: Path) -> None:
    definition = tmp_path / "bad.yaml"
    definition.write_text("- a\n- b\n")
    result = invoke(api, "types", "add", "lamp", "-f", str(definition))
    assert result.exit_code == 1
    assert "expected a mapping" in result.stderr
    assert api.requests == []


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ttl: .inf\n", "ttl"),
        ("commands: {set: {params: {maximum: .nan}}}\n", "commands.set.params.maximum"),
        ("wire: {gain: -.inf}\n", "wire.gain"),
        ("wire: {since: 2026-11-01}\n", "wire.since"),  # a YAML date
    ],
)
def test_types_add_refuses_what_json_cannot_carry(
    api: FakeApi, tmp_path: Path, text: str, field: str
) -> None:
    definition = tmp_path / "lamp.yaml"
    definition.write_text(text)
    result = invoke(api, "types", "add", "lamp", "-f", str(definition))
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {definition}: {field}: must be a ")
    assert api.requests == []


# --- catalog import --dry-run ----------------------------------------------------------------


def test_dry_run_prints_the_diff_and_changes_nothing(api: FakeApi, tmp_path: Path) -> None:
    stored = yaml.safe_load(DEMO.read_text())
    api.on("GET", (200, stored))
    new = yaml.safe_load(DEMO.read_text())
    new["devices"] = [d for d in new["devices"] if d["id"] != "demo-thermostat-5"]
    new["devices"].append({"id": "lab-1", "type": "thermostat"})
    new["devices"][0]["labels"] = {"room": "lab"}
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(new))
    result = invoke(api, "catalog", "import", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "~ device demo-thermostat-1",
        "- device demo-thermostat-5",
        "+ device lab-1",
        f"{path} is valid; nothing changed (dry run)",
    ]
    assert [r["method"] for r in api.requests] == ["GET"]


def test_dry_run_names_every_error_by_its_field_path(api: FakeApi, tmp_path: Path) -> None:
    api.on("GET", (200, {}))
    new = yaml.safe_load(DEMO.read_text())
    new["device_types"]["thermostat"]["commands"]["reboot"]["ttl"] = "soon"
    new["devices"].append({"id": "lab-1"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(new))
    result = invoke(api, "catalog", "import", str(path), "--dry-run")
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert errors[-1] == f"error: {path} is not a valid catalog (2 error(s)); nothing changed"
    assert errors[0].startswith("error: device_types.thermostat.commands.reboot.ttl: ")
    assert errors[1].startswith("error: devices.6.type: ")
    assert [r["method"] for r in api.requests] == ["GET"]


def test_dry_run_refuses_a_device_without_an_id(api: FakeApi, tmp_path: Path) -> None:
    api.on("GET", (200, yaml.safe_load(DEMO.read_text())))
    new = yaml.safe_load(DEMO.read_text())
    new["devices"].append({"type": "thermostat"})
    path = tmp_path / "no-id.yaml"
    path.write_text(yaml.safe_dump(new))
    result = invoke(api, "catalog", "import", str(path), "--dry-run")
    assert result.exit_code == 1
    assert result.stdout == "no change to the stored catalog\n"  # no `+ device None`
    assert result.stderr.splitlines() == [
        "error: devices.6.id: Field required",
        f"error: {path} is not a valid catalog (1 error(s)); nothing changed",
    ]


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_import_and_dry_run_refuse_a_number_json_cannot_carry(
    api: FakeApi, tmp_path: Path, dry_run: list[str]
) -> None:
    """The dry run checks the file as the import does: a NaN no JSON text holds is refused by
    both, by its field path, and nothing is sent to change the catalog."""
    api.on("GET", (200, yaml.safe_load(DEMO.read_text())))
    path = tmp_path / "nan.yaml"
    path.write_text(DEMO.read_text().replace("maximum: 35", "maximum: .nan"))
    result = invoke(api, "catalog", "import", str(path), *dry_run)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        "error: device_types.thermostat.commands.set_temperature.params.properties.value."
        "maximum: must be a finite number, not nan: JSON has no NaN or infinity",
        f"error: {path} is not a valid catalog (1 error(s)); nothing changed",
    ]
    assert api.of("PUT") == []


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n", "tenant: x\n"])
def test_a_file_holding_no_catalog_is_refused_not_imported_as_an_empty_one(
    api: FakeApi, tmp_path: Path, dry_run: list[str], text: str
) -> None:
    """Imported, an empty file would remove every device; emptying takes saying so."""
    api.on("GET", (200, yaml.safe_load(DEMO.read_text())))
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    result = invoke(api, "catalog", "import", str(path), *dry_run)
    assert result.exit_code == 1, result.output
    assert "holds no catalog" in result.stderr
    assert api.of("PUT") == []
    path.write_text("device_types: {}\ndevices: []\n")
    api.on("PUT", (200, {"device_types": {}, "devices": []}))
    assert invoke(api, "catalog", "import", str(path), *dry_run).exit_code == 0


def test_the_diff_ignores_defaults_spelled_out() -> None:
    stored = yaml.safe_load(DEMO.read_text())
    same = yaml.safe_load(DEMO.read_text())
    same["device_types"]["thermostat"]["wire_profile"] = "baton"
    assert catalog_diff(stored, same) == ["no change to the stored catalog"]
    assert catalog_errors(same) == []


def test_import_without_dry_run_puts_the_document(api: FakeApi) -> None:
    api.on("PUT", (200, yaml.safe_load(DEMO.read_text())))
    result = invoke(api, "catalog", "import", str(DEMO))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"imported 1 device type(s) and 6 device(s) from {DEMO}\n"
    assert api.requests[0]["body"] == yaml.safe_load(DEMO.read_text())


# --- errors, version, completion ------------------------------------------------------------


def test_problem_lines() -> None:
    problem = {"title": "Not Found", "status": 404, "detail": "no execution x"}
    assert problem_lines(404, "Not Found", problem) == [
        "error: Not Found (HTTP 404): no execution x"
    ]
    assert problem_lines(404, "Not Found", {"title": "Gone"}) == ["error: Gone (HTTP 404)"]
    assert problem_lines(502, "Bad Gateway", "<html>") == ["error: HTTP 502 Bad Gateway"]
    assert moment("2026-11-01T12:00:00.123Z") == "2026-11-01 12:00:00"
    assert moment(None) == "-"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("baton ")


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout


def test_nothing_listening_names_the_url_and_where_it_came_from() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["list"], env={"BATON_API_URL": url})
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot reach the Baton API at {url} (BATON_API_URL): ")


# --- the last dev stack's settings ------------------------------------------------------------


def test_the_dev_stack_state_fills_unset_settings_only(
    api: FakeApi, no_dev_stack_state: Path
) -> None:
    api.on("GET", (200, PAGE))
    write_state({"BATON_API_URL": api.url, "BATON_API_KEY": "dev-k", "BATON_OTHER": "x"}, 1)
    assert read_state() == {"BATON_API_URL": api.url, "BATON_API_KEY": "dev-k"}
    assert no_dev_stack_state.stat().st_mode & 0o777 == 0o600
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    assert api.requests[-1]["authorization"] == "Bearer dev-k"
    # A variable that is set wins over the state.
    result = runner.invoke(app, ["list", "--json"], env={"BATON_API_KEY": "mine"})
    assert api.requests[-1]["authorization"] == "Bearer mine"


def test_a_stopped_dev_stack_is_named_when_nothing_answers(no_dev_stack_state: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    write_state({"BATON_API_URL": url}, 1)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 2
    assert f"at {url} (BATON_API_URL of the dev stack in {no_dev_stack_state})" in result.stderr


def test_events_finds_the_data_of_the_dev_stack_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = tmp_path / "stack" / "var"
    data.mkdir(parents=True)
    write_state({"BATON_DATA_DIR": str(data)}, 1)
    result = runner.invoke(app, ["events", ID])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: no event store at {data / 'events.sqlite'} (BATON_DATA_DIR of the dev stack"
    )


def test_events_with_no_data_anywhere_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["replay"])
    assert result.exit_code == 1
    assert "(BATON_DATA_DIR unset: the default). Set BATON_DATA_DIR" in result.stderr


# --- baton dev reset and the banner -----------------------------------------------------------


def test_reset_refuses_while_the_stack_runs(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "run").mkdir(parents=True)
    (data / PID_FILE).write_text(str(os.getpid()))  # a process that runs: this one
    result = CliRunner().invoke(dev_app, ["reset", "--data-dir", str(data)])
    assert result.exit_code == 1
    assert f"the stack is running (pid {os.getpid()}" in result.stderr
    assert (data / PID_FILE).exists()


def test_reset_deletes_the_data_and_forgets_the_stack(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "run").mkdir(parents=True)
    (data / "events.sqlite").write_text("")
    write_state({"BATON_DATA_DIR": str(data)}, 1)
    result = CliRunner().invoke(dev_app, ["reset", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert not data.exists()
    assert read_state() == {}
    again = CliRunner().invoke(dev_app, ["reset", "--data-dir", str(data)])
    assert again.stdout == f"Nothing to reset: no {data}/.\n"


def test_the_banner_gives_the_cli_its_settings_and_the_warnings(tmp_path: Path) -> None:
    stack = dev_stack(data_dir=tmp_path, api_key="k9", catalog=DEMO, api_port=8081)
    text = _banner(stack, ["BATON_CATALOG_PATH=x is NOT in use"])
    assert "  BATON_API_URL=http://127.0.0.1:8081 BATON_API_KEY=k9 \\\n" in text
    assert "WARNING: BATON_CATALOG_PATH=x is NOT in use" in text


def test_a_catalog_file_the_stored_catalog_overrides_is_said(tmp_path: Path) -> None:
    demo = Catalog.from_yaml(DEMO)
    seeds = Catalog.from_yaml(ROOT / "deploy/catalog/seeds.yaml")
    stack = dev_stack(data_dir=tmp_path, api_key="k", catalog=DEMO)
    assert catalog_warning(stack, None) is None  # the api did not say
    assert catalog_warning(stack, demo) is None  # the file is the one in use
    warning = catalog_warning(stack, seeds)
    assert warning is not None
    assert warning.startswith(f"BATON_CATALOG_PATH={DEMO} is NOT in use: {tmp_path} holds")
    # The banner's example is then a device of the catalog in use, not of the file.
    text = _banner(stack, [warning], seeds)
    assert "demo-thermostat-1" not in text
    assert f"baton send {seeds.devices[0].id} " in text


def test_send_wait_shows_a_live_status_line_on_a_terminal(api: FakeApi) -> None:
    acknowledged = {**EXECUTION, "status": "ACKNOWLEDGED"}
    api.on("GET", (200, acknowledged), (200, acknowledged), (200, ENDED))
    result = runner.invoke(
        app,
        ["send", "d1", "reboot", "--wait", "10"],
        env={"BATON_API_URL": api.url, "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"},
    )
    assert result.exit_code == 0, result.output
    assert f"{ID}: ACKNOWLEDGED (" in result.stderr
    assert "  status   SUCCEEDED" in result.stdout


def test_simulate_joins_the_broker_of_the_dev_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton_simulator

    calls: list[tuple[object, ...]] = []
    options: list[dict[str, object]] = []

    async def fake_run_simulator(*call: object, **given: object) -> None:
        calls.append(call)
        options.append(given)

    monkeypatch.setattr(baton_simulator, "run_simulator", fake_run_simulator, raising=False)
    for key in ("BATON_MQTT_HOST", "BATON_MQTT_PORT", "BATON_MQTT_PROTOCOL"):
        monkeypatch.delenv(key, raising=False)
    write_state(
        {
            "BATON_MQTT_HOST": "127.0.0.1",
            "BATON_MQTT_PORT": "53733",
            "BATON_MQTT_PROTOCOL": "3.1.1",
            "BATON_MQTT_USERNAME": "baton-simulator",
            "BATON_MQTT_PASSWORD": "s3cret",
        },
        1,
    )
    result = runner.invoke(app, ["simulate", "-d", "a"])
    assert result.exit_code == 0, result.output
    [(host, port, protocol, *_)] = calls
    assert (host, port, protocol) == ("127.0.0.1", 53733, "3.1.1")
    access = options[0]["access"]
    assert (access.username, access.password) == ("baton-simulator", "s3cret")  # type: ignore[attr-defined]
