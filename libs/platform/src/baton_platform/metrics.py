"""Prometheus counters and gauges; each service serves them on BATON_METRICS_PORT if set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

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
DEADLINES_UNCONFIRMED = Counter(
    "baton_deadlines_unconfirmed_total",
    "Deadlines decided without a device-bridge's confirmation that the answers before them "
    "are stored (the bridge silent for BATON_DEADLINE_MAX_HOLD)",
    ["bridge"],
)

WAITING_REQUESTS = Gauge(
    "baton_api_waiting_requests",
    "Requests waiting for their execution to end (?wait=, Enapter's execute_command)",
)

LEASE_HELD = Gauge(
    "baton_lease_held",
    "1 while this process holds the lease and does its job (docs/operations.md, Replicas)",
    ["lease"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host:port` (port 0: not at all), from a background thread.

    A port that cannot be bound (usually: taken) ends the process with one line naming the
    setting, not a traceback: it is the operator's setting to change, not a bug."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SystemExit(
            f"BATON_METRICS_PORT={port}: cannot serve metrics on {host}:{port} ({reason}); "
            "choose a free port, or 0 to turn metrics off"
        ) from None
