"""`baton devices` and `baton types`: the catalog's devices and device types, one at a time,
through the API (/v1/devices, /v1/device-types). Reading needs the viewer role, adding and
removing the admin role."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, AsJson, call, fail
from baton_cli.executions import filter_named
from baton_cli.output import dumps, moment, page_footer, print_table
from baton_domain.json_values import json_faults

devices_app = typer.Typer(help="List, show, add and remove devices.", no_args_is_help=True)
types_app = typer.Typer(help="List, show, add and remove device types.", no_args_is_help=True)


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"expected key=value, got {text!r}", param_hint="--label")
    return key.strip(), value


def _empty(page: dict[str, Any], what: str) -> bool:
    if page.get("items"):
        return False
    typer.echo(f"no {what}", err=True)
    return True


# --- devices --------------------------------------------------------------------------------


@devices_app.command("list")
def list_devices(
    device_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Only devices of this type.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Rows per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="The page after this one (printed under the table).")
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """The catalog's devices by id, with their presence and queue."""
    params: dict[str, Any] = {"limit": limit}
    if device_type is not None:
        params["type"] = filter_named(device_type, "--type")
    if cursor is not None:
        params["cursor"] = cursor
    page = call("GET", api_url, "/v1/devices", api_key, params=params)
    if as_json:
        typer.echo(dumps(page))
        return
    if _empty(page, "devices"):
        return
    rows = [
        [
            str(d.get("id")),
            str(d.get("type")),
            str(d.get("presence") or "-"),
            moment(d.get("last_seen")),
            str((d.get("queue") or {}).get("waiting", "-")),
            " ".join(f"{k}={v}" for k, v in (d.get("labels") or {}).items()) or "-",
        ]
        for d in page["items"]
    ]
    print_table(("ID", "TYPE", "PRESENCE", "LAST SEEN", "WAITING", "LABELS"), rows)
    typer.echo(page_footer(page, "device"), err=True)


@devices_app.command("show")
def show_device(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """One device, with its presence and queue, as YAML (or JSON)."""
    device = call("GET", api_url, f"/v1/devices/{device_id}", api_key)
    typer.echo(dumps(device) if as_json else _yaml(device))


@devices_app.command("add")
def add_device(
    device_id: Annotated[str, typer.Argument(help="The new device's id.")],
    device_type: Annotated[str, typer.Option("--type", "-t", help="Its device type.")],
    hardware_id: Annotated[
        str | None, typer.Option(help="The id it has on the wire, if not its Baton id.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VALUE", help="A label; repeatable."),
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Add a device (admin; exit 1, HTTP 409, if one has the id)."""
    body: dict[str, Any] = {"id": device_id, "type": device_type}
    if hardware_id is not None:
        body["hardware_id"] = hardware_id
    if label:
        body["labels"] = dict(parse_label(item) for item in label)
    device = call("POST", api_url, "/v1/devices", api_key, body)
    if as_json:
        typer.echo(dumps(device))
    else:
        typer.echo(f"added device {device['id']} ({device['type']})")


@devices_app.command("remove")
def remove_device(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Remove a device and its MQTT account (admin). Its executions stay."""
    call("DELETE", api_url, f"/v1/devices/{device_id}", api_key)
    typer.echo(f"removed device {device_id}")


# --- device types ---------------------------------------------------------------------------


@types_app.command("list")
def list_types(
    as_json: AsJson = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY
) -> None:
    """The catalog's device types: name, wire profile, commands."""
    page = call("GET", api_url, "/v1/device-types", api_key)
    if as_json:
        typer.echo(dumps(page))
        return
    if _empty(page, "device types"):
        return
    rows = [
        [
            str(t.get("name")),
            str(t.get("wire_profile") or "baton"),
            ", ".join(t.get("commands") or {}) or "-",
        ]
        for t in page["items"]
    ]
    print_table(("NAME", "PROFILE", "COMMANDS"), rows)


@types_app.command("show")
def show_type(
    name: Annotated[str, typer.Argument(help="The device type's name.")],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """One device type's definition, as YAML (or JSON)."""
    device_type = call("GET", api_url, f"/v1/device-types/{name}", api_key)
    typer.echo(dumps(device_type) if as_json else _yaml(device_type))


@types_app.command("add")
def add_type(
    name: Annotated[str, typer.Argument(help="The new device type's name.")],
    file: Annotated[
        Path,
        typer.Option(
            "--file", "-f", help="Its definition (commands, ttl, ...), YAML or JSON; - for stdin."
        ),
    ],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Add a device type (admin; exit 1, HTTP 409, if one has the name)."""
    definition = read_mapping(file)
    created = call(
        "POST", api_url, "/v1/device-types", api_key, {"name": name, "definition": definition}
    )
    if as_json:
        typer.echo(dumps(created))
    else:
        commands = ", ".join(created.get("commands") or {}) or "no commands"
        typer.echo(f"added device type {created['name']} ({commands})")


@types_app.command("remove")
def remove_type(
    name: Annotated[str, typer.Argument(help="The device type's name.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Remove a device type no device has (admin; exit 1, HTTP 409, while devices have it)."""
    call("DELETE", api_url, f"/v1/device-types/{name}", api_key)
    typer.echo(f"removed device type {name}")


def read_mapping(file: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from a file or stdin that JSON can carry, or exit naming what
    is wrong."""
    try:
        text = typer.get_text_stream("stdin").read() if str(file) == "-" else file.read_text()
        document = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"error: cannot read {file}: {exc}")
    if not isinstance(document, dict):
        fail(f"error: {file}: expected a mapping, got {type(document).__name__}")
    # YAML's .nan, .inf and dates are no JSON: the request could not be sent.
    faults = json_faults(document)
    if faults:
        fail("\n".join(f"error: {file}: {e.field}: {e.reason}" for e in faults))
    return document


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
