"""The Baton v1 routes. Each handler decodes, makes one service call, encodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast
from uuid import UUID

from litestar import Controller, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from baton_api.auth import Identity, admin, operator, viewer
from baton_api.catalog import CatalogService
from baton_api.problems import ProblemError, invalid, problem
from baton_api.schemas import (
    FILTER_PATTERN,
    CancelRequest,
    ExecutionOut,
    ExecutionPageOut,
    ExecutionWithLogOut,
    PurgeOut,
    PurgeRequest,
    RetryRequest,
    SubmitRequest,
)
from baton_api.service import ExecutionService
from baton_contracts.nats import IDEMPOTENCY_KEY_PATTERN, FieldProblem, SubmitCommand
from baton_domain.statuses import ExecutionStatus
from baton_views import DEFAULT_LIMIT, MAX_LIMIT, ExecutionFilter

MAX_WAIT_SECONDS = 60

Wait = Annotated[
    float | None,
    QueryParameter(
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="answer when the execution ended or after this many seconds",
    ),
]
Expand = Annotated[
    Literal["log"] | None, QueryParameter(description="`log`: include every device answer")
]
# A filter given empty or blank (`?name=%20`) is a 422 naming it, never "no filter" nor
# "named nothing": `statuses_of` for a status, FILTER_PATTERN for the others.
Statuses = Annotated[
    list[str] | None,
    QueryParameter(name="status", description="repeatable and/or comma-separated"),
]
Name = Annotated[str | None, QueryParameter(pattern=FILTER_PATTERN)]
DeviceId = Annotated[str | None, QueryParameter(pattern=FILTER_PATTERN)]
Moment = Annotated[datetime | None, QueryParameter(description="ISO-8601; UTC if no offset")]
Sort = Annotated[Literal["newest", "oldest"], QueryParameter()]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page")]
Show = Annotated[
    Literal["NON_EPHEMERAL", "ALL"],
    QueryParameter(description="`ALL` includes ephemeral executions"),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,  # an empty or blank key is refused, not a key
        description="same key and body: the same execution; other body: 409",
    ),
]


class CommandController(Controller):
    path = "/devices/{device_id:str}"
    tags = ["executions"]

    @post(
        "/commands",
        status_code=201,
        guards=[operator],
        responses={
            200: ResponseSpec(
                ExecutionOut, description="the same Idempotency-Key and body again: its execution"
            )
        },
    )
    async def submit_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        device_id: FromPath[str],
        data: JSONBody[SubmitRequest],
        idempotency_key: IdempotencyKey = None,
        wait: Wait = None,
    ) -> Response[ExecutionOut]:
        """Submit a command to a device; 201 with the new execution (200 for a repeat)."""
        command = SubmitCommand(
            device_id=device_id,
            name=data.name,
            params=data.params,
            ttl=data.ttl,
            idempotency_key=idempotency_key,
            principal=caller.principal,
            tenant=caller.tenant,
            source="api",
            ephemeral=data.ephemeral,
        )
        submitted = await service.submit(command, wait)
        execution = ExecutionOut.of(submitted.execution)
        return Response(
            execution,
            status_code=201 if submitted.created else 200,
            headers={"Location": f"/v1/executions/{execution.id}"},
        )

    @get("/executions", guards=[viewer])
    async def list_device_executions(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog_service: NamedDependency[CatalogService],
        device_id: FromPath[str],
        status: Statuses = None,
        name: Name = None,
        created_after: Moment = None,
        created_before: Moment = None,
        order: Sort = "newest",
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
        show: Show = "NON_EPHEMERAL",
    ) -> ExecutionPageOut:
        """The device's executions, filtered, newest first unless `order=oldest`; 404 for a
        device the catalog does not have (a removed one's stay under `/v1/executions`)."""
        await catalog_service.device(device_id, caller.tenant)
        where = _filter(caller, status, name, device_id, created_after, created_before, show)
        return ExecutionPageOut.of(await service.list(where, order, limit, cursor))


class ExecutionController(Controller):
    path = "/executions"
    tags = ["executions"]

    @get("/", guards=[viewer])
    async def list_executions(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        status: Statuses = None,
        name: Name = None,
        device_id: DeviceId = None,
        created_after: Moment = None,
        created_before: Moment = None,
        order: Sort = "newest",
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
        show: Show = "NON_EPHEMERAL",
    ) -> ExecutionPageOut:
        """All executions, filtered, newest first unless `order=oldest`."""
        where = _filter(caller, status, name, device_id, created_after, created_before, show)
        return ExecutionPageOut.of(await service.list(where, order, limit, cursor))

    @get("/{execution_id:str}", guards=[viewer])
    async def get_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[UUID],
        expand: Expand = None,
    ) -> ExecutionOut | ExecutionWithLogOut:
        """One execution; `?expand=log` adds every device answer."""
        execution = await service.get(execution_id, expand == "log", caller.tenant)
        if expand == "log":
            return ExecutionWithLogOut.with_log(execution)
        return ExecutionOut.of(execution)

    @post("/{execution_id:str}/cancel", status_code=200, guards=[operator])
    async def cancel_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[UUID],
        data: JSONBody[CancelRequest | None] = None,
    ) -> ExecutionOut:
        """Cancel an execution that has not ended; 409 if it has."""
        reason = data.reason if data is not None else None
        return ExecutionOut.of(await service.cancel(execution_id, reason, caller))

    @post(
        "/{execution_id:str}/retry",
        status_code=201,
        guards=[operator],
        responses={
            200: ResponseSpec(
                ExecutionOut, description="the same Idempotency-Key again: the retry it made"
            )
        },
    )
    async def retry_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[UUID],
        data: JSONBody[RetryRequest | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ExecutionOut]:
        """A new execution of an ended one's command, linked both ways (`retry_of`,
        `retries`); 409 while it still runs. 200 for a repeat of a keyed retry."""
        retried = await service.retry(execution_id, caller, "api", idempotency_key)
        execution = ExecutionOut.of(retried.execution)
        return Response(
            execution,
            status_code=201 if retried.created else 200,
            headers={"Location": f"/v1/executions/{execution.id}"},
        )

    @delete("/{execution_id:str}", status_code=204, guards=[admin])
    async def delete_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        execution_id: FromPath[UUID],
    ) -> None:
        """Admin: remove an execution from every view (its stream records the deletion).
        One still running is canceled first."""
        await service.delete(execution_id, "deleted by an admin", caller)

    @post("/purge", status_code=200, guards=[admin])
    async def purge_executions(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        data: JSONBody[PurgeRequest],
    ) -> PurgeOut:
        """Admin: delete every execution created more than `older_than_days` ago."""
        cutoff = datetime.now(UTC) - timedelta(days=data.older_than_days)
        reason = f"purged: older than {data.older_than_days:g} days"
        deleted = await service.purge(cutoff, reason, caller.principal, tenant=caller.tenant)
        return PurgeOut(deleted=deleted, cutoff=cutoff)


# --- the v1 router's guard ----------------------------------------------------------------


async def refuse_unknown_query(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Guard of every v1 route: a query parameter the route does not declare is a 422 naming
    it, so `?stauts=FAILED` is not silently a list of everything. (The dialects keep their
    seeds' leniency: they do not have this guard.) A coroutine function, as the role guards
    are (auth.py), so Litestar does not run it in a worker thread."""
    known = _declared_query(handler, frozenset(connection.path_params))
    unknown = sorted(set(connection.query_params) - known)
    if unknown:
        reason = f"unknown query parameter; known: {', '.join(sorted(known)) or 'none'}"
        raise ProblemError(
            problem(
                422,
                "validation-failed",
                "the request is not valid",
                [FieldProblem(field=name, reason=reason) for name in unknown],
            )
        )


_DECLARED: dict[tuple[object, frozenset[str], frozenset[str]], frozenset[str]] = {}


def _declared_query(handler: BaseRouteHandler, path_params: frozenset[str]) -> frozenset[str]:
    # Litestar's own reading of the handler's signature (and its dependencies'): the same
    # model that extracts the parameters, so the two cannot disagree. Kept per route function:
    # guards get a fresh handler object on every request, so caching on the handler itself
    # missed every time and grew by one entry per request.
    key = (handler.fn, frozenset(handler.paths), path_params)
    declared = _DECLARED.get(key)
    if declared is None:
        model = handler.create_kwargs_model(path_parameters=cast(Any, dict.fromkeys(path_params)))
        declared = _DECLARED[key] = frozenset(p.field_alias for p in model.expected_query_params)
    return declared


# --- decoding helpers ---------------------------------------------------------------------


def _filter(
    caller: NamedDependency[Identity],
    status: list[str] | None,
    name: str | None,
    device_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    show: str = "NON_EPHEMERAL",
) -> ExecutionFilter:
    return ExecutionFilter(
        tenant=caller.tenant,
        statuses=statuses_of(status or []),
        name=name,
        device_id=device_id,
        created_after=_aware(created_after, "created_after"),
        created_before=_aware(created_before, "created_before"),
        include_ephemeral=show == "ALL",
    )


def statuses_of(values: list[str]) -> frozenset[ExecutionStatus]:
    """`status=A&status=B` and `status=A,B` alike; every value must be a known status, and
    each `status=` must name one (`status=` alone would otherwise be no filter at all)."""
    known = {s.value for s in ExecutionStatus}
    if any(not value.replace(",", "").strip() for value in values):
        raise invalid("status", f"empty; name one or more of: {', '.join(sorted(known))}")
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        reason = f"unknown status {', '.join(unknown)}; one of: {', '.join(sorted(known))}"
        raise invalid("status", reason)
    return frozenset(ExecutionStatus(n) for n in names)


def _aware(moment: datetime | None, field: str) -> datetime | None:
    """In UTC (no offset: UTC); a moment with no UTC equivalent (year 9999, -14:00) is a 422."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise invalid(field, "out of range once in UTC") from None
