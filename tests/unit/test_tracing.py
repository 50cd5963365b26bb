"""Trace context propagation helpers (baton_platform.tracing) and the dispatcher's store of
trace contexts between a submit and the relay (baton_dispatcher.traces)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from baton_dispatcher.traces import TraceContexts
from baton_platform import tracing
from baton_platform.settings import Settings
from baton_platform.sql import Database

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stop = tracing.install(provider)
    try:
        yield exporter
    finally:
        stop()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_off_everything_is_a_no_op() -> None:
    assert not tracing.enabled()
    assert tracing.inject() == {}
    assert tracing.current() == {}
    assert tracing.extract({"traceparent": PARENT}) is None
    with tracing.span("anything") as made:
        assert made is None
        assert tracing.trace_id() is None
    remembered = tracing.Remembered()
    remembered.keep("e", {"traceparent": PARENT})
    assert "e" not in remembered


def test_traces_url_adds_the_otlp_path_once() -> None:
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_configure_without_an_endpoint_leaves_tracing_off() -> None:
    stop = tracing.configure_tracing("api", None)
    assert not tracing.enabled()
    stop()


def test_injected_context_names_the_current_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer") as outer:
        assert outer is not None
        carrier = tracing.inject({"Nats-Msg-Id": "x"})
        trace_id = format(outer.get_span_context().trace_id, "032x")
        span_id = format(outer.get_span_context().span_id, "016x")
        assert carrier["Nats-Msg-Id"] == "x"
        assert carrier["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
        assert tracing.trace_id() == trace_id
    assert tracing.inject() == {}  # outside any span: nothing to carry


def test_an_extracted_context_is_the_parent_of_the_next_span(
    spans: InMemorySpanExporter,
) -> None:
    parent = tracing.extract({"traceparent": PARENT, "tracestate": "vendor=1"})
    assert parent is not None
    execution = uuid4()
    with tracing.span("child", tracing.SpanKind.CONSUMER, parent, execution_id=execution):
        pass
    child = by_name(spans)["child"]
    assert format(child.context.trace_id, "032x") == PARENT.split("-")[1]
    assert child.parent is not None
    assert format(child.parent.span_id, "016x") == PARENT.split("-")[2]
    assert child.kind is tracing.SpanKind.CONSUMER
    assert child.attributes is not None
    assert child.attributes[tracing.EXECUTION_ID] == str(execution)
    assert child.context.trace_state.get("vendor") == "1"


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"Nats-Msg-Id": "1"}, {"traceparent": "garbage"}, {"traceparent": "00-" + "0" * 55}],
)
def test_headers_without_a_valid_context_give_none(
    spans: InMemorySpanExporter, headers: dict[str, str] | None
) -> None:
    assert tracing.extract(headers) is None


def test_continued_makes_no_span_without_a_parent(spans: InMemorySpanExporter) -> None:
    with tracing.continued("orphan", tracing.SpanKind.CONSUMER, None) as made:
        assert made is None
    parent = tracing.extract({"traceparent": PARENT})
    with tracing.continued("kept", tracing.SpanKind.CONSUMER, parent) as made:
        assert made is not None
    assert list(by_name(spans)) == ["kept"]


def test_remembered_contexts_are_bounded_and_continue_their_trace(
    spans: InMemorySpanExporter,
) -> None:
    remembered = tracing.Remembered(size=2)
    remembered.keep("a", {"traceparent": PARENT})
    remembered.keep("b", {})  # nothing to keep
    remembered.keep("c", {"traceparent": PARENT})
    remembered.keep("d", {"traceparent": PARENT})
    assert "a" not in remembered and "b" not in remembered
    assert remembered.get("d") == {"traceparent": PARENT}
    parent = remembered.parent("d")
    with tracing.span("answer", parent=parent):
        pass
    assert by_name(spans)["answer"].context.trace_id == int(PARENT.split("-")[1], 16)


@pytest.fixture
def traces_database(tmp_path: Path, database_url: str | None) -> Database:
    """Where the dispatcher keeps trace contexts: a file, or the schema `traces`."""
    return Settings(data_dir=tmp_path, database_url=database_url).traces_database


def test_trace_contexts_store_keeps_the_first_context(traces_database: Database) -> None:
    store = TraceContexts(traces_database)
    first, other = uuid4(), uuid4()
    store.keep(first, {"traceparent": PARENT, "tracestate": "v=1"})
    store.keep(first, {"traceparent": PARENT.replace("b7ad", "c7ad")})  # a submit sent again
    store.keep(other, {"traceparent": PARENT})
    store.keep(uuid4(), {})  # no context: nothing stored
    assert store.find([first, other, uuid4()]) == {
        first: {"traceparent": PARENT, "tracestate": "v=1"},
        other: {"traceparent": PARENT},
    }
    assert store.find([]) == {}
    store.close()
    reopened = TraceContexts(traces_database)
    assert reopened.find([first]) == {first: {"traceparent": PARENT, "tracestate": "v=1"}}
    reopened.close()
