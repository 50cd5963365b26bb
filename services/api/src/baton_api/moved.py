"""Which devices' MQTT accounts a catalog change takes back before it is made.

A device's account may use the topics it had when its credentials were issued
(baton_api.credentials). A change that removes the device (an import without it) or gives
it other topics (another hardware id, type, or wire settings) would leave that account on
topics the catalog no longer gives the device, which another tenant's device may then take
(the catalog checks only the topics it knows of): the old account could read that device's
requests and answer for it. So the api takes the account back first, as removing a device
does, and the admin issues new credentials where the device lives on. Whichever way a change
came (straight to the dispatcher over NATS too), it takes them back again once the change is
stored (baton_api.moved_accounts), by the same rules.
"""

from __future__ import annotations

from baton_contracts.accounts import AccountTopics
from baton_contracts.profiles import ProfileSettingsError
from baton_domain.catalog import Catalog, Device
from baton_domain.errors import UnknownDevice
from baton_platform.commands import WIRE

# The changes that can move or drop a device's topics (removing a device takes its account
# back by itself: baton_api.catalog.CatalogService.remove_device).
MOVING = frozenset({"import", "put-device", "put-device-type"})


def moved_devices(before: Catalog, after: Catalog, tenant: str | None = None) -> list[str]:
    """The ids of `tenant`'s devices (None: every tenant's) in `before` that are gone from
    `after`, or whose MQTT
    topics differ there, or are unknown on either side: a type whose wire settings its
    profile cannot use (stored before the catalog checked them) gives none, and an account
    issued then may hold anything, the broker's own topics included."""
    kept = {d.id: d for d in after.devices}
    moved = []
    for old in before.devices:
        if tenant not in (None, old.tenant):
            continue
        new = kept.get(old.id)
        was = _topics(old, before)
        if new is None or not was or _topics(new, after) != was:
            moved.append(old.id)
    return moved


def _topics(device: Device, catalog: Catalog) -> set[str]:
    return set(WIRE.topics(device, catalog.device_types[device.type]))


def account_topics(catalog: Catalog, device_id: str) -> AccountTopics | None:
    """The topics an account of `device_id` is issued on in `catalog`; None when there are
    none: no such device, or wire settings its type's profile cannot use."""
    try:
        device = catalog.device(device_id)
        return WIRE.account(device, catalog.device_types[device.type])
    except (UnknownDevice, ProfileSettingsError):
        return None
