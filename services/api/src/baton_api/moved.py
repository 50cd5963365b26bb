"""Which devices' MQTT accounts a catalog change takes back before it is made.

A device's account may use the topics it had when its credentials were issued
(baton_api.credentials). A change that removes the device (an import without it) or gives
it other topics (another hardware id, type, or wire settings) would leave that account on
topics the catalog no longer gives the device, which another tenant's device may then take
(the catalog checks only the topics it knows of): the old account could read that device's
requests and answer for it. So the api takes the account back first, as removing a device
does, and the admin issues new credentials where the device lives on.
"""

from __future__ import annotations

from typing import Any

from baton_contracts.nats import CatalogChange
from baton_domain.catalog import Catalog, Device, DeviceType
from baton_platform.commands import WIRE

# The changes that can move or drop a device's topics (removing a device takes its account
# back by itself: baton_api.catalog.CatalogService.remove_device).
MOVING = frozenset({"import", "put-device", "put-device-type"})


def moved_devices(stored: Catalog, tenant: str, change: CatalogChange) -> list[str]:
    """The ids of `tenant`'s devices that `change` removes or gives other topics. A change
    that cannot be read moves nothing: the dispatcher refuses it."""
    before = {d.id: d for d in stored.devices if d.tenant == tenant}
    try:
        devices, types = _after(stored, tenant, change)
    except ValueError:  # pydantic's ValidationError too
        return []
    moved = []
    for device_id, old in before.items():
        new = devices.get(device_id, None if change.op == "import" else old)
        was = _topics(old, stored.device_types[old.type])
        if new is None or new.type not in types or _topics(new, types[new.type]) != was:
            moved.append(device_id)
    return moved


def _after(
    stored: Catalog, tenant: str, change: CatalogChange
) -> tuple[dict[str, Device], dict[str, DeviceType]]:
    """The tenant's devices `change` names, and every device type, as they would be."""
    types = dict(stored.device_types)
    if change.op == "import":
        document: dict[str, Any] = change.document or {}
        mine = {n: DeviceType.model_validate(t) for n, t in _of(document, "device_types")}
        types = {n: t for n, t in types.items() if t.tenant != tenant} | mine
        devices = [Device.model_validate(d) for d in document.get("devices") or []]
        return {d.id: d for d in devices}, types
    if change.op == "put-device":
        device = Device.model_validate(change.device)
        return {device.id: device}, types
    if change.op == "put-device-type" and change.name is not None:
        types[change.name] = DeviceType.model_validate(change.definition)
    return {}, types


def _of(document: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    return list((document.get(key) or {}).items())


def _topics(device: Device, device_type: DeviceType) -> set[str]:
    return set(WIRE.topics(device, device_type))
