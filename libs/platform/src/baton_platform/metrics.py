"""Prometheus counters. Each service serves them on BATON_METRICS_PORT when it is set."""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

REJECTED_MESSAGES = Counter(
    "baton_rejected_messages_total",
    "Messages refused and dropped (malformed, unknown execution, wrong device, ...)",
    ["service", "reason"],
)
DEAD_LETTERS = Counter(
    "baton_dead_letters_total",
    "Messages given up on after repeated failures",
    ["service", "subject"],
)


def serve_metrics(port: int) -> None:
    if port:
        start_http_server(port, addr="127.0.0.1")
