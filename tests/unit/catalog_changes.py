"""Catalog changes through the dispatcher's real handlers over an in-memory event store:
what the catalog tests of topics and wire settings share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baton_contracts.nats import CatalogChange, CatalogReply
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.commands import CommandHandlers

DEMO = Path(__file__).resolve().parents[2] / "deploy/catalog/demo.yaml"
IOTEE = "iotee/dev/{hardware_id}/rls"


def raw_type(topic: str = IOTEE, **wire: str) -> dict[str, Any]:
    """A raw-mapped type (iotee's shape) on `topic`, with more `wire` settings."""
    return {
        "wire_profile": "raw-mapped",
        "delivery": "one-at-a-time",
        "wire": {"topic": topic, **wire},
        "commands": {"lock": {"wire": {"payload": "1"}}},
    }


def demo_handlers() -> CommandHandlers:
    """The handlers over the demo catalog (tenant `default`), stored."""
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    executions.seed_catalog()
    return CommandHandlers(executions)


def change(handlers: CommandHandlers, tenant: str, op: str, **fields: Any) -> CatalogReply:
    return handlers.change_catalog(CatalogChange(tenant=tenant, op=op, **fields))
