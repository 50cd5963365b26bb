"""While the api drains (BATON_API_DRAIN_SECONDS, before a stop), every answer closes its
connection (`Connection: close`).

A client that keeps connections alive, through a TCP balancer too, would otherwise keep
sending to this replica on the connection it has, until the final stop closes it under a
request in flight ("server disconnected without sending a response": nothing tells the
client whether it was received). Closed after each answer instead, its next request opens a
new connection, which the balancer, told by `/ready`, gives to another replica.
"""

from __future__ import annotations

from collections.abc import Callable

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class CloseWhileDraining:
    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [h for h in message.get("headers", []) if h[0].lower() != CLOSE[0]]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)


def close_while_draining(app: Litestar, draining: Callable[[], bool]) -> Litestar:
    app.asgi_handler = CloseWhileDraining(app.asgi_handler, draining)
    return app
