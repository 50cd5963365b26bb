"""HTTP request and response schemas of the Baton v1 API.

Separate from the wire models (baton_contracts): the HTTP contract can evolve (or stay put)
independently of what services say to each other over NATS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from litestar.plugins.pydantic import PydanticPlugin
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from baton_contracts.nats import ExecutionState
from baton_domain.catalog import MAX_TTL_SECONDS, NAME_PATTERN
from baton_views import COUNT_LIMIT, ExecutionPage, ExecutionView

# The largest `older_than_days` a purge takes (100 years): older is "everything", and a
# bound keeps the cutoff a date (a timedelta of 1e308 days overflows).
MAX_PURGE_DAYS = 36500

# Every public request body: unknown fields are refused, so a typo ("parms") is an error
# instead of a silent default; and strict, so `"ttl": true` or `"ttl": "30"` is an error
# instead of a 1 s or 30 s command. Litestar validates bodies after decoding the JSON
# (pydantic's Python mode), where strict also refuses strings for datetimes and UUIDs: give
# such a field `Field(strict=False)` to keep reading them from JSON strings.
STRICT_REQUEST = ConfigDict(extra="forbid", strict=True)

# A query filter naming one thing (`?name=`, `?device_id=`, `?type=`) names something that is
# not only whitespace: given empty or blank it is a 422 naming it, neither "no filter" nor a
# filter that matches nothing (a device, command or type name has no whitespace at all).
FILTER_PATTERN = r"\S"


# Patterns as StringConstraints, not Field(pattern=...): Litestar's OpenAPI document shows
# only the former.
CommandName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class RequestSchema(BaseModel):
    model_config = STRICT_REQUEST


def request_body_plugin() -> PydanticPlugin:
    """Litestar's pydantic plugin, leaving strictness to each model.

    Litestar validates a body with `model_validate(value, strict=validate_strict)`, and a
    bool there overrides every model's own setting (True would also refuse every UUID and
    datetime string). None, passed through as is, lets each model's config decide."""
    return PydanticPlugin(validate_strict=None)  # type: ignore[arg-type]


class SubmitRequest(RequestSchema):
    name: CommandName = Field(description="command name, from the device's type")
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


class RetryRequest(RequestSchema):
    """A retry takes nothing: the body, when there is one, is `{}`. A field sent anyway
    (say a new `ttl`) is refused, not silently dropped."""


class PurgeRequest(RequestSchema):
    older_than_days: float = Field(
        gt=0, le=MAX_PURGE_DAYS, description="delete executions created before then"
    )


class PurgeOut(BaseModel):
    deleted: int
    cutoff: datetime


class LogEntryOut(BaseModel):
    received_at: datetime
    status: str
    payload: dict[str, Any]


class VerificationErrorOut(BaseModel):
    title: str
    description: str | None = None


class VerificationOut(BaseModel):
    """Whether the device's reported state showed the change the command declares (Traxes'
    verification); its time written as the execution's are."""

    status: Literal["PENDING", "SUCCEEDED", "FAILED", "CANCELED"]
    completed_at: datetime | None = None
    error: VerificationErrorOut | None = None


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
    verification: VerificationOut | None = Field(
        default=None,
        description="whether the device's reported state showed the change the command "
        "declares (none without a verification rule)",
    )
    requested_by: str | None = Field(
        default=None,
        description="who asked: `key:<id>` (an API key), `jwt:<sub>`, a NATS caller's principal",
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
            verification=None
            if execution.verification is None
            else VerificationOut.model_validate(execution.verification),
            requested_by=execution.requested_by,
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
    total_count_exact: bool = Field(
        description="false when a filter on creation time matched more rows than are"
        f" counted ({COUNT_LIMIT:,}): then at least total_count rows match"
    )
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")

    @classmethod
    def of(cls, page: ExecutionPage) -> ExecutionPageOut:
        return cls(
            items=[ExecutionOut.of(e) for e in page.items],
            total_count=page.total_count,
            total_count_exact=page.total_count_exact,
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
    # `outcome-unknown`: the execution the submit would have made; a GET of it settles it.
    execution_id: UUID | None = None


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
