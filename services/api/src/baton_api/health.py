"""`/health` (the process is up) and `/ready` (it can do its job: NATS and the store answer).

Outside `/v1` and without authentication, so load balancers and orchestrators can call them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from baton_api.schemas import HealthOut

# A named check: returns None when healthy, else why not.
Check = Callable[[], Awaitable[str | None]]


class HealthController(Controller):
    path = "/"
    tags = ["operations"]

    @get("/health")
    async def health(self) -> HealthOut:
        """Liveness: answers 200 while the process serves requests."""
        return HealthOut(status="ok")

    # Not a problem document: the same shape as the 200, for probes that read the checks.
    @get(
        "/ready",
        responses={503: ResponseSpec(HealthOut, description="not ready; `checks` says why")},
    )
    async def ready(self, checks: NamedDependency[dict[str, Check]]) -> Response[HealthOut]:
        """Readiness: 200 when NATS and the store are reachable, else 503 naming what is not."""
        results = {name: (await check()) or "ok" for name, check in checks.items()}
        healthy = all(result == "ok" for result in results.values())
        return Response(
            HealthOut(status="ok" if healthy else "unavailable", checks=results),
            status_code=200 if healthy else 503,
        )
