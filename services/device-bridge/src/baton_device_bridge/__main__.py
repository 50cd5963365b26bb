"""`baton-device-bridge` / `python -m baton_device_bridge`."""

from __future__ import annotations

from baton_device_bridge.app import serve
from baton_device_bridge.replicas import ReplicasError, share_of
from baton_platform.lifecycle import run_until_signalled
from baton_platform.logs import observe
from baton_platform.metrics import serve_metrics
from baton_platform.settings import Settings


def main() -> None:
    settings = Settings()
    stop_tracing = observe("device-bridge", settings)
    try:
        share_of(settings)
    except ReplicasError as exc:  # one line naming the setting, not a traceback
        raise SystemExit(f"device-bridge: {exc}") from None
    serve_metrics(settings.metrics_port, settings.metrics_host)
    try:
        run_until_signalled(lambda stop: serve(settings, stop))
    finally:
        stop_tracing()


if __name__ == "__main__":
    main()
