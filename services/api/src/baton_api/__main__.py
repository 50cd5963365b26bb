"""`baton-api` / `python -m baton_api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from baton_api.app import create_app
from baton_platform.logs import configure_logging
from baton_platform.metrics import serve_metrics
from baton_platform.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging("api", settings.log_level)
    serve_metrics(settings.metrics_port)
    try:
        app = create_app(settings)
    except ValueError as exc:
        sys.exit(f"baton-api: {exc}")
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep configure_logging's format for uvicorn's own lines too
        lifespan="on",
        # HTTPS when a certificate is configured (docs/security.md, "Running behind TLS").
        ssl_certfile=settings.api_tls_cert_file,
        ssl_keyfile=settings.api_tls_key_file,
    )


if __name__ == "__main__":
    main()
