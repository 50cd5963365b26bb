"""How the `baton` command prints things: plain text, so output pipes and greps well."""

from __future__ import annotations

import json
from typing import Any

from baton_platform.mapping import event_data


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
    """An RFC 9457 problem (or whatever came instead) as lines for stderr."""
    if not isinstance(problem, dict):
        return [f"error: HTTP {status} {reason}"]
    title = problem.get("title") or reason
    lines = [f"error: {title} (HTTP {problem.get('status', status)})"]
    if problem.get("detail"):
        lines.append(f"  {problem['detail']}")
    for item in problem.get("errors") or []:
        if isinstance(item, dict):
            lines.append(f"  - {item.get('field', '?')}: {item.get('reason', '')}")
        else:
            lines.append(f"  - {item}")
    return lines
