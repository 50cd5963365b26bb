"""The catalog routes of Baton v1: device types, devices, and the whole document.

Reads come from the stored catalog (the event store, as the dispatcher last wrote it);
changes go to the dispatcher, which checks each against the whole catalog and stores it.
Reading it needs the viewer role, changing it the admin role; each caller sees and changes
its own tenant's part only (another tenant's device type or device is not found).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, admin, viewer
from baton_api.device_accounts import AccountsUnavailableError, DeviceAccounts, FixedAccounts
from baton_api.gateway import CommandGateway
from baton_api.moved import MOVING, moved_devices
from baton_api.problems import ProblemError, problem
from baton_api.schemas import FILTER_PATTERN, STRICT_REQUEST
from baton_contracts.accounts import device_username
from baton_contracts.nats import CatalogChange
from baton_domain.application import Executions
from baton_domain.catalog import Catalog, Device, DeviceType, DeviceTypeName
from baton_domain.delivery import DeviceQueue
from baton_domain.errors import DomainError, UnknownDevice, UnknownDeviceType
from baton_platform.commands import catalog_edit
from baton_platform.problems import problem_for
from baton_views import DEFAULT_LIMIT, MAX_LIMIT, InvalidQueryError

log = logging.getLogger(__name__)


class CatalogService:
    def __init__(
        self,
        executions: Executions,
        gateway: CommandGateway,
        accounts: DeviceAccounts | None = None,
    ) -> None:
        self._executions = executions
        self._gateway = gateway
        self.accounts = accounts or FixedAccounts()  # devices' MQTT accounts

    async def catalog(self, tenant: str) -> Catalog:
        """The part of the catalog `tenant` sees."""
        return await asyncio.to_thread(lambda: self._executions.catalog.of(tenant))

    async def device(self, device_id: str, tenant: str) -> Device:
        """The device, or a 404 problem (unknown-device) if `tenant` has none of that id."""
        stored = await asyncio.to_thread(lambda: self._executions.catalog)
        try:
            return stored.device(device_id, tenant)  # no copy of the tenant's part for one
        except UnknownDevice as exc:
            raise _missing(exc) from None

    async def devices(
        self, tenant: str, device_type: str | None, limit: int, cursor: str | None
    ) -> DevicePage:
        """A page of the tenant's devices (of `device_type`, if given), by id, each with its
        presence and queue; `next_cursor` while more follow."""
        after = _after(cursor)
        catalog = await self.catalog(tenant)
        matching = sorted(
            (d for d in catalog.devices if device_type in (None, d.type)), key=lambda d: d.id
        )
        page = [d for d in matching if after is None or d.id > after][: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        items = await asyncio.to_thread(lambda: [self._with_presence(d, catalog) for d in page])
        next_cursor = _cursor(page[-1].id) if more else None
        return DevicePage(items=items, total_count=len(matching), next_cursor=next_cursor)

    async def device_status(self, device_id: str, tenant: str) -> DeviceOut:
        """The device with its presence and queue, or a 404 problem."""
        device = await self.device(device_id, tenant)
        catalog = await self.catalog(tenant)
        return await asyncio.to_thread(self._with_presence, device, catalog)

    def _with_presence(self, device: Device, catalog: Catalog) -> DeviceOut:
        # The device's queue as stored by the dispatcher (DeviceQueue): one read of its
        # newest events, the library's cache keeping the rest.
        queue = self._executions.queue_of(device.id)
        device_type = catalog.device_types.get(device.type)
        return DeviceOut(
            **device.model_dump(),
            presence=_presence(queue),
            last_seen=queue.presence_at,
            queue=QueueOut(
                waiting=len(queue.waiting),
                in_flight=len(queue.in_flight),
                cooldowns=_cooldowns(queue, device_type, self._executions.clock()),
            ),
        )

    async def remove_device(self, device_id: str, by: Identity) -> None:
        """Take the device's MQTT account back first, then remove it from the catalog: a
        device that is gone keeps no way onto the broker. If the broker cannot be asked,
        nothing is removed (503); if the removal then fails, the device stays with no
        account, and `POST .../credentials` gives it a new one."""
        await self.device(device_id, by.tenant)  # 404 for a device the tenant has not
        await self.revoke(device_id)
        await self.change(CatalogChange(op="remove-device", device_id=device_id), by)
        await self._revoke_again([device_id])

    def _moved_by(self, change: CatalogChange) -> list[str]:
        """The tenant's devices `change` drops or moves to other topics, tried on the stored
        catalog with the dispatcher's own checks; none for a change it will refuse (bad
        input changes nothing, its accounts included)."""
        try:
            before, after = self._executions.preview_catalog_change(catalog_edit(change))
        except DomainError:
            return []
        return moved_devices(before, after, change.tenant)

    async def revoke(self, device_id: str) -> None:
        """Take the device's MQTT account back; 503 if the broker cannot be asked."""
        try:
            await self.accounts.revoke(device_username(device_id))
        except AccountsUnavailableError as exc:
            raise ProblemError(problem(503, "broker-unavailable", str(exc))) from None

    async def change(self, change: CatalogChange, by: Identity) -> dict[str, Any]:
        change = change.model_copy(update={"tenant": by.tenant, "principal": by.principal})
        moved = []
        if change.op in MOVING:
            # As removing a device does: if the broker cannot be asked, the change is not
            # asked for (accounts taken back before the broker failed stay taken back).
            moved = await asyncio.to_thread(self._moved_by, change)
            for device_id in moved:
                await self.revoke(device_id)
        reply = await self._gateway.change_catalog(change)
        if reply.problem is not None:
            raise ProblemError(reply.problem)
        await self._revoke_again(moved)
        return reply.document or {}

    async def _revoke_again(self, device_ids: list[str]) -> None:
        """Once more, now the change is stored: credentials issued meanwhile were issued on
        the old topics (CredentialService.issue checks too, from its side)."""
        for device_id in device_ids:
            try:
                await self.accounts.revoke(device_username(device_id))
            except AccountsUnavailableError as exc:
                log.warning("MQTT account of %s not taken back again: %s", device_id, exc)


class DeviceTypeOut(DeviceType):
    name: str


class DeviceTypePage(BaseModel):
    items: list[DeviceTypeOut]
    total_count: int


class QueueOut(BaseModel):
    waiting: int = Field(description="executions waiting to be sent (delivery policy, offline)")
    in_flight: int = Field(description="executions sent and not yet ended")
    cooldowns: dict[str, datetime] = Field(
        description="command -> when its cooldown ends, for commands still cooling down"
    )


class DeviceOut(Device):
    presence: Literal["online", "offline", "unknown"] = Field(
        description="as the device last reported (`unknown`: never; treated as online)"
    )
    last_seen: datetime | None = Field(
        description="when its presence last changed: went online, or was last seen (offline)"
    )
    queue: QueueOut


# What GET adds to a device: the record of what it is doing, not part of the catalog. A write
# drops them, so what GET gave can be sent back as it is (GET, edit, PUT).
READ_ONLY_DEVICE_FIELDS = frozenset(DeviceOut.model_fields) - frozenset(Device.model_fields)


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total_count: int = Field(description="devices matching the filter, over all pages")
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


DeviceTypeFilter = Annotated[
    str | None,
    QueryParameter(
        name="type", pattern=FILTER_PATTERN, description="only devices of this device type"
    ),
]
DeviceLimit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
DeviceCursor = Annotated[
    str | None, QueryParameter(description="`next_cursor` of the previous page")
]


def _presence(queue: DeviceQueue) -> Literal["online", "offline", "unknown"]:
    if queue.online is None:
        return "unknown"
    return "online" if queue.online else "offline"


def _cooldowns(
    queue: DeviceQueue, device_type: DeviceType | None, now: datetime
) -> dict[str, datetime]:
    if device_type is None:
        return {}
    ends = {}
    for name, spec in device_type.commands.items():
        last = queue.last_run.get(name)
        if spec.cooldown and last is not None:
            end = last + timedelta(seconds=spec.cooldown)
            if end > now:
                ends[name] = end.astimezone(UTC)
    return ends


# A device cursor names its list, so a cursor of another list, or base64 that happens to
# decode, is refused rather than read as "after" some id.
_DEVICES_CURSOR = "devices"


def _cursor(device_id: str) -> str:
    raw = json.dumps([_DEVICES_CURSOR, device_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str | None) -> str | None:
    """The device id a cursor continues after; a cursor this list did not give is a 422
    `invalid-query`, as for the executions' lists."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, device_id = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        kind = device_id = None
    if kind != _DEVICES_CURSOR or not isinstance(device_id, str) or not device_id:
        raise InvalidQueryError("cursor", "not a cursor returned by this API")
    return device_id


class NamedDeviceType(BaseModel):
    model_config = STRICT_REQUEST

    name: DeviceTypeName = Field(description="letters, digits and `_.-`, a letter first")
    definition: dict[str, Any] = Field(
        default_factory=dict, description="commands, ttl, delivery, wire_profile, ..."
    )


def _type_out(name: str, device_type: DeviceType) -> DeviceTypeOut:
    return DeviceTypeOut(name=name, **device_type.model_dump())


def _missing(exc: UnknownDevice | UnknownDeviceType) -> ProblemError:
    return ProblemError(problem_for(exc))


class CatalogController(Controller):
    path = "/catalog"
    tags = ["catalog"]

    @get("/", guards=[viewer])
    async def get_catalog(
        self, caller: NamedDependency[Identity], catalog_service: NamedDependency[CatalogService]
    ) -> dict[str, Any]:
        """The whole catalog document (what `baton catalog export` writes)."""
        catalog = await catalog_service.catalog(caller.tenant)
        return catalog.model_dump(mode="json", exclude_defaults=True)

    @put("/", guards=[admin])
    async def import_catalog(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        """Admin: replace the whole catalog (`baton catalog import`); checked first."""
        return await catalog_service.change(CatalogChange(op="import", document=data), caller)


class DeviceTypeController(Controller):
    path = "/device-types"
    tags = ["catalog"]

    @get("/", guards=[viewer])
    async def list_device_types(
        self, caller: NamedDependency[Identity], catalog_service: NamedDependency[CatalogService]
    ) -> DeviceTypePage:
        catalog = await catalog_service.catalog(caller.tenant)
        items = [_type_out(n, t) for n, t in sorted(catalog.device_types.items())]
        return DeviceTypePage(items=items, total_count=len(items))

    @get("/{name:str}", guards=[viewer])
    async def get_device_type(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        name: FromPath[str],
    ) -> DeviceTypeOut:
        catalog = await catalog_service.catalog(caller.tenant)
        if name not in catalog.device_types:
            raise _missing(UnknownDeviceType(name))
        return _type_out(name, catalog.device_types[name])

    @post("/", status_code=201, guards=[admin])
    async def create_device_type(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        data: JSONBody[NamedDeviceType],
    ) -> DeviceTypeOut:
        """Admin: add a device type; 409 if one has the name (PUT replaces)."""
        return await self._change(
            catalog_service, caller, "create-device-type", data.name, data.definition
        )

    @put("/{name:str}", guards=[admin])
    async def update_device_type(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        name: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> DeviceTypeOut:
        """Admin: replace a device type's definition (or add it)."""
        return await self._change(catalog_service, caller, "put-device-type", name, data)

    @delete("/{name:str}", status_code=204, guards=[admin])
    async def delete_device_type(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        name: FromPath[str],
    ) -> None:
        """Admin: remove a device type no device has; 409 while devices have it."""
        await catalog_service.change(CatalogChange(op="remove-device-type", name=name), caller)

    @staticmethod
    async def _change(
        service: CatalogService,
        caller: NamedDependency[Identity],
        op: Literal["create-device-type", "put-device-type"],
        name: str,
        definition: dict[str, Any],
    ) -> DeviceTypeOut:
        change = CatalogChange(op=op, name=name, definition=definition)
        document = await service.change(change, caller)
        return _type_out(name, DeviceType.model_validate(document["device_types"][name]))


class DeviceController(Controller):
    path = "/devices"
    tags = ["catalog"]

    @get("/", guards=[viewer])
    async def list_devices(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        device_type: DeviceTypeFilter = None,
        limit: DeviceLimit = DEFAULT_LIMIT,
        cursor: DeviceCursor = None,
    ) -> DevicePage:
        """The devices by id, each with its presence, last seen and queue; `type` filters."""
        return await catalog_service.devices(caller.tenant, device_type, limit, cursor)

    @get("/{device_id:str}", guards=[viewer])
    async def get_device(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        device_id: FromPath[str],
    ) -> DeviceOut:
        """The device with its presence, last seen and queue."""
        return await catalog_service.device_status(device_id, caller.tenant)

    @post("/", status_code=201, guards=[admin])
    async def create_device(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        data: JSONBody[dict[str, Any]],
    ) -> Device:
        """Admin: add a device: `{id, type, hardware_id?, labels?}`; 409 if one has the id
        (PUT replaces). What GET adds (presence, last_seen, queue) is read-only and ignored."""
        return await self._change(catalog_service, caller, "create-device", data)

    @put("/{device_id:str}", guards=[admin])
    async def update_device(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        device_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> Device:
        """Admin: replace a device (its id comes from the path), or add it."""
        return await self._change(catalog_service, caller, "put-device", {**data, "id": device_id})

    @delete("/{device_id:str}", status_code=204, guards=[admin])
    async def delete_device(
        self,
        caller: NamedDependency[Identity],
        catalog_service: NamedDependency[CatalogService],
        device_id: FromPath[str],
    ) -> None:
        """Admin: remove a device, and its MQTT account. Its executions stay; new commands to
        it get 404."""
        await catalog_service.remove_device(device_id, caller)

    @staticmethod
    async def _change(
        service: CatalogService,
        caller: NamedDependency[Identity],
        op: Literal["create-device", "put-device"],
        device: dict[str, Any],
    ) -> Device:
        device = {k: v for k, v in device.items() if k not in READ_ONLY_DEVICE_FIELDS}
        document = await service.change(CatalogChange(op=op, device=device), caller)
        stored = next(d for d in document["devices"] if d["id"] == device.get("id"))
        return Device.model_validate(stored)
