"""The four seed APIs as dialects of Baton (docs/dialects.md).

Each dialect is a set of thin controllers under its own prefix that translate a seed API's
requests into the same `ExecutionService` calls the v1 routes make, and the same views back
into the seed's shapes and status words (statuses.py holds the one table of words).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from litestar import Router
from litestar.di import NamedDependency, Provide
from litestar.types import Middleware

from baton_api.auth import Identity
from baton_api.dialects import enapter, fleets, iotee, traxes
from baton_domain.catalog import Catalog

__all__ = ["dialect_routers"]


def dialect_routers(
    middleware: Sequence[Middleware], catalog: Callable[[], Catalog]
) -> list[Router]:
    """One router per dialect, each behind `middleware` (the API-key check)."""

    def tenant_catalog(caller: NamedDependency[Identity]) -> Catalog:
        return catalog().of(caller.tenant)  # the caller's tenant's part only

    dependencies = {"catalog": Provide(tenant_catalog, sync_to_thread=True)}

    def router(prefix: str, handlers: list[type], header: str, *, tag: str) -> Router:
        return Router(
            prefix,
            route_handlers=handlers,
            middleware=list(middleware),
            dependencies=dependencies,
            security=[{header: []}],
            tags=[tag],
        )

    return [
        router(traxes.PREFIX, [traxes.TraxesCommandController], "bearer", tag="traxes"),
        router(fleets.PREFIX, [fleets.FleetsCommandController], "bearer", tag="fleets"),
        router(enapter.PREFIX, [enapter.EnapterCommandController], "enapterToken", tag="enapter"),
        router(
            iotee.PREFIX,
            [iotee.IoteeDeviceController, iotee.IoteeCommandController],
            "apiKey",
            tag="iotee",
        ),
    ]
