"""Logging set-up shared by every service: one record a line, in one of two formats.

`json` (the default, for machines: a log shipper reads each line as one object) or `text`
(what `baton dev run` and the tests' stacks use, for people reading a terminal or a file).
Both carry the same fields: time, level, service, logger, message, and, when known, the
execution the record is about and the trace it belongs to (`execution_id`, `trace_id`),
plus whatever a record passes in `extra` (the api's access log: method, path, ...).

The execution comes from a context variable (`about`), so a handler sets it once and every
record below it, in any module, says which execution it is about; the trace id comes from
the current span (baton_platform.tracing).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from baton_platform.settings import Settings
from baton_platform.tracing import configure_tracing, trace_id

LogFormat = Literal["json", "text"]

_execution: ContextVar[str | None] = ContextVar("baton_execution_id", default=None)

# What every LogRecord has: anything else on a record came from `extra` (but uvicorn's
# `color_message`, the message again with terminal colours).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class about:  # noqa: N801 (used as a function: `with about(execution_id):`)
    """Every record logged inside the block (in this task) names `execution_id`."""

    __slots__ = ("_token", "_value")

    def __init__(self, execution_id: object) -> None:
        self._value = None if execution_id is None else str(execution_id)

    def __enter__(self) -> None:
        self._token = _execution.set(self._value)

    def __exit__(self, *_exc: object) -> None:
        _execution.reset(self._token)


def record_fields(record: logging.LogRecord, service: str) -> dict[str, Any]:
    """A record as the fields both formats write, in a stable order."""
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "service": service,
        "logger": record.name,
        "message": record.getMessage(),
    }
    execution = getattr(record, "execution_id", None) or _execution.get()
    if execution is not None:
        fields["execution_id"] = str(execution)
    trace = trace_id()
    if trace is not None:
        fields["trace_id"] = trace
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in fields and not key.startswith("_"):
            fields[key] = value
    return fields


class _ServiceFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service


class JsonFormatter(_ServiceFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record, self._service)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)


class TextFormatter(_ServiceFormatter):
    """`time level service logger: message key=value ...`, the fields after the message."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record, self._service)
        head = " ".join(str(fields.pop(k)) for k in ("time", "level", "service"))
        line = f"{head} {fields.pop('logger')}: {fields.pop('message')}"
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def observe(service: str, settings: Settings) -> Callable[[], None]:
    """A service's logs and traces as its settings say; returns what ends the trace export."""
    configure_logging(service, settings.log_level, settings.log_format)
    return configure_tracing(service, settings.otlp_endpoint, settings.instance)
