"""The catalog as managed data: one event-sourced stream holding the catalog document.

Device types and devices are put and removed by events on this stream, in the same event
store as the executions, so the catalog is replayed and backed up with everything else.
Every change is checked by building the whole `Catalog` it would give, before any event
exists: a wrong definition is refused naming the field, and nothing is half-applied.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from pydantic import ValidationError

from baton_domain.catalog import CHANGE, DEVICE_TYPE_PATTERN, Catalog, CatalogError, Device
from baton_domain.errors import (
    CatalogConflict,
    FieldError,
    InvalidCatalog,
    UnknownDevice,
    UnknownDeviceType,
)
from baton_domain.json_values import json_faults
from baton_domain.tenants import DEFAULT_TENANT
from baton_domain.topics import TopicIndex, WireRules

_T = "baton.catalog.v1"
CATALOG_ID = uuid5(UUID("4a3c2e1d-7b6f-4f8e-9c0a-1d2e3f405162"), "catalog")
JSON = dict[str, Any]


def document_of(catalog: Catalog) -> JSON:
    """The catalog as plain JSON data (what the events carry and export writes)."""
    return catalog.model_dump(mode="json", exclude_defaults=True)


def build(document: JSON, root: str = "", *, stored: bool = False) -> Catalog:
    """The Catalog a document gives, or InvalidCatalog naming each wrong field.

    Strict (no `"30"` for 30, no `true` for 1, device-type names checked, nothing JSON
    cannot carry, such as NaN) for every change, from HTTP, NATS or import; `stored=True` only
    to read back what is already stored, which an older, more lenient Baton may have
    accepted."""
    if not stored:
        _check_json(document, root)
    try:
        if stored:
            return Catalog.model_validate(document)
        return Catalog.model_validate(document, strict=True, context={CHANGE: True})
    except ValidationError as exc:
        errors = [
            FieldError(
                ".".join(str(p) for p in (*([root] if root else []), *err["loc"])) or "catalog",
                err["msg"],
            )
            for err in exc.errors()
        ]
        raise InvalidCatalog("the catalog would not be valid", errors) from None
    except CatalogError as exc:
        raise InvalidCatalog(str(exc), [FieldError(root or "catalog", str(exc))]) from None


def _check_json(document: JSON, root: str) -> None:
    # Checked before the models: a value JSON cannot carry (NaN, an infinity, a YAML date)
    # passes the JSON-valued fields (params schemas, wire settings) but could be neither sent,
    # nor stored, nor read back as JSON.
    errors = json_faults(document, root)
    if errors:
        raise InvalidCatalog("the catalog would not be valid", errors)


def checked(document: JSON, wire: WireRules) -> Catalog:
    """`build` for a document a caller sent (import): also refuses a params schema Baton
    would not run and wire settings the type's profile cannot use, naming the field."""
    catalog = build(document)
    _check_types(catalog, _types(document), wire)
    return catalog


def _nobody_asked(state: JSON) -> None:
    state["by"] = None  # stored before who asked was recorded


class CatalogDocument(Aggregate):
    TOPIC = f"{_T}:CatalogDocument"

    class Created(Aggregate.Created):
        TOPIC = f"{_T}:Created"  # required by the library for pinned topics; never emitted

    class Started(Aggregate.Created):
        TOPIC = f"{_T}:Started"
        document: JSON

    class Imported(Aggregate.Event):
        TOPIC = f"{_T}:Imported"
        class_version = 2  # v2: by (who asked)
        document: JSON
        by: str | None

        upcast_v1_v2 = staticmethod(_nobody_asked)

    class DeviceTypePut(Aggregate.Event):
        TOPIC = f"{_T}:DeviceTypePut"
        class_version = 2  # v2: by (who asked)
        name: str
        definition: JSON
        by: str | None

        upcast_v1_v2 = staticmethod(_nobody_asked)

    class DeviceTypeRemoved(Aggregate.Event):
        TOPIC = f"{_T}:DeviceTypeRemoved"
        class_version = 2  # v2: by (who asked)
        name: str
        by: str | None

        upcast_v1_v2 = staticmethod(_nobody_asked)

    class DevicePut(Aggregate.Event):
        TOPIC = f"{_T}:DevicePut"
        class_version = 2  # v2: by (who asked)
        device: JSON
        by: str | None

        upcast_v1_v2 = staticmethod(_nobody_asked)

    class DeviceRemoved(Aggregate.Event):
        TOPIC = f"{_T}:DeviceRemoved"
        class_version = 2  # v2: by (who asked)
        device_id: str
        by: str | None

        upcast_v1_v2 = staticmethod(_nobody_asked)

    @classmethod
    def create_id(cls, document: JSON) -> UUID:
        return CATALOG_ID

    @event(Started)
    def __init__(self, document: JSON) -> None:
        self.document = _copy(document)

    @property
    def catalog(self) -> Catalog:
        return build(self.document, stored=True)

    # --- commands (each checks the whole resulting catalog first) ---------------------------

    # Each change is made for one tenant: it sees, replaces and removes only what is that
    # tenant's; replacing or removing another tenant's is answered as for a missing one.
    # Names and device ids are the platform's (a device id is its identity on the broker),
    # so creating one another tenant uses is refused as taken, without saying whose; so is a
    # device going by another tenant's device's name or MQTT topic on the wire. Those topics
    # come from the wire profiles' code, which the caller passes in as `wire`.

    def import_document(
        self,
        document: JSON,
        tenant: str = DEFAULT_TENANT,
        by: str | None = None,
        *,
        wire: WireRules,
    ) -> None:
        """Replace `tenant`'s part of the catalog with `document`; the rest stays."""
        checked(document, wire)  # the document alone first, so its errors name its own fields
        types = {n: _stamped(t, tenant, f"device_types.{n}") for n, t in _types(document).items()}
        devices = [_stamped(d, tenant, f"devices.{i}") for i, d in enumerate(_devices(document))]
        for name in types:
            self._check_free(name, _owner(_types(self.document).get(name)), tenant, "device type")
        for device in devices:
            self._check_free(device.get("id"), self._device_owner(device.get("id")), tenant)
        self._check_wire_names_free(devices, tenant)
        others = {n: t for n, t in _types(self.document).items() if _owner(t) != tenant}
        merged = {
            **self.document,
            "device_types": {**others, **types},
            "devices": [*(d for d in _devices(self.document) if _owner(d) != tenant), *devices],
        }
        catalog = build(merged)
        own = [d for d in catalog.devices if d.tenant == tenant]
        _check_topics_free(catalog, own, tenant, wire)
        self._imported(document=merged, by=by)

    def create_device_type(
        self,
        name: str,
        definition: JSON,
        tenant: str = DEFAULT_TENANT,
        by: str | None = None,
        *,
        wire: WireRules,
    ) -> None:
        """Add a device type; CatalogConflict if one has the name (put replaces)."""
        if name in _types(self.document):
            self._check_free(name, _owner(_types(self.document)[name]), tenant, "device type")
            raise CatalogConflict(f"device type {name!r} already exists; PUT replaces it")
        self.put_device_type(name, definition, tenant, by, wire=wire)

    def put_device_type(
        self,
        name: str,
        definition: JSON,
        tenant: str = DEFAULT_TENANT,
        by: str | None = None,
        *,
        wire: WireRules,
    ) -> None:
        _check_type_name(name)
        if _owner(_types(self.document).get(name)) not in (None, tenant):
            raise UnknownDeviceType(name)
        definition = _stamped(definition, tenant, "definition")
        candidate = _copy(self.document)
        candidate.setdefault("device_types", {})[name] = definition
        catalog = build(candidate)
        _check_types(catalog, [name], wire)
        # A type's wire settings give the topics of every device of it (all its tenant's).
        users = [d for d in catalog.devices if d.type == name]
        _check_topics_free(catalog, users, tenant, wire)
        self._device_type_put(name=name, definition=definition, by=by)

    def remove_device_type(
        self, name: str, tenant: str = DEFAULT_TENANT, by: str | None = None
    ) -> None:
        if _owner(_types(self.document).get(name)) != tenant:
            raise UnknownDeviceType(name)
        users = [d["id"] for d in self.document.get("devices", []) if d["type"] == name]
        if users:
            raise CatalogConflict(
                f"device type {name!r} still has devices: {', '.join(users[:10])}"
            )
        self._device_type_removed(name=name, by=by)

    def create_device(
        self,
        device: JSON,
        tenant: str = DEFAULT_TENANT,
        by: str | None = None,
        *,
        wire: WireRules,
    ) -> None:
        """Add a device; CatalogConflict if one has its id (put replaces)."""
        owner = self._device_owner(device.get("id"))
        if owner is not None:
            self._check_free(device.get("id"), owner, tenant)
            raise CatalogConflict(f"device {device.get('id')!r} already exists; PUT replaces it")
        self.put_device(device, tenant, by, wire=wire)

    def put_device(
        self,
        device: JSON,
        tenant: str = DEFAULT_TENANT,
        by: str | None = None,
        *,
        wire: WireRules,
    ) -> None:
        if self._device_owner(device.get("id")) not in (None, tenant):
            raise UnknownDevice(str(device.get("id")))
        device = _stamped(device, tenant, "device")
        self._check_wire_names_free([device], tenant)
        candidate = _copy(self.document)
        devices = [d for d in candidate.get("devices", []) if d.get("id") != device.get("id")]
        candidate["devices"] = [*devices, device]
        catalog = build(candidate)
        _check_topics_free(catalog, [catalog.device(device["id"])], tenant, wire)
        self._device_put(device=device, by=by)

    def remove_device(
        self, device_id: str, tenant: str = DEFAULT_TENANT, by: str | None = None
    ) -> None:
        if self._device_owner(device_id) != tenant:
            raise UnknownDevice(device_id)
        self._device_removed(device_id=device_id, by=by)

    def _device_owner(self, device_id: object) -> str | None:
        found = [d for d in _devices(self.document) if d.get("id") == device_id]
        return _owner(found[0]) if found else None

    def _check_wire_names_free(self, devices: list[JSON], tenant: str) -> None:
        """In most wire profiles a device goes by its hardware id (its topics, its MQTT
        account's rights), as it goes by its id in Baton's: a name another tenant's device
        goes by would let one tenant's device read and answer another's requests, so it is
        taken, like an id. Within a tenant, a clash is the tenant's own (the bridge warns)."""
        taken = {
            name
            for other in _devices(self.document)
            if _owner(other) != tenant
            for name in _wire_names(other)
        }
        for device in devices:
            clash = sorted(taken & _wire_names(device))
            if clash:
                raise CatalogConflict(
                    f"device {device.get('id')!r} would go by {clash[0]!r} on the wire, "
                    "which is taken: choose another hardware_id"
                )

    @staticmethod
    def _check_free(name: object, owner: str | None, tenant: str, kind: str = "device") -> None:
        if owner is not None and owner != tenant:
            raise CatalogConflict(f"{kind} {name!r} is taken: choose another")

    # --- events --------------------------------------------------------------------------------

    @event(Imported)
    def _imported(self, document: JSON, by: str | None) -> None:
        self.document = _copy(document)

    @event(DeviceTypePut)
    def _device_type_put(self, name: str, definition: JSON, by: str | None) -> None:
        self.document.setdefault("device_types", {})[name] = _copy(definition)

    @event(DeviceTypeRemoved)
    def _device_type_removed(self, name: str, by: str | None) -> None:
        del self.document["device_types"][name]

    @event(DevicePut)
    def _device_put(self, device: JSON, by: str | None) -> None:
        devices = [d for d in self.document.get("devices", []) if d["id"] != device["id"]]
        # A device keeps its place when it is replaced, so exports stay stable.
        existing = [d["id"] for d in self.document.get("devices", [])]
        if device["id"] in existing:
            devices.insert(existing.index(device["id"]), _copy(device))
        else:
            devices.append(_copy(device))
        self.document["devices"] = devices

    @event(DeviceRemoved)
    def _device_removed(self, device_id: str, by: str | None) -> None:
        self.document["devices"] = [d for d in self.document["devices"] if d["id"] != device_id]


def _check_type_name(name: str) -> None:
    # Checked before the whole catalog, so the error names the field the caller sent.
    if re.fullmatch(DEVICE_TYPE_PATTERN, name) is None:
        raise InvalidCatalog(
            f"device type name {name!r} is not valid",
            [FieldError("name", f"must match {DEVICE_TYPE_PATTERN}")],
        )


def _check_types(catalog: Catalog, names: Iterable[str], wire: WireRules) -> None:
    """What a change checks of the types it brings, beyond the catalog's own rules."""
    names = list(names)  # read twice
    _check_params_schemas(catalog, names)
    _check_wire(catalog, names, wire)


def _check_params_schemas(catalog: Catalog, names: Iterable[str]) -> None:
    """Refuse, naming the field, a params schema Baton would not run (a regex RE2 cannot run,
    a $ref out of the schema). Only the types a change brings are checked: one stored before
    this rule must not stop every other change (it refuses its own submits instead)."""
    errors = [
        FieldError(".".join(("device_types", name, "commands", command, "params", *where)), why)
        for name in names
        for command, spec in catalog.device_types[name].commands.items()
        for where, why in spec.params_schema.problems
    ]
    if errors:
        raise InvalidCatalog("a params schema is not one Baton can run", errors)


def _check_wire(catalog: Catalog, names: Iterable[str], wire: WireRules) -> None:
    """Refuse, naming the field, wire settings the type's profile cannot use. Stored, they
    would stop the device-bridge taking any later catalog, every tenant's (it keeps the one
    it had rather than wire a type it cannot). Only the types a change brings are checked,
    as for params schemas."""
    errors = []
    for name in names:
        try:
            wire.check(catalog.device_types[name])
        except ValueError as exc:
            errors.append(FieldError(f"device_types.{name}.wire", str(exc)))
    if errors:
        raise InvalidCatalog("wire settings the wire profile cannot use", errors)


def _check_topics_free(
    catalog: Catalog, devices: list[Device], tenant: str, wire: WireRules
) -> None:
    """Refuse any of `devices` (of `tenant`, in the changed `catalog`) that would share an
    MQTT topic with another tenant's device.

    A raw-mapped type's templates can spell any topic: from another hardware id, another
    tenant's raw-mapped topic, or another profile's fixed one (`baton/v1/devices/x/{hardware_id}`
    with `status` is device x's status topic). A device sharing another tenant's topic would
    receive that one's requests and cancels, and its MQTT account could answer for it or
    say it is offline, whatever names it goes by. So a topic in use is taken, like a name.
    Within one tenant a shared topic is the tenant's own, as a shared hardware id is.

    Shared, not only equal: the fixed profiles' topics hold `+` for the execution id (device
    x subscribes to `baton/v1/devices/x/executions/+/request`), which the raw-mapped topic
    `baton/v1/devices/x/executions/{hardware_id}/request` falls under whatever its hardware
    id. The bridge's own subscriptions are wider still, one filter per profile and settings
    for all their devices (`baton/v1/devices/+/executions/+/response`), but they give nothing
    across tenants: what the bridge reads under one is attributed, through that profile and
    settings, to the device whose own topic it is (the wire id it names): the sender, one
    sharing the sender's topic (refused here across tenants) or none (`unknown-device`)."""
    if not devices:
        return
    # The changed devices' topics in the index, the others' streamed through it: a change
    # brings a few devices, the catalog may hold tens of thousands of others.
    mine = TopicIndex()
    whose: dict[str, str] = {}
    for device in devices:
        for topic in wire.topics(device, catalog.device_types[device.type]):
            mine.add(topic)
            whose.setdefault(topic, device.id)
    if not mine:
        return
    for other in catalog.devices:
        if other.tenant == tenant:
            continue
        for topic in wire.topics(other, catalog.device_types[other.type]):
            hit = mine.shared(topic)
            if hit is not None:
                raise CatalogConflict(
                    f"device {whose[hit]!r} would use MQTT topic {hit!r}, "
                    "which is taken: choose another hardware_id or topic"
                )


def _types(document: JSON) -> dict[str, JSON]:
    types: dict[str, JSON] = document.get("device_types") or {}
    return types


def _devices(document: JSON) -> list[JSON]:
    devices: list[JSON] = document.get("devices") or []
    return devices


def _wire_names(device: JSON) -> set[str]:
    """The names a stored device may go by on the wire, whatever its type's profile (a
    type can change profile later)."""
    return {str(name) for name in (device.get("id"), device.get("hardware_id")) if name}


def _owner(item: JSON | None) -> str | None:
    """Whose a stored device type or device is (None: there is none)."""
    if item is None:
        return None
    return str(item.get("tenant", DEFAULT_TENANT))


def _stamped(item: Any, tenant: str, where: str) -> Any:
    """`item` as stored for `tenant`: the tenant is Baton's to set, from the caller's key. A
    body naming another is refused; the default tenant is left out, as it always was."""
    if not isinstance(item, dict):
        return item  # not an object: `build` names the field
    claimed = item.get("tenant", tenant)
    if claimed != tenant:
        raise InvalidCatalog(
            "the tenant is set from your credentials",
            [FieldError(f"{where}.tenant", f"must be {tenant!r} (or left out)")],
        )
    stamped = {k: v for k, v in item.items() if k != "tenant"}
    if tenant != DEFAULT_TENANT:
        stamped["tenant"] = tenant
    return stamped


def _copy(value: JSON) -> JSON:
    return copy.deepcopy(value)
