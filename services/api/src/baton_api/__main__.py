"""`baton-api` / `python -m baton_api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import sys
import threading
from types import FrameType

import uvicorn

from baton_api.app import Parts, create_app
from baton_platform.logs import observe
from baton_platform.metrics import serve_metrics
from baton_platform.settings import Settings


def main() -> None:
    settings = Settings()
    stop_tracing = observe("api", settings)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        app = create_app(settings)
    except ValueError as exc:
        sys.exit(f"baton-api: {exc}")
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=settings.api_keep_alive_seconds,
        log_config=None,  # keep observe's log format for uvicorn's own lines too
        lifespan="on",
        # HTTPS when a certificate is configured (docs/security.md, "Running behind TLS").
        ssl_certfile=settings.api_tls_cert_file,
        ssl_keyfile=settings.api_tls_key_file,
    )
    try:
        DrainingServer(config, app.state.parts, settings.api_drain_seconds).run()
    finally:
        stop_tracing()


class DrainingServer(uvicorn.Server):
    """uvicorn, stopping in two steps when asked to (SIGTERM, Ctrl-C): first `/ready` answers
    503 for `drain` seconds while every request is still served, so a balancer that checks it
    sends no new connections; then uvicorn's own graceful stop (requests in hand finish).
    Asked a second time, it stops at once."""

    def __init__(self, config: uvicorn.Config, parts: Parts, drain: float) -> None:
        super().__init__(config)
        self._parts = parts
        self._drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._parts.end_streams()  # else uvicorn would wait for them to end by themselves
        if self._drain <= 0 or self._parts.draining:
            super().handle_exit(sig, frame)
            return
        self._parts.draining = True
        # A timer thread: uvicorn's main loop polls should_exit, set by handle_exit.
        threading.Timer(self._drain, super().handle_exit, (sig, frame)).start()


if __name__ == "__main__":
    main()
