"""One log line per HTTP request, and the request's span (the root of a command's trace).

Wraps the app's ASGI handler, outside the router, so every request is seen: those refused
by the auth middleware and those no route matches included. The line names the caller by
its principal (`key:<id>`, `jwt:<subject>`, a bootstrap key's hash), never by the key.
The probes (`/health`, `/ready`), which a balancer asks several times a second, are logged
at DEBUG only.
"""

from __future__ import annotations

import logging
import time

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from baton_api.auth import Identity
from baton_platform import tracing

log = logging.getLogger("baton_api.access")

PROBES = frozenset({"/health", "/ready"})


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = 500  # what the server answers when the app fails before it said anything

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = tracing.extract(headers)  # a client that traces itself
        with tracing.span(f"{method} {path}", tracing.SpanKind.SERVER, parent) as span:
            try:
                await self.app(scope, receive, noting_status)
            finally:
                route = scope.get("path_template")
                if span is not None:
                    span.update_name(f"{method} {route or path}")
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("http.route", route or "")
                    span.set_attribute("http.response.status_code", status)
                user = scope.get("user")
                fields = {
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "caller": user.principal if isinstance(user, Identity) else None,
                }
                level = logging.DEBUG if path in PROBES else logging.INFO
                log.log(level, "%s %s %d", method, path, status, extra=fields)


def log_access(app: Litestar) -> Litestar:
    """Log every request of `app` (and trace it, when tracing is on)."""
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app
