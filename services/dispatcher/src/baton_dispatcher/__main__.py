"""`baton-dispatcher` / `python -m baton_dispatcher`."""

from __future__ import annotations

from baton_dispatcher.app import serve
from baton_platform.lifecycle import run_until_signalled
from baton_platform.logs import observe
from baton_platform.metrics import serve_metrics
from baton_platform.settings import Settings


def main() -> None:
    settings = Settings()
    stop_tracing = observe("dispatcher", settings)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        run_until_signalled(lambda stop: serve(settings, stop))
    finally:
        stop_tracing()


if __name__ == "__main__":
    main()
