"""EMQX Fleets commands (seed 001) under `/fleets`: actions on things.

`POST /fleets/api/v1/commands` `{thingId, action, params, ttl}` submits `action` to the
device `thingId` (an action the thing's type does not declare is accepted where the type
has `allow_undeclared: true`); `GET /fleets/api/v1/commands/{executionId}` answers the
execution; `GET /fleets/api/v1/commands?thingId=&action=&status=&page=&limit=` lists them,
newest first, in EMQX's `{data, meta}` page shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, operator, viewer
from baton_api.dialects.common import (
    Execution,
    parse_execution_id,
    requested_name,
    submit,
    utc,
)
from baton_api.dialects.statuses import known_words, statuses_for, word
from baton_api.problems import invalid
from baton_api.schemas import STRICT_REQUEST, CommandName
from baton_api.service import ExecutionService
from baton_contracts.nats import SubmitCommand
from baton_domain.catalog import MAX_TTL_SECONDS
from baton_domain.statuses import ExecutionStatus
from baton_views import MAX_LIMIT, ExecutionFilter

PREFIX = "/fleets"
FIELDS = {"name": "action", "device_id": "thingId"}  # Baton's field names, as Fleets says
DEFAULT_PAGE_SIZE = 100
# The seed sets no bound; int32's keeps `(page - 1) * limit` far inside SQLite's integers.
MAX_PAGE = 2**31 - 1

FleetsStatus = Literal["SENT", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"]


class FleetsCommandRequest(BaseModel):
    model_config = STRICT_REQUEST

    thingId: str = Field(min_length=1, description="the thing (device) to run the action on")  # noqa: N815
    action: CommandName = Field(description="action name from the Thing Type")
    params: dict[str, Any] = Field(default_factory=dict, description="input parameters")
    ttl: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="seconds to wait for the device before the execution is TIMED_OUT",
    )


class FleetsExecution(BaseModel):
    executionId: str  # noqa: N815
    thingId: str  # noqa: N815
    action: str
    params: dict[str, Any]
    ttl: int
    status: FleetsStatus
    createdAt: datetime  # noqa: N815
    updatedAt: datetime  # noqa: N815
    result: dict[str, Any] | None = Field(description="the device's SUCCEEDED response")
    error: dict[str, Any] | None = Field(description="the device's FAILED/REJECTED response")

    @classmethod
    def of(cls, execution: Execution) -> FleetsExecution:
        return cls(
            executionId=str(execution.id),
            thingId=execution.device_id,
            action=requested_name(execution),
            params=execution.params,
            ttl=execution.ttl,
            status=word("fleets", execution.status),
            createdAt=utc(execution.created_at),
            updatedAt=utc(execution.updated_at),
            result=execution.result,
            error=execution.error,
        )


class FleetsPageMeta(BaseModel):
    page: int
    limit: int
    count: int = Field(description="executions matching the filters, over all pages")
    hasnext: bool


class FleetsPage(BaseModel):
    data: list[FleetsExecution]
    meta: FleetsPageMeta


Statuses = Annotated[
    list[str] | None,
    QueryParameter(description="Fleets status words; repeatable and/or comma-separated"),
]
Page = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="1-based page number")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


class FleetsCommandController(Controller):
    path = "/api/v1/commands"
    tags = ["fleets"]

    @post("/", status_code=201, guards=[operator])
    async def fleets_send_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        data: JSONBody[FleetsCommandRequest],
    ) -> FleetsExecution:
        """Send a command to a thing; the answer carries the `executionId`."""
        command = SubmitCommand(
            device_id=data.thingId,
            name=data.action,
            params=data.params,
            ttl=data.ttl,
            principal=caller.principal,
            tenant=caller.tenant,
            source="fleets",
        )
        submitted = await submit(service, command, None, FIELDS)
        return FleetsExecution.of(submitted.execution)

    @get("/{execution_id:str}", guards=[viewer])
    async def fleets_get_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[str],
    ) -> FleetsExecution:
        """One execution: status, parameters and the device's response."""
        execution = await service.get(parse_execution_id(execution_id), False, caller.tenant)
        return FleetsExecution.of(execution)

    @get("/", guards=[viewer])
    async def fleets_list_commands(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        thing_id: Annotated[str | None, QueryParameter(name="thingId")] = None,
        action: Annotated[str | None, QueryParameter()] = None,
        status: Statuses = None,
        page: Page = 1,
        limit: Limit = DEFAULT_PAGE_SIZE,
    ) -> FleetsPage:
        """Executions, newest first, filtered by thing, action and status."""
        where = ExecutionFilter(
            tenant=caller.tenant,
            statuses=_statuses(status or []),
            name=action,
            device_id=thing_id,
            include_ephemeral=True,
        )
        found = await service.list(where, "newest", limit, offset=(page - 1) * limit)
        return FleetsPage(
            data=[FleetsExecution.of(e) for e in found.items],
            meta=FleetsPageMeta(
                page=page,
                limit=limit,
                count=found.total_count,
                hasnext=page * limit < found.total_count,
            ),
        )


def _statuses(values: list[str]) -> frozenset[ExecutionStatus]:
    words = [part.strip() for value in values for part in value.split(",") if part.strip()]
    try:
        return statuses_for("fleets", words)
    except KeyError as exc:
        raise invalid(
            "status", f"unknown status {exc.args[0]}; one of: {', '.join(known_words('fleets'))}"
        ) from None
