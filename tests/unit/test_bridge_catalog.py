"""The device-bridge wires every tenant's devices: it asks the dispatcher for the whole
catalog, not the default tenant's part a plain `catalog.get` answers.

The dispatcher's side is the real `CommandHandlers` over an in-memory event store; only
NATS is stood in for, by a client that hands each request to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from baton_contracts.mqtt import response_topic
from baton_contracts.nats import CATALOG_GET_SUBJECT, CatalogChange, CatalogQuery
from baton_device_bridge.app import DeviceBridge
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_platform.commands import CommandHandlers
from baton_platform.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "deploy/catalog/demo.yaml"
THERMOSTAT = {"commands": {"reboot": {"params": {"type": "object", "additionalProperties": False}}}}


@dataclass
class Reply:
    data: bytes


@dataclass
class DispatcherOverNats:
    """A NATS client whose `catalog.get` requests the dispatcher's handlers answer."""

    handlers: CommandHandlers
    asked: list[CatalogQuery] = field(default_factory=list)

    async def request(self, subject: str, payload: bytes, timeout: float) -> Reply:
        assert subject == CATALOG_GET_SUBJECT
        query = CatalogQuery.model_validate_json(payload)
        self.asked.append(query)
        return Reply(self.handlers.get_catalog(query).model_dump_json().encode())


def handlers_with_tenant(tenant: str, device_id: str) -> CommandHandlers:
    """The demo catalog (tenant `default`) and one device of `tenant`."""
    executions = Executions(
        Catalog.from_yaml(DEMO), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    executions.seed_catalog()
    handlers = CommandHandlers(executions)
    for change in (
        CatalogChange(
            tenant=tenant,
            op="create-device-type",
            name=f"{tenant}-thermostat",
            definition=THERMOSTAT,
        ),
        CatalogChange(
            tenant=tenant,
            op="create-device",
            device={"id": device_id, "type": f"{tenant}-thermostat"},
        ),
    ):
        assert handlers.change_catalog(change).problem is None
    return handlers


async def bridge_loaded(handlers: CommandHandlers, tmp_path: Path) -> tuple[DeviceBridge, Any]:
    bridge = DeviceBridge(Settings(data_dir=tmp_path))
    nats = DispatcherOverNats(handlers)
    bridge._nc = nats  # type: ignore[assignment]  # only `request` is used
    await bridge._load_catalog()
    return bridge, nats


async def test_the_bridge_wires_the_devices_of_every_tenant(tmp_path: Path) -> None:
    bridge, nats = await bridge_loaded(handlers_with_tenant("acme", "acme-1"), tmp_path)

    for device_id in ("demo-thermostat-1", "acme-1"):
        target = bridge.wiring.target(device_id)
        assert target is not None, f"{device_id} is not wired"
        assert target.wire_id == device_id
    assert [query.tenant for query in nats.asked] == [None]
    assert bridge.wiring.catalog.device("acme-1").tenant == "acme"
    # Its answers are its own, not dropped as from an unknown device.
    topic = response_topic("acme-1", uuid4())
    device_id, _codec, answer = bridge.wiring.decode_answer(topic, b'{"status": "SUCCEEDED"}')
    assert (device_id, answer.status) == ("acme-1", "SUCCEEDED")


async def test_a_plain_catalog_get_still_answers_the_default_tenant_only() -> None:
    handlers = handlers_with_tenant("acme", "acme-1")

    default = handlers.get_catalog(CatalogQuery()).document or {}
    acme = handlers.get_catalog(CatalogQuery(tenant="acme")).document or {}
    whole = handlers.get_catalog(CatalogQuery(tenant=None)).document or {}

    assert "acme-1" not in {d["id"] for d in default["devices"]}
    assert [d["id"] for d in acme["devices"]] == ["acme-1"]
    assert {"demo-thermostat-1", "acme-1"} <= {d["id"] for d in whole["devices"]}
    # The whole catalog says whose each entry is, so it reads back as one valid catalog.
    assert Catalog.model_validate(whole).device("acme-1").tenant == "acme"
