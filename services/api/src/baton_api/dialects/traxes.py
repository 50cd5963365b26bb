"""Traxes "Connect Command API" (seed 000) under `/traxes`: typed commands on an entity.

`POST /traxes/v1/entities/{entityId}/commands?ignoreCooldown=` with `{type, value}` sends
the catalog command named exactly like `type` to the device `entityId`, with `value` as
`params.value` (no params when `value` is null); `ignoreCooldown` goes to the dispatcher as
`SubmitCommand.ignore_cooldown`. `GET .../commands/{commandId}` (a Baton addition the seed
does not document) answers the same Command later, so a client can follow its status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, operator, viewer
from baton_api.dialects.common import (
    Execution,
    execution_not_found,
    parse_execution_id,
    requested_name,
    submit,
    utc,
)
from baton_api.dialects.statuses import word
from baton_api.problems import invalid
from baton_api.schemas import STRICT_REQUEST
from baton_api.service import ExecutionService
from baton_contracts.nats import SubmitCommand
from baton_domain.statuses import ExecutionStatus

PREFIX = "/traxes"
# Baton's field names in the catalog's problems, as this dialect calls them.
FIELDS = {"name": "type", "params.value": "value", "params": "value"}

CommandType = Literal[
    "Disconnect", "LimitFeedIn", "Reset", "StartCharging", "StopCharging", "StopFeedIn"
]
COMMAND_TYPES: tuple[str, ...] = CommandType.__args__  # type: ignore[attr-defined]

# `error.title` of an execution that ended without success, by Baton status.
ERROR_TITLES = {
    ExecutionStatus.FAILED: "Command failed",
    ExecutionStatus.REJECTED: "Command rejected by the entity",
    ExecutionStatus.TIMED_OUT: "Command timed out",
    ExecutionStatus.EXPIRED: "Command expired before it was sent",
    ExecutionStatus.CANCELED: "Command canceled",
}


class TraxesCommandRequest(BaseModel):
    """Connect.Service.Command.App.Models.V1.CommandRequest"""

    model_config = STRICT_REQUEST

    type: CommandType | None = Field(default=None, description="the type of the command")
    value: str | None = Field(default=None, description="the value for the command")


class TraxesCommandError(BaseModel):
    title: str | None
    description: str | None


class TraxesCommandVerification(BaseModel):
    status: Literal["Pending", "Succeeded", "Failed", "Canceled"]
    completedAt: datetime | None  # noqa: N815 - the seed's field name
    error: TraxesCommandError | None


class TraxesCommand(BaseModel):
    """Connect.Service.Command.App.Models.V1.Command"""

    entityId: str | None  # noqa: N815
    id: UUID
    status: Literal["Canceled", "Failed", "Pending", "Sent", "Succeeded", "Triggered"]
    triggerTime: datetime  # noqa: N815
    type: str
    value: str | None
    error: TraxesCommandError | None
    verification: TraxesCommandVerification | None

    @classmethod
    def of(cls, execution: Execution) -> TraxesCommand:
        status = ExecutionStatus(execution.status)
        value = execution.params.get("value")
        return cls(
            entityId=execution.device_id,
            id=execution.id,
            status=word("traxes", status),
            triggerTime=utc(execution.created_at),
            type=requested_name(execution),
            value=None if value is None else str(value),
            error=_error(status, execution.error),
            verification=_verification(execution.verification),
        )


def _error(status: ExecutionStatus, error: dict[str, Any] | None) -> TraxesCommandError | None:
    if status not in ERROR_TITLES:
        return None
    description = None
    if error:
        message = error.get("message")
        description = str(message) if message is not None else str(error)
    return TraxesCommandError(title=ERROR_TITLES[status], description=description)


_VERIFICATION_WORDS = {
    "PENDING": "Pending",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "CANCELED": "Canceled",
}


def _verification(found: dict[str, Any] | None) -> TraxesCommandVerification | None:
    """ExecutionState.verification ({status, completed_at, error {title, description}})."""
    if not found:
        return None
    error = found.get("error")
    return TraxesCommandVerification(
        status=_VERIFICATION_WORDS.get(str(found.get("status")), "Pending"),
        completedAt=found.get("completed_at"),
        error=TraxesCommandError(title=error.get("title"), description=error.get("description"))
        if isinstance(error, dict)
        else None,
    )


IgnoreCooldown = Annotated[
    bool,
    QueryParameter(
        name="ignoreCooldown",
        description="ignore the entity's cooldowns (the command may then not be executed)",
    ),
]


class TraxesCommandController(Controller):
    path = "/v1/entities/{entity_id:str}/commands"
    tags = ["traxes"]

    @post("/", status_code=201, guards=[operator])
    async def traxes_send_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        entity_id: FromPath[str],
        data: JSONBody[TraxesCommandRequest],
        ignore_cooldown: IgnoreCooldown = False,
    ) -> TraxesCommand:
        """Sends a new Command for immediate execution and returns the new Command."""
        if data.type is None:
            raise invalid("type", f"is required: one of {', '.join(COMMAND_TYPES)}")
        command = SubmitCommand(
            device_id=entity_id,
            name=data.type,
            params={} if data.value is None else {"value": data.value},
            principal=caller.principal,
            tenant=caller.tenant,
            source="traxes",
            ignore_cooldown=ignore_cooldown,
        )
        submitted = await submit(service, command, None, FIELDS)
        return TraxesCommand.of(submitted.execution)

    @get("/{command_id:str}", guards=[viewer])
    async def traxes_get_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        entity_id: FromPath[str],
        command_id: FromPath[str],
    ) -> TraxesCommand:
        """The Command as it is now (Baton's addition: the seed documents only the POST)."""
        execution = await service.get(parse_execution_id(command_id), False, caller.tenant)
        if execution.device_id != entity_id:
            raise execution_not_found(command_id)
        return TraxesCommand.of(execution)
