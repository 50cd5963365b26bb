"""`baton tail` and `baton events ID --follow`: the API's live feeds, printed as they come
(docs/api.md, "Live updates")."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, fail, unreachable
from baton_cli.executions import filter_named, statuses_named
from baton_cli.live import Event, StreamRefused, follow
from baton_cli.output import problem_lines

AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line instead of text.")]


def tail(
    device: Annotated[str | None, typer.Option("--device", help="Only this device's.")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="Only changes to this status (repeatable)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only this command's.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Resume after this event id (Last-Event-ID).")
    ] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Follow every execution change of your tenant as it happens (GET /v1/events), until
    interrupted; after a dropped connection it resumes where it was, missing nothing."""
    params: dict[str, str] = {}
    if device is not None:
        params["device_id"] = filter_named(device, "--device")
    if name is not None:
        params["name"] = filter_named(name, "--name")
    if status:
        params["status"] = ",".join(statuses_named(status))
    print_events(f"{api_url.rstrip('/')}/v1/events", api_key, params, since, False, as_json)


def follow_execution(execution_id: str, api_url: str, api_key: str, as_json: bool) -> None:
    """`baton events ID --follow`: the execution's changes from the first, until it ends."""
    url = f"{api_url.rstrip('/')}/v1/executions/{execution_id}/events"
    print_events(url, api_key, {}, None, True, as_json)


def print_events(
    url: str, key: str, params: dict[str, str], since: str | None, ends: bool, as_json: bool
) -> None:
    import httpx

    try:
        for event in follow(url, key, params, last_event_id=since, ends=ends):
            typer.echo(event_text(event, as_json))
    except StreamRefused as refused:
        fail("\n".join(problem_lines(refused.status, refused.reason, refused.payload)))
    except httpx.HTTPError as exc:
        unreachable(url, exc)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def event_text(event: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps({"id": event.id, "event": event.event, **event.data})
    data = event.data
    return (
        f"{data.get('at', '')}  {data.get('status', ''):<12} {event.event:<14} "
        f"{data.get('device_id', '')}  {data.get('name', '')}  {data.get('execution_id', '')}"
    )
