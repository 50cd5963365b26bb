"""`baton list|get|cancel|retry|delete`: executions through the API, and `send --wait`'s
watch of one execution until it ends."""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import typer

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, AsJson, call, fail
from baton_cli.output import (
    EXECUTION_HEADERS,
    dumps,
    execution_detail,
    execution_row,
    execution_summary,
    page_footer,
    print_table,
)
from baton_domain.statuses import TERMINAL_STATUSES

TERMINAL = frozenset(str(status) for status in TERMINAL_STATUSES)
AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
POLL_SECONDS = 0.2

ExecutionId = Annotated[UUID, typer.Argument(help="The execution's id.")]


def parse_moment(text: str, hint: str, now: datetime | None = None) -> str:
    """`10m`, `2h`, `7d`, `30s` (that long ago) or an ISO-8601 time (UTC if no offset): the
    ISO-8601 moment the API takes."""
    raw = text.strip()
    ago = AGO.fullmatch(raw)
    if ago is not None:
        return _ago(float(ago.group(1)) * UNIT_SECONDS[ago.group(2)], text, hint, now)
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"not a time: {text!r} (say 10m, 2h, 7d or 2026-11-01T12:00:00Z)", param_hint=hint
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def _ago(seconds: float, text: str, hint: str, now: datetime | None) -> str:
    """The ISO-8601 moment `seconds` before now; a usage error before the year 1."""
    try:
        return ((now or datetime.now(UTC)) - timedelta(seconds=seconds)).isoformat()
    except OverflowError:  # past timedelta's or datetime's range
        raise typer.BadParameter(
            f"too long ago: {text!r} (the earliest time is 0001-01-01)", param_hint=hint
        ) from None


def statuses_named(items: list[str]) -> list[str]:
    """Each status of `-s FAILED,TIMED_OUT -s SUCCEEDED`, as the API reads `status` (a
    trailing comma names nothing more); a `-s` naming none is a usage error, as the API's
    `status=` is a 422."""
    if any(not item.replace(",", "").strip() for item in items):
        raise typer.BadParameter("empty: name one or more statuses", param_hint="--status")
    return [s.strip().upper() for item in items for s in item.split(",") if s.strip()]


def filter_named(text: str, hint: str) -> str:
    """A filter naming one thing (`--name`, `--device`, `--type`), as given; blank, it is a
    usage error, as the API's `name=%20` is a 422 (it would match nothing)."""
    if not text.strip():
        raise typer.BadParameter("empty: leave the option out for no filter", param_hint=hint)
    return text


def list_executions(
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="Only this device's executions.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this command.")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only these statuses (repeatable, or a,b)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Created at or after: 10m, 2h, 7d (ago) or an ISO-8601 time."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Created before: 10m, 2h, 7d (ago) or an ISO-8601 time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Rows per page.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="The page after this one (printed under the table).")
    ] = None,
    oldest: Annotated[bool, typer.Option("--oldest", help="Oldest first.")] = False,
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Include ephemeral executions.")
    ] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """List executions, newest first, with filters and paging.

    Example: baton list -d demo-thermostat-1 -s FAILED,TIMED_OUT --since 1h
    """
    params: dict[str, Any] = {"limit": limit, "order": "oldest" if oldest else "newest"}
    if device is not None:
        params["device_id"] = filter_named(device, "--device")
    if name is not None:
        params["name"] = filter_named(name, "--name")
    if status:
        params["status"] = statuses_named(status)
    if since is not None:
        params["created_after"] = parse_moment(since, "--since")
    if until is not None:
        params["created_before"] = parse_moment(until, "--until")
    if cursor is not None:
        params["cursor"] = cursor
    if ephemeral:
        params["show"] = "ALL"
    page = call("GET", api_url, "/v1/executions", api_key, params=params)
    if as_json:
        typer.echo(dumps(page))
        return
    items = page.get("items", [])
    if not items:
        typer.echo("no executions", err=True)
        return
    print_table(EXECUTION_HEADERS, [execution_row(e) for e in items], status_col=3)
    typer.echo(page_footer(page, "execution"), err=True)


def get(
    execution_id: ExecutionId,
    log: Annotated[bool, typer.Option("--log", help="With every device answer.")] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Show one execution."""
    params = {"expand": "log"} if log else None
    execution = call("GET", api_url, f"/v1/executions/{execution_id}", api_key, params=params)
    typer.echo(dumps(execution) if as_json else execution_detail(execution))


def cancel(
    execution_id: ExecutionId,
    reason: Annotated[str | None, typer.Option(help="Why (kept in its record).")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Cancel an execution that has not ended (exit 1, HTTP 409, if it has)."""
    body = {"reason": reason} if reason is not None else None
    execution = call("POST", api_url, f"/v1/executions/{execution_id}/cancel", api_key, body)
    typer.echo(dumps(execution) if as_json else execution_summary(execution))


def retry(
    execution_id: ExecutionId,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Send an ended execution's command again: a new execution, linked to the old one."""
    execution = call("POST", api_url, f"/v1/executions/{execution_id}/retry", api_key)
    typer.echo(dumps(execution) if as_json else execution_summary(execution))


def delete(
    execution_id: ExecutionId,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Remove an execution from every view (admin).

    Its stream records the deletion; one still running is canceled first."""
    call("DELETE", api_url, f"/v1/executions/{execution_id}", api_key)
    if as_json:
        typer.echo(dumps({"id": str(execution_id), "deleted": True}))
    else:
        typer.echo(f"deleted execution {execution_id}")


# --- send --wait ----------------------------------------------------------------------------


def watch(execution: dict[str, Any], seconds: float, api_url: str, api_key: str) -> dict[str, Any]:
    """Poll the execution until it ends or `seconds` pass; a live status line on stderr when
    it is a terminal. Returns the last state seen."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    path = f"/v1/executions/{execution['id']}"
    start = time.monotonic()
    deadline = start + seconds
    live = console.is_terminal  # piped: no status line, the result alone
    with console.status("", spinner="dots") if live else nullcontext() as line:
        while execution.get("status") not in TERMINAL and time.monotonic() < deadline:
            if line is not None:
                line.update(
                    f"{execution['id']}: {execution.get('status')} "
                    f"({time.monotonic() - start:.1f} s of {seconds:g})"
                )
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            execution = call("GET", api_url, path, api_key)
    return dict(execution)


EXIT_NOT_SUCCEEDED = 3  # send --expect-success: it ended otherwise
EXIT_NOT_ENDED = 4  # send --expect-success: still running when the wait ran out


def expect_success(execution: dict[str, Any]) -> None:
    status = execution.get("status")
    if status == "SUCCEEDED":
        return
    if status in TERMINAL:
        fail(f"error: execution {execution.get('id')} ended {status}", EXIT_NOT_SUCCEEDED)
    fail(f"error: execution {execution.get('id')} is still {status}", EXIT_NOT_ENDED)
