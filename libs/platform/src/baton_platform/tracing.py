"""OpenTelemetry traces: one trace per command, from the api's request to the device's last
answer (docs/operations.md, "Traces").

Off unless `BATON_OTLP_ENDPOINT` is set. Off, every helper here returns at its first line:
no tracer provider is installed, no context is read or written on any message, nothing is
stored beside the events, and `span` yields None without making a span.

The context travels as W3C Trace Context (`traceparent`, `tracestate`): in NATS message
headers (docs/nats-contract.md), in MQTT 5 user properties of a request to a device
(docs/mqtt-contract.md), and, between a submit and the relay's later publish of its events,
in a table beside the event store (`baton_dispatcher.traces`), never in the events.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The attribute every span of one command carries (and the log records' field).
EXECUTION_ID = "baton.execution_id"

_W3C = TraceContextTextMapPropagator()
# What `span` gives while tracing is off: one shared object, nothing made per call.
_NO_SPAN: AbstractContextManager[None] = nullcontext()
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP's traces path on `endpoint` (given as the collector's base URL, as
    OTEL_EXPORTER_OTLP_ENDPOINT is, or already with the path)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def configure_tracing(
    service: str, endpoint: str | None, instance: str = "default"
) -> Callable[[], None]:
    """Export this process's spans to `endpoint` (OTLP/HTTP); None: tracing stays off.
    Returns what flushes and stops the export (call it once, at the end)."""
    if not endpoint:
        return lambda: None
    # Imported only when on: the SDK and the exporter cost nothing to a process without them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": f"baton-{service}", "service.instance.id": instance}
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return install(provider)


def install(provider: SdkTracerProvider) -> Callable[[], None]:
    """Make spans with `provider` (the tests give one that keeps them in memory); returns
    what stops it. Not the global provider: Baton's spans are made here only."""
    global _tracer
    _tracer = provider.get_tracer("baton")

    def shutdown() -> None:
        global _tracer
        _tracer = None
        provider.shutdown()

    return shutdown


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """`headers` (a new dict when None) with the current span's context added, when there is
    one and tracing is on."""
    headers = {} if headers is None else headers
    if _tracer is not None:
        _W3C.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The context `headers` carry; None when they carry none (or tracing is off)."""
    if _tracer is None or not headers or TRACEPARENT not in headers:
        return None
    context = _W3C.extract(headers)
    valid = trace.get_current_span(context).get_span_context().is_valid
    return context if valid else None


def current() -> dict[str, str]:
    """The current span's `traceparent` (and `tracestate`), for storing; {} when none."""
    return inject({})


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    execution_id: object = None,
    **attributes: Any,
) -> AbstractContextManager[Span | None]:
    """A span, current inside the block, child of `parent` (else of the current span); None
    and no span at all when tracing is off."""
    if _tracer is None:
        return _NO_SPAN
    if execution_id is not None:
        attributes[EXECUTION_ID] = str(execution_id)
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def continued(
    name: str, kind: SpanKind, parent: Context | None, execution_id: object = None
) -> AbstractContextManager[Span | None]:
    """A span continuing `parent`'s trace; none at all without a parent (a message that
    carried no context starts no trace of its own)."""
    if parent is None:
        return _NO_SPAN
    return span(name, kind, parent, execution_id)


def tag(execution_id: object) -> None:
    """Name the execution on the current span (known only once its message is decoded)."""
    if _tracer is not None and execution_id is not None:
        trace.get_current_span().set_attribute(EXECUTION_ID, str(execution_id))


class Remembered:
    """The last `size` executions' contexts, by execution id: what a later message about the
    same execution continues (the bridge's answers, the relay's next events). In memory
    only: after a restart the next message starts its own trace."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._contexts: OrderedDict[object, dict[str, str]] = OrderedDict()

    def keep(self, execution_id: object, carrier: Mapping[str, str]) -> None:
        if _tracer is None or TRACEPARENT not in carrier:
            return
        self._contexts[execution_id] = dict(carrier)
        self._contexts.move_to_end(execution_id)
        while len(self._contexts) > self._size:
            self._contexts.popitem(last=False)

    def get(self, execution_id: object) -> dict[str, str] | None:
        return self._contexts.get(execution_id)

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._contexts

    def parent(self, execution_id: object) -> Context | None:
        return extract(self._contexts.get(execution_id))


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), for log records; None outside a span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


__all__ = [
    "EXECUTION_ID",
    "TRACEPARENT",
    "TRACESTATE",
    "Remembered",
    "SpanKind",
    "configure_tracing",
    "continued",
    "current",
    "enabled",
    "extract",
    "inject",
    "install",
    "span",
    "tag",
    "trace_id",
]
