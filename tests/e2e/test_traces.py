"""Traces and logs of a running stack: one trace per command across every service, exported
over OTLP/HTTP to a receiver this test runs; nothing exported when tracing is off; JSON log
lines naming the execution and the trace; FastStream's per-message lines absent."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from baton_cli.localstack import Stack
from baton_contracts.mqtt import execution_topic
from tests.e2e.conftest import Baton, make_stack, running

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, str]


class OtlpReceiver:
    """A small OTLP/HTTP traces endpoint on a free loopback port: keeps every span posted."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces"
                if ok:
                    receiver._take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    found.append(
                        Span(
                            service=resource["service.name"],
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes=attributes,
                        )
                    )
        with self._lock:
            self.posts += 1
            self.spans.extend(found)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    made = OtlpReceiver()
    yield made
    made.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Stack]:
    env = {"BATON_OTLP_ENDPOINT": receiver.url, "BATON_LOG_FORMAT": "json"}
    made = make_stack(tmp_path_factory.mktemp("traced"), extra_env=env)
    with running(made) as started:
        yield started


def one(spans: list[Span], service: str, name: str) -> Span:
    found = [s for s in spans if s.service == f"baton-{service}" and s.name.startswith(name)]
    assert len(found) == 1, f"{service} {name!r}: {found}; all: {spans}"
    return found[0]


def wait_for_spans(receiver: OtlpReceiver, trace_id: str, count: int) -> list[Span]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = receiver.of_trace(trace_id)
        if len(spans) >= count:
            return spans
        time.sleep(0.1)
    raise AssertionError(
        f"{count} spans of {trace_id} never arrived: {receiver.of_trace(trace_id)}"
    )


async def requests_on(
    stack: Stack, device: str, into: list[aiomqtt.Message], subscribed: threading.Event
) -> None:
    env = stack.mqtt_env()
    async with aiomqtt.Client(
        env["BATON_MQTT_HOST"],
        int(env["BATON_MQTT_PORT"]),
        username=env["BATON_MQTT_USERNAME"],
        password=env["BATON_MQTT_PASSWORD"],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(execution_topic(device, "+", "request"), qos=1)
        subscribed.set()  # SUBACK received: the broker sends us what is published from now
        async for message in client.messages:
            into.append(message)


def test_one_trace_spans_a_command_from_the_api_to_the_device_answers(
    traced: Stack, receiver: OtlpReceiver
) -> None:
    seen: list[aiomqtt.Message] = []
    subscribed = threading.Event()
    loop = asyncio.new_event_loop()
    watcher = loop.create_task(requests_on(traced, "demo-thermostat-4", seen, subscribed))

    def watch() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(watcher)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        assert subscribed.wait(10), "the watcher did not subscribe"
        response = Baton(traced).send(
            "demo-thermostat-4", "set_temperature", {"value": 22}, wait=10
        )
        assert response.status_code == 201, response.text
        execution = response.json()
        assert execution["status"] == "SUCCEEDED"
        deadline = time.monotonic() + 10
        while not seen:  # QoS 1 to us too: it comes
            assert time.monotonic() < deadline, "the request never reached the watcher"
            time.sleep(0.05)
    finally:
        loop.call_soon_threadsafe(watcher.cancel)
        thread.join(5)
    execution_id = execution["id"]

    # The api's request span is the root: find it by the execution the others name.
    deadline = time.monotonic() + 20
    while True:
        named = [
            s for s in receiver.spans if s.attributes.get("baton.execution_id") == execution_id
        ]
        if named or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert named, "no span names the execution"
    trace_id = named[0].trace_id
    # api: request + submit; dispatcher: submit, 4 relayed events (Requested, Dispatched,
    # Published, Acknowledged, Succeeded: 5), 3 reports; bridge: publish + 2 answers.
    spans = wait_for_spans(receiver, trace_id, 2 + 1 + 5 + 3 + 3)
    assert all(s.attributes.get("baton.execution_id") in (None, execution_id) for s in spans)

    request = one(spans, "api", "POST /v1/devices/{device")
    assert request.parent_id == "" and request.kind == 2  # SERVER, the root
    submit = one(spans, "api", "request submit")
    received = one(spans, "dispatcher", "dispatcher submit")
    dispatched = one(spans, "dispatcher", "relay Dispatched")
    published = one(spans, "device-bridge", "mqtt publish")
    started = one(spans, "device-bridge", "answer STARTED")
    succeeded = one(spans, "device-bridge", "answer SUCCEEDED")
    report_published = one(spans, "dispatcher", "report published")
    report_succeeded = one(spans, "dispatcher", "report SUCCEEDED")
    assert submit.parent_id == request.span_id
    assert received.parent_id == submit.span_id
    assert one(spans, "dispatcher", "relay Requested").parent_id == received.span_id
    assert dispatched.parent_id == received.span_id
    assert published.parent_id == dispatched.span_id
    assert started.parent_id == published.span_id
    assert succeeded.parent_id == published.span_id
    assert report_published.parent_id == published.span_id
    assert report_succeeded.parent_id == succeeded.span_id
    assert one(spans, "dispatcher", "report STARTED").parent_id == started.span_id

    # The request carried the publish span's context to the device (MQTT 5 user properties).
    mine = [m for m in seen if str(m.topic).split("/")[-2] == execution_id]
    assert len(mine) == 1
    properties = dict(getattr(mine[0].properties, "UserProperty", []))
    assert properties["traceparent"].split("-")[1:3] == [trace_id, published.span_id]

    # The dispatcher's log lines about it are JSON naming the execution and the trace.
    lines = [json.loads(line) for line in read_log(traced, "dispatcher").splitlines()]
    about = [line for line in lines if line.get("execution_id") == execution_id]
    requested = [line for line in about if line["message"].startswith("requested")]
    assert len(requested) == 1 and requested[0]["trace_id"] == trace_id
    assert requested[0]["service"] == "dispatcher" and requested[0]["level"] == "INFO"
    # The api's access log line for it.
    access = [json.loads(line) for line in read_log(traced, "api").splitlines()]
    posted = [a for a in access if a.get("path") == "/v1/devices/demo-thermostat-4/commands"]
    assert posted and {a["status"] for a in posted} == {201}
    assert all(a["caller"].startswith("key:") and a["duration_ms"] > 0 for a in posted)
    assert traced.api_key not in read_log(traced, "api")


def test_faststream_per_message_lines_are_absent_by_default(traced: Stack) -> None:
    # The bridge read the catalog at its start, through the dispatcher's FastStream subject.
    log = read_log(traced, "dispatcher")
    messages = [json.loads(line)["message"] for line in log.splitlines()]
    assert "dispatcher ready" in " ".join(messages)
    assert not [m for m in messages if m in ("Received", "Processed")]


def test_with_export_off_nothing_is_sent(tmp_path: Path) -> None:
    # The OpenTelemetry SDK's own variable is not Baton's switch: still nothing is sent.
    quiet = OtlpReceiver()
    try:
        stack = make_stack(tmp_path, extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": quiet.url})
        with running(stack):
            response = Baton(stack).send(
                "demo-thermostat-5", "set_temperature", {"value": 20}, wait=10
            )
            assert response.json()["status"] == "SUCCEEDED"
        # Every service has stopped, so anything it would have exported has been sent.
        assert quiet.posts == 0
        assert not (tmp_path / "traces.sqlite").exists()
    finally:
        quiet.close()


def read_log(stack: Stack, service: str) -> str:
    return (stack.log_dir / f"{service}.log").read_text()
