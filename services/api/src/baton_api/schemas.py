"""HTTP request and response schemas of the Baton v1 API.

Separate from the wire models (baton_contracts): the HTTP contract can evolve (or stay put)
independently of what services say to each other over NATS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from baton_contracts.nats import ExecutionState
from baton_domain.catalog import MAX_TTL_SECONDS, NAME_PATTERN
from baton_views import ExecutionPage, ExecutionView


class RequestSchema(BaseModel):
    # Unknown fields are refused, so a typo ("parms") is an error instead of a silent default.
    model_config = ConfigDict(extra="forbid")


class SubmitRequest(RequestSchema):
    name: str = Field(pattern=NAME_PATTERN, description="command name, from the device's type")
    params: dict[str, Any] = Field(
        default_factory=dict, description="checked against the command's JSON Schema"
    )
    ttl: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="seconds until the execution expires or times out; default per command",
    )
    ephemeral: bool = Field(
        default=False,
        description="left out of lists unless `show=ALL`; purged after the retention period",
    )


class CancelRequest(RequestSchema):
    reason: str | None = Field(default=None, min_length=1, max_length=1000)


class PurgeRequest(RequestSchema):
    older_than_days: float = Field(gt=0, description="delete executions created before then")


class PurgeOut(BaseModel):
    deleted: int
    cutoff: datetime


class LogEntryOut(BaseModel):
    received_at: datetime
    status: str
    payload: dict[str, Any]


class ExecutionOut(BaseModel):
    id: UUID
    device_id: str
    name: str
    params: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    ttl: int
    deadline: datetime
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    ephemeral: bool
    retry_of: UUID | None = Field(description="the execution this one retries")
    retries: list[UUID] = Field(description="executions made to retry this one")
    verification: dict[str, Any] | None = Field(
        default=None,
        description="whether the device's reported state showed the change the command "
        "declares: {status: PENDING|SUCCEEDED|FAILED|CANCELED, completed_at, error}",
    )

    @classmethod
    def of(cls, execution: ExecutionView | ExecutionState) -> ExecutionOut:
        """From the views, or from the dispatcher's reply (the same fields)."""
        return cls(
            id=execution.id,
            device_id=execution.device_id,
            name=execution.name,
            params=execution.params,
            status=str(execution.status),
            created_at=execution.created_at,
            updated_at=execution.updated_at,
            ttl=execution.ttl,
            deadline=execution.deadline,
            result=execution.result,
            error=execution.error,
            ephemeral=execution.ephemeral,
            retry_of=execution.retry_of,
            retries=list(execution.retries),
            verification=execution.verification,
        )


class ExecutionWithLogOut(ExecutionOut):
    """`?expand=log`: the execution with every device answer, in arrival order."""

    log: list[LogEntryOut]

    @classmethod
    def with_log(cls, execution: ExecutionView) -> ExecutionWithLogOut:
        base = ExecutionOut.of(execution).model_dump()
        log = [
            LogEntryOut(received_at=e.received_at, status=e.status, payload=e.payload)
            for e in execution.log or []
        ]
        return cls(**base, log=log)


class ExecutionPageOut(BaseModel):
    items: list[ExecutionOut]
    total_count: int = Field(description="rows matching the filters, over all pages")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")

    @classmethod
    def of(cls, page: ExecutionPage) -> ExecutionPageOut:
        return cls(
            items=[ExecutionOut.of(e) for e in page.items],
            total_count=page.total_count,
            next_cursor=page.next_cursor,
        )


class FieldProblemOut(BaseModel):
    field: str
    reason: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details, as every error is answered (for the OpenAPI document)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[FieldProblemOut] | None = None


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
