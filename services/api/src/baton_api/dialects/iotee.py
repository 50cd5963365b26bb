"""The iotee device API (seed 003) under `/iotee`.

`POST /iotee/devices/:id/commands` `{command, device_type, params}` (`:id` is the device id
or its hardware id); `GET /iotee/devices/:id/commands?limit=`; `GET /iotee/commands/:id`;
`GET /iotee/commands?limit=`; `POST /iotee/commands/:id/retry`; and, for the admin role,
`DELETE /iotee/commands/:id` and `POST /iotee/commands/purge` `{older_than_days}`. Each
route needs the same role as its v1 equivalent (docs/security.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, admin, operator, viewer
from baton_api.dialects.common import (
    Execution,
    find_device,
    parse_execution_id,
    requested_name,
    submit,
    utc,
)
from baton_api.dialects.statuses import word
from baton_api.problems import invalid
from baton_api.schemas import MAX_PURGE_DAYS, STRICT_REQUEST, CommandName
from baton_api.service import ExecutionService
from baton_contracts.nats import SubmitCommand
from baton_domain.catalog import Catalog, Device
from baton_views import MAX_LIMIT, ExecutionFilter

PREFIX = "/iotee"
FIELDS = {"name": "command"}  # Baton's field names, as iotee says
DEFAULT_LIMIT = 100

IoteeStatus = Literal["pending", "published", "failed", "acknowledged", "completed", "timeout"]


def iso_millis(moment: datetime) -> str:
    """iotee's timestamps: `2025-12-17T10:30:00.000Z`."""
    return utc(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


class IoteeCommandRequest(BaseModel):
    model_config = STRICT_REQUEST

    command: CommandName = Field(description="command name (lock, unlock, ...)")
    device_type: str | None = Field(
        default=None, description="defaults to the device's configured type"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="command parameters")


class IoteePurgeRequest(BaseModel):
    model_config = STRICT_REQUEST

    older_than_days: float = Field(
        gt=0, le=MAX_PURGE_DAYS, description="delete commands older than this"
    )


class IoteeCommand(BaseModel):
    command_id: str
    hardware_id: str | None
    device_id: str
    device_type: str | None
    topic: str | None = Field(description="the MQTT topic (raw-mapped device types)")
    command: str
    status: IoteeStatus
    created_at: str

    @classmethod
    def of(cls, execution: Execution, catalog: Catalog) -> IoteeCommand:
        device = next((d for d in catalog.devices if d.id == execution.device_id), None)
        return cls(
            command_id=str(execution.id),
            hardware_id=device.wire_id if device else None,
            device_id=execution.device_id,
            device_type=device.type if device else None,
            topic=_topic(catalog, device) if device else None,
            command=requested_name(execution),
            status=word("iotee", execution.status),
            created_at=iso_millis(execution.created_at),
        )


def _topic(catalog: Catalog, device: Device) -> str | None:
    device_type = catalog.device_types[device.type]
    topic = device_type.wire.get("topic")
    if device_type.wire_profile != "raw-mapped" or not isinstance(topic, str):
        return None
    return topic.replace("{hardware_id}", device.wire_id)


class IoteeDeleted(BaseModel):
    success: bool = True
    deleted: str


class IoteeNewCommand(BaseModel):
    command_id: str
    status: IoteeStatus


class IoteeRetried(BaseModel):
    success: bool = True
    original_command_id: str
    new_command: IoteeNewCommand


class IoteePurged(BaseModel):
    success: bool = True
    cutoff_date: str
    deleted: int


Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="maximum records")]


class IoteeDeviceController(Controller):
    path = "/devices/{device_ref:str}/commands"
    tags = ["iotee"]

    @post("/", status_code=201, guards=[operator])
    async def iotee_send_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog: NamedDependency[Catalog],
        device_ref: FromPath[str],
        data: JSONBody[IoteeCommandRequest],
    ) -> IoteeCommand:
        """Send a command to a device (by device id or hardware id)."""
        device = find_device(catalog, device_ref)
        if data.device_type is not None and data.device_type != device.type:
            raise invalid("device_type", f"the device's type is {device.type!r}")
        command = SubmitCommand(
            device_id=device.id,
            name=data.command,
            params=data.params,
            principal=caller.principal,
            tenant=caller.tenant,
            source="iotee",
        )
        submitted = await submit(service, command, None, FIELDS)
        return IoteeCommand.of(submitted.execution, catalog)

    @get("/", guards=[viewer])
    async def iotee_device_commands(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog: NamedDependency[Catalog],
        device_ref: FromPath[str],
        limit: Limit = DEFAULT_LIMIT,
    ) -> list[IoteeCommand]:
        """The device's command history, newest first."""
        device = find_device(catalog, device_ref)
        where = ExecutionFilter(tenant=caller.tenant, device_id=device.id, include_ephemeral=True)
        page = await service.list(where, "newest", limit)
        return [IoteeCommand.of(e, catalog) for e in page.items]


class IoteeCommandController(Controller):
    path = "/commands"
    tags = ["iotee"]

    @get("/", guards=[viewer])
    async def iotee_list_commands(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog: NamedDependency[Catalog],
        limit: Limit = DEFAULT_LIMIT,
    ) -> list[IoteeCommand]:
        """Every device's commands (the caller's tenant's), newest first."""
        page = await service.list(
            ExecutionFilter(tenant=caller.tenant, include_ephemeral=True), "newest", limit
        )
        return [IoteeCommand.of(e, catalog) for e in page.items]

    @get("/{command_id:str}", guards=[viewer])
    async def iotee_get_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog: NamedDependency[Catalog],
        command_id: FromPath[str],
    ) -> IoteeCommand:
        """One command; 404 when there is none."""
        execution = await service.get(parse_execution_id(command_id), False, caller.tenant)
        return IoteeCommand.of(execution, catalog)

    @delete("/{command_id:str}", status_code=200, guards=[admin])
    async def iotee_delete_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        command_id: FromPath[str],
    ) -> IoteeDeleted:
        """Admin: delete a command (one still running is canceled first)."""
        execution_id = parse_execution_id(command_id)
        await service.delete(execution_id, "deleted by an admin (iotee)", caller)
        return IoteeDeleted(deleted=command_id)

    @post("/{command_id:str}/retry", status_code=200, guards=[operator])
    async def iotee_retry_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        command_id: FromPath[str],
    ) -> IoteeRetried:
        """A new command made from an ended one, linked to it."""
        new = (await service.retry(parse_execution_id(command_id), caller, "iotee")).execution
        return IoteeRetried(
            original_command_id=command_id,
            new_command=IoteeNewCommand(
                command_id=str(new.id),
                status=word("iotee", new.status),
            ),
        )

    @post("/purge", status_code=200, guards=[admin])
    async def iotee_purge_commands(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        data: JSONBody[IoteePurgeRequest],
    ) -> IoteePurged:
        """Admin: delete every command created more than `older_than_days` ago."""
        cutoff = datetime.now(UTC) - timedelta(days=data.older_than_days)
        reason = f"purged: older than {data.older_than_days:g} days"
        deleted = await service.purge(cutoff, reason, caller.principal, tenant=caller.tenant)
        return IoteePurged(cutoff_date=iso_millis(cutoff), deleted=deleted)
