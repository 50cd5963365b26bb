"""The log formats (baton_platform.logs) and the api's access log (baton_api.access_log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider

from baton_api.inmemory import InMemoryGateway
from baton_domain.application import Executions
from baton_platform import tracing
from baton_platform.logs import JsonFormatter, TextFormatter, about
from tests.unit.test_api import ADMIN_KEY, AUTH, KEY, client_for, executions, submit

__all__ = ["executions"]  # the fixture


def record(message: str = "requested %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("baton.test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


@pytest.fixture
def traced() -> Iterator[None]:
    stop = tracing.install(TracerProvider())
    try:
        yield
    finally:
        stop()


def test_json_record_names_the_execution_and_the_trace(traced: None) -> None:
    execution = uuid4()
    with about(execution), tracing.span("work") as span:
        assert span is not None
        line = JsonFormatter("dispatcher").format(record("requested %s", "x", method="GET"))
        trace_id = format(span.get_span_context().trace_id, "032x")
    fields = json.loads(line)
    assert "\n" not in line
    assert fields["level"] == "INFO"
    assert fields["service"] == "dispatcher"
    assert fields["logger"] == "baton.test"
    assert fields["message"] == "requested x"
    assert fields["execution_id"] == str(execution)
    assert fields["trace_id"] == trace_id
    assert fields["method"] == "GET"  # a record's `extra`
    assert fields["time"].endswith("+00:00")


def test_json_record_outside_an_execution_has_neither_id() -> None:
    fields = json.loads(JsonFormatter("api").format(record("ready", color_message="\x1b[1m")))
    assert set(fields) == {"time", "level", "service", "logger", "message"}


def test_execution_of_the_context_ends_with_its_block() -> None:
    with about("first"):
        with about("second"):
            assert json.loads(JsonFormatter("x").format(record()))["execution_id"] == "second"
        assert json.loads(JsonFormatter("x").format(record()))["execution_id"] == "first"
    assert "execution_id" not in json.loads(JsonFormatter("x").format(record()))


def test_json_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record("failed")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter("x").format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_record_has_the_same_fields_after_the_message() -> None:
    with about("e-1"):
        line = TextFormatter("api").format(record("GET %s", "/v1", status=200))
    assert " INFO api baton.test: GET /v1 " in line
    assert line.endswith("execution_id=e-1 status=200")


def test_access_log_one_line_per_request_naming_the_caller_not_the_key(
    tmp_path: Path, executions: Executions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="baton_api.access")
    with client_for(tmp_path, InMemoryGateway(executions)) as client:
        caplog.clear()
        assert submit(client).status_code == 201
        assert client.get("/v1/executions", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/nowhere", headers=AUTH).status_code == 404
        client.get("/health")
    lines = [r for r in caplog.records if r.name == "baton_api.access"]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("POST", "/v1/devices/demo-thermostat-1/commands", 201),
        ("GET", "/v1/executions", 401),
        ("GET", "/nowhere", 404),
        ("GET", "/health", 200),
    ]
    posted, refused = lines[0], lines[1]
    assert posted.caller.startswith("key:")  # type: ignore[attr-defined]
    assert refused.caller is None  # type: ignore[attr-defined]
    assert posted.duration_ms >= 0  # type: ignore[attr-defined]
    assert lines[3].levelno == logging.DEBUG  # probes: not at INFO
    rendered = [JsonFormatter("api").format(r) for r in lines]
    assert not any(KEY in line or ADMIN_KEY in line for line in rendered)
