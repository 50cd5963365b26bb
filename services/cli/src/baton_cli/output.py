"""How the `baton` command prints things: plain text, so output pipes and greps well; tables
and colour (rich) on a terminal, the same columns without colour or padding when piped."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from baton_platform.mapping import event_data

if TYPE_CHECKING:
    from rich.table import Table


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def event_line(event: Any, as_json: bool = False) -> str:
    """One stored event: `time  type  data` (or a JSON object)."""
    at = event.timestamp.isoformat()
    kind = type(event).__name__
    data = event_data(event)
    if as_json:
        return compact(
            {"occurred_at": at, "version": event.originator_version, "type": kind, "data": data}
        )
    return f"{at}  {kind:<14} {compact(data)}"


def execution_summary(execution: dict[str, Any]) -> str:
    lines = [
        f"execution {execution.get('id')}",
        f"  device   {execution.get('device_id')}",
        f"  command  {execution.get('name')} {compact(execution.get('params', {}))}",
        f"  status   {execution.get('status')}",
        f"  deadline {execution.get('deadline')} (ttl {execution.get('ttl')} s)",
    ]
    if execution.get("result") is not None:
        lines.append(f"  result   {compact(execution['result'])}")
    if execution.get("error") is not None:
        lines.append(f"  error    {compact(execution['error'])}")
    return "\n".join(lines)


def problem_lines(status: int, reason: str, problem: Any) -> list[str]:
    """An RFC 9457 problem (or whatever came instead) as lines for stderr: one line saying
    what went wrong, then one per wrong field (`  - field: reason`)."""
    if not isinstance(problem, dict):
        return [f"error: HTTP {status} {reason}"]
    title = problem.get("title") or reason
    detail = problem.get("detail")
    said = f": {detail}" if detail and detail != title else ""
    lines = [f"error: {title} (HTTP {problem.get('status', status)}){said}"]
    for item in problem.get("errors") or []:
        if isinstance(item, dict):
            lines.append(f"  - {item.get('field', '?')}: {item.get('reason', '')}")
        else:
            lines.append(f"  - {item}")
    return lines


# --- tables ---------------------------------------------------------------------------------

PIPED_WIDTH = 1000  # piped output is never wrapped: one row, one line
STATUS_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "TIMED_OUT": "yellow",
    "EXPIRED": "yellow",
    "CANCELED": "magenta",
}


def moment(value: Any) -> str:
    """An API time as `2026-11-01 12:00:00` (UTC, to the second), or `-`."""
    if not isinstance(value, str):
        return "-"
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return at.strftime("%Y-%m-%d %H:%M:%S")


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], status_col: int = -1
) -> None:
    """Columns under their headers: a rich table on a terminal. Piped, the rows alone as plain
    aligned text (no header, colour or trailing blanks): `| awk '{print $1}'` gives the first
    column."""
    from rich.console import Console

    console = Console(highlight=False)
    if console.is_terminal:
        console.print(_table(headers, rows, status_col, show_header=True))
        return
    plain = Console(width=PIPED_WIDTH, file=sys.stdout, color_system=None, highlight=False)
    with plain.capture() as captured:
        plain.print(_table(headers, rows, status_col, show_header=False))
    for line in captured.get().splitlines():
        sys.stdout.write(line.rstrip() + "\n")


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], status_col: int, *, show_header: bool
) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", show_header=show_header
    )
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        cells = [
            Text(cell, style=STATUS_STYLES.get(cell, "")) if i == status_col else Text(cell)
            for i, cell in enumerate(row)
        ]
        table.add_row(*cells)
    return table


EXECUTION_HEADERS = ("ID", "DEVICE", "COMMAND", "STATUS", "CREATED", "UPDATED")


def execution_row(execution: dict[str, Any]) -> list[str]:
    return [
        str(execution.get("id")),
        str(execution.get("device_id")),
        str(execution.get("name")),
        str(execution.get("status")),
        moment(execution.get("created_at")),
        moment(execution.get("updated_at")),
    ]


def execution_detail(execution: dict[str, Any]) -> str:
    """`baton get`: the summary, and what else the execution knows."""
    lines = [execution_summary(execution)]
    lines.append(f"  created  {execution.get('created_at')}")
    lines.append(f"  updated  {execution.get('updated_at')}")
    if execution.get("requested_by"):
        lines.append(f"  by       {execution['requested_by']}")
    if execution.get("retry_of"):
        lines.append(f"  retries  {execution['retry_of']}")
    for retry in execution.get("retries") or []:
        lines.append(f"  retried  by {retry}")
    for entry in execution.get("log") or []:
        lines.append(
            f"  answer   {entry.get('received_at')} {entry.get('status')} "
            f"{compact(entry.get('payload', {}))}"
        )
    return "\n".join(lines)


def page_footer(page: dict[str, Any], noun: str) -> str:
    """Under a page's table, on stderr: how many of how many, and the next page's cursor."""
    shown, total = len(page.get("items") or []), page.get("total_count")
    about = "" if page.get("total_count_exact", True) else "about "
    more = f"; next page: --cursor {page['next_cursor']}" if page.get("next_cursor") else ""
    return f"{shown} of {about}{total} {noun}(s){more}"


def progress_bar() -> Any:
    """A rich Progress on stderr, shown on a terminal only (piped output is the result
    alone): `{task.description}`, a bar, done/total. Use `with progress_bar() as bar:`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        transient=True,
        console=console,
        disable=not console.is_terminal,
    )


def dumps(value: Any) -> str:
    """`--json` output: indented, keys in the API's order."""
    return json.dumps(value, indent=2, ensure_ascii=False)
