"""`baton-timeout-scheduler` / `python -m baton_timeout_scheduler`."""

from __future__ import annotations

from baton_platform.lifecycle import run_until_signalled
from baton_platform.logs import observe
from baton_platform.metrics import serve_metrics
from baton_platform.settings import Settings
from baton_timeout_scheduler.app import serve


def main() -> None:
    settings = Settings()
    stop_tracing = observe("timeout-scheduler", settings)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        run_until_signalled(lambda stop: serve(settings, stop))
    finally:
        stop_tracing()


if __name__ == "__main__":
    main()
