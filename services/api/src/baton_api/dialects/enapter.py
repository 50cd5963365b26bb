"""Enapter v3 command executions (seed 002) under `/enapter/v3`.

- `POST devices/{device_id}/execute_command`: synchronous. Answers when the execution ended
  or after `EXECUTE_WAIT_SECONDS` (then with the state at that moment).
- `POST devices/{device_id}/command_executions`: asynchronous, answers `{execution_id}`.
- `GET devices/{device_id}/command_executions/{execution_id}` (`expand=log`).
- `GET devices/{device_id}/command_executions` (`limit`, `offset`, `show`, `order`).

`request.name` is the name the client sent (an alias, perhaps), `request.manifest_name` the
declared one; `response` is the device's latest answer; timestamps are Unix seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, Field

from baton_api.auth import Identity, operator, viewer
from baton_api.dialects.common import (
    Execution,
    execution_not_found,
    find_device,
    parse_execution_id,
    requested_name,
    submit,
)
from baton_api.dialects.statuses import enapter_answer_state, word
from baton_api.problems import ProblemError, invalid
from baton_api.schemas import STRICT_REQUEST
from baton_api.service import ExecutionService
from baton_contracts.nats import SubmitCommand
from baton_domain.catalog import Catalog
from baton_views import MAX_LIMIT, ExecutionFilter, ExecutionView, LogEntry

PREFIX = "/enapter/v3"
FIELDS = {"params": "arguments"}  # Baton's field names, as Enapter says
EXECUTE_WAIT_SECONDS = 60.0  # execute_command's bound (Baton v1's largest `?wait=`)
DEFAULT_LIMIT = 50
# The seed: "If offset is greater than total_count, an empty list is returned", so any
# larger offset is clamped to the largest one SQLite takes, which no count ever reaches.
MAX_OFFSET = 2**63 - 1


class EnapterCommandRequest(BaseModel):
    model_config = STRICT_REQUEST

    name: str = Field(min_length=1, description="command name, or an alias of it")
    arguments: dict[str, Any] = Field(default_factory=dict, description="command arguments")
    ephemeral: bool = Field(default=False, description="hidden from lists unless show=ALL")


class EnapterExecutionCreated(BaseModel):
    execution_id: str


# Answers are plain dicts: Enapter leaves out `response` before the first answer and `log`
# unless expanded, rather than sending nulls.
ExecutionBody = dict[str, Any]


def execution_body(
    execution: Execution, *, with_log: bool = False, response_payload: bool = True
) -> ExecutionBody:
    body: ExecutionBody = {
        "id": str(execution.id),
        "state": word("enapter", execution.status),
        "created_at": int(execution.created_at.timestamp()),
        "request": {
            "name": requested_name(execution),
            "arguments": execution.params,
            "manifest_name": execution.name,
        },
    }
    log = _newest_first(execution.log if isinstance(execution, ExecutionView) else None)
    if log:
        body["response"] = _answer(log[0], payload=response_payload)
    if with_log:
        body["log"] = [_answer(entry, payload=True) for entry in log]
    body["ephemeral"] = execution.ephemeral
    return body


def _newest_first(log: list[LogEntry] | None) -> list[LogEntry]:
    """By received_at, newest first; of answers received at the same moment, the later one."""
    ordered = sorted(enumerate(log or []), key=lambda p: (p[1].received_at, p[0]), reverse=True)
    return [entry for _, entry in ordered]


def _answer(entry: LogEntry, *, payload: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"state": enapter_answer_state(entry.status)}
    if payload:
        answer["payload"] = entry.payload
    answer["received_at"] = int(entry.received_at.timestamp())
    return answer


Expand = Annotated[
    str | None,
    QueryParameter(description="comma-separated; `log` adds every device answer, newest first"),
]
Show = Annotated[
    Literal["NON_EPHEMERAL", "ALL"],
    QueryParameter(description="`ALL` includes ephemeral executions"),
]
Order = Annotated[Literal["CREATED_AT_ASC", "CREATED_AT_DESC"], QueryParameter()]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, QueryParameter(ge=0)]


def _expands_log(expand: str | None) -> bool:
    parts = {part.strip() for part in (expand or "").split(",") if part.strip()}
    unknown = parts - {"log"}
    if unknown:
        raise invalid("expand", f"unknown value {', '.join(sorted(unknown))}; supported: log")
    return "log" in parts


class EnapterCommandController(Controller):
    path = "/devices/{device_id:str}"
    tags = ["enapter"]

    @post("/execute_command", status_code=200, guards=[operator])
    async def enapter_execute_command(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        device_id: FromPath[str],
        data: JSONBody[EnapterCommandRequest],
        expand: Expand = None,
    ) -> dict[str, ExecutionBody]:
        """Execute a command and answer once it ended (or after 60 s)."""
        with_log = _expands_log(expand)
        submitted = await submit(
            service, _submit(caller, device_id, data), EXECUTE_WAIT_SECONDS, FIELDS, True
        )
        execution = submitted.execution
        if not isinstance(execution, ExecutionView) or execution.log is None:
            # Not in the views (deleted meanwhile): answer as GET would, a 404.
            execution = await service.get(execution.id, True, caller.tenant)
        return {"execution": execution_body(execution, with_log=with_log)}

    @post("/command_executions", status_code=200, guards=[operator])
    async def enapter_create_command_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        device_id: FromPath[str],
        data: JSONBody[EnapterCommandRequest],
    ) -> EnapterExecutionCreated:
        """Create an execution; follow it with Get Command Execution."""
        submitted = await submit(service, _submit(caller, device_id, data), None, FIELDS)
        return EnapterExecutionCreated(execution_id=str(submitted.execution.id))

    @get("/command_executions/{execution_id:str}", guards=[viewer])
    async def enapter_get_command_execution(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        device_id: FromPath[str],
        execution_id: FromPath[str],
        expand: Expand = None,
    ) -> dict[str, ExecutionBody]:
        """One execution of the device, with its latest answer (and every one: expand=log)."""
        with_log = _expands_log(expand)
        execution = await service.get(parse_execution_id(execution_id), True, caller.tenant)
        if execution.device_id != device_id:
            raise execution_not_found(execution_id)
        return {"execution": execution_body(execution, with_log=with_log)}

    @get("/command_executions", guards=[viewer])
    async def enapter_list_command_executions(
        self,
        caller: NamedDependency[Identity],
        service: NamedDependency[ExecutionService],
        catalog: NamedDependency[Catalog],
        device_id: FromPath[str],
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
        show: Show = "NON_EPHEMERAL",
        order: Order = "CREATED_AT_ASC",
    ) -> dict[str, Any]:
        """The device's executions; `total_count` counts them over all pages. 404 for a
        device the caller's catalog does not have, as on the v1 route."""
        find_device(catalog, device_id)
        where = ExecutionFilter(
            tenant=caller.tenant, device_id=device_id, include_ephemeral=show == "ALL"
        )
        sort: Literal["oldest", "newest"] = "oldest" if order == "CREATED_AT_ASC" else "newest"
        page = await service.list(where, sort, limit, offset=min(offset, MAX_OFFSET))
        executions = []
        for item in page.items:
            # The latest answer lives in the log, which list pages do not carry.
            try:
                full: ExecutionView = await service.get(item.id, True, caller.tenant)
            except ProblemError:  # deleted since the page was read: show what the page had
                full = item
            executions.append(execution_body(full, response_payload=False))
        return {"executions": executions, "total_count": page.total_count}


def _submit(
    caller: NamedDependency[Identity], device_id: str, data: EnapterCommandRequest
) -> SubmitCommand:
    return SubmitCommand(
        device_id=device_id,
        name=data.name,
        params=data.arguments,
        principal=caller.principal,
        tenant=caller.tenant,
        source="enapter",
        ephemeral=data.ephemeral,
    )
