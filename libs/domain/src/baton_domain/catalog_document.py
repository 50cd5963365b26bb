"""The catalog as managed data: one event-sourced stream holding the catalog document.

Device types and devices are put and removed by events on this stream, in the same event
store as the executions, so the catalog is replayed and backed up with everything else.
Every change is checked by building the whole `Catalog` it would give, before any event
exists: a wrong definition is refused naming the field, and nothing is half-applied.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from pydantic import ValidationError

from baton_domain.catalog import CHANGE, DEVICE_TYPE_PATTERN, Catalog, CatalogError
from baton_domain.errors import (
    CatalogConflict,
    FieldError,
    InvalidCatalog,
    UnknownDevice,
    UnknownDeviceType,
)

_T = "baton.catalog.v1"
CATALOG_ID = uuid5(UUID("4a3c2e1d-7b6f-4f8e-9c0a-1d2e3f405162"), "catalog")
JSON = dict[str, Any]


def document_of(catalog: Catalog) -> JSON:
    """The catalog as plain JSON data (what the events carry and export writes)."""
    return catalog.model_dump(mode="json", exclude_defaults=True)


def build(document: JSON, root: str = "", *, stored: bool = False) -> Catalog:
    """The Catalog a document gives, or InvalidCatalog naming each wrong field.

    Strict (no `"30"` for 30, no `true` for 1, device-type names checked) for every change,
    from HTTP, NATS or import; `stored=True` only to read back what is already stored, which
    an older, more lenient Baton may have accepted."""
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


class CatalogDocument(Aggregate):
    TOPIC = f"{_T}:CatalogDocument"

    class Created(Aggregate.Created):
        TOPIC = f"{_T}:Created"  # required by the library for pinned topics; never emitted

    class Started(Aggregate.Created):
        TOPIC = f"{_T}:Started"
        document: JSON

    class Imported(Aggregate.Event):
        TOPIC = f"{_T}:Imported"
        document: JSON

    class DeviceTypePut(Aggregate.Event):
        TOPIC = f"{_T}:DeviceTypePut"
        name: str
        definition: JSON

    class DeviceTypeRemoved(Aggregate.Event):
        TOPIC = f"{_T}:DeviceTypeRemoved"
        name: str

    class DevicePut(Aggregate.Event):
        TOPIC = f"{_T}:DevicePut"
        device: JSON

    class DeviceRemoved(Aggregate.Event):
        TOPIC = f"{_T}:DeviceRemoved"
        device_id: str

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

    def import_document(self, document: JSON) -> None:
        build(document)
        self._imported(document=document)

    def create_device_type(self, name: str, definition: JSON) -> None:
        """Add a device type; CatalogConflict if one has the name (put replaces)."""
        if name in self.document.get("device_types", {}):
            raise CatalogConflict(f"device type {name!r} already exists; PUT replaces it")
        self.put_device_type(name, definition)

    def put_device_type(self, name: str, definition: JSON) -> None:
        _check_type_name(name)
        candidate = _copy(self.document)
        candidate.setdefault("device_types", {})[name] = definition
        build(candidate)
        self._device_type_put(name=name, definition=definition)

    def remove_device_type(self, name: str) -> None:
        if name not in self.document.get("device_types", {}):
            raise UnknownDeviceType(name)
        users = [d["id"] for d in self.document.get("devices", []) if d["type"] == name]
        if users:
            raise CatalogConflict(
                f"device type {name!r} still has devices: {', '.join(users[:10])}"
            )
        self._device_type_removed(name=name)

    def create_device(self, device: JSON) -> None:
        """Add a device; CatalogConflict if one has its id (put replaces)."""
        if any(d.get("id") == device.get("id") for d in self.document.get("devices", [])):
            raise CatalogConflict(f"device {device.get('id')!r} already exists; PUT replaces it")
        self.put_device(device)

    def put_device(self, device: JSON) -> None:
        candidate = _copy(self.document)
        devices = [d for d in candidate.get("devices", []) if d.get("id") != device.get("id")]
        candidate["devices"] = [*devices, device]
        build(candidate)
        self._device_put(device=device)

    def remove_device(self, device_id: str) -> None:
        if not any(d["id"] == device_id for d in self.document.get("devices", [])):
            raise UnknownDevice(device_id)
        self._device_removed(device_id=device_id)

    # --- events --------------------------------------------------------------------------------

    @event(Imported)
    def _imported(self, document: JSON) -> None:
        self.document = _copy(document)

    @event(DeviceTypePut)
    def _device_type_put(self, name: str, definition: JSON) -> None:
        self.document.setdefault("device_types", {})[name] = _copy(definition)

    @event(DeviceTypeRemoved)
    def _device_type_removed(self, name: str) -> None:
        del self.document["device_types"][name]

    @event(DevicePut)
    def _device_put(self, device: JSON) -> None:
        devices = [d for d in self.document.get("devices", []) if d["id"] != device["id"]]
        # A device keeps its place when it is replaced, so exports stay stable.
        existing = [d["id"] for d in self.document.get("devices", [])]
        if device["id"] in existing:
            devices.insert(existing.index(device["id"]), _copy(device))
        else:
            devices.append(_copy(device))
        self.document["devices"] = devices

    @event(DeviceRemoved)
    def _device_removed(self, device_id: str) -> None:
        self.document["devices"] = [d for d in self.document["devices"] if d["id"] != device_id]


def _check_type_name(name: str) -> None:
    # Checked before the whole catalog, so the error names the field the caller sent.
    if re.fullmatch(DEVICE_TYPE_PATTERN, name) is None:
        raise InvalidCatalog(
            f"device type name {name!r} is not valid",
            [FieldError("name", f"must match {DEVICE_TYPE_PATTERN}")],
        )


def _copy(value: JSON) -> JSON:
    return copy.deepcopy(value)
