"""`HEAD` on every GET route: the GET answer's status and headers, without its body.

Litestar 2 routes by method before any middleware runs, and its HEAD handlers may not return
a body, so a GET route answers HEAD with 405. This wraps the app's ASGI handler (outside the
router) instead: a HEAD request goes through as a GET, with its auth, guards and errors, and
the body is dropped on the way out. `Content-Length` stays that of the GET answer (RFC 9110
section 9.3.2).
"""

from __future__ import annotations

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the last (empty) part ends the answer
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # A copy: the server keeps its own scope (HEAD), so it sends no body either.
        as_get: HTTPScope = {**scope, "method": "GET"}
        await self.app(as_get, receive, without_body)


def serve_head(app: Litestar) -> Litestar:
    """Let every GET route of `app` answer HEAD too."""
    app.asgi_handler = HeadAsGet(app.asgi_handler)
    return app
