"""What every dialect shares: the execution as the service answers it, the device catalog
(for dialects that name devices by hardware id or show wire settings), and errors.

Errors stay RFC 9457 problem documents (baton_api.problems) in every dialect: none of the
seed APIs documents an error body of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from uuid import UUID

from baton_api.problems import ProblemError, problem
from baton_api.service import ExecutionService, Submitted
from baton_contracts.nats import ExecutionState, Problem, SubmitCommand
from baton_domain.catalog import Catalog, Device
from baton_views import ExecutionView

log = logging.getLogger(__name__)

# What submit answers (the dispatcher's reply) or the views hold: the same fields.
Execution = ExecutionView | ExecutionState


def requested_name(execution: Execution) -> str:
    """The command name as the client sent it (an alias, perhaps), else the declared one."""
    return execution.requested_name or execution.name


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def execution_not_found(execution_id: object) -> ProblemError:
    return ProblemError(
        problem(
            404,
            "execution-not-found",
            f"execution {execution_id} does not exist",
            title="Execution not found",
        )
    )


def parse_execution_id(value: str) -> UUID:
    """Dialect ids are plain strings in their paths: one that is no UUID is simply unknown."""
    try:
        return UUID(value)
    except ValueError:
        raise execution_not_found(value) from None


def unknown_device(device_id: str) -> ProblemError:
    return ProblemError(
        problem(404, "unknown-device", f"device {device_id!r} does not exist", title="Not Found")
    )


def find_device(catalog: Catalog, id_or_hardware_id: str) -> Device:
    """A device by its id, or else by the hardware id it uses on the wire; 404 if neither."""
    for device in catalog.devices:
        if device.id == id_or_hardware_id:
            return device
    for device in catalog.devices:
        if device.hardware_id == id_or_hardware_id:
            return device
    raise unknown_device(id_or_hardware_id)


async def submit(
    service: ExecutionService,
    command: SubmitCommand,
    wait: float | None,
    fields: Mapping[str, str],
    with_log: bool = False,
) -> Submitted:
    """`service.submit`, with the fields its problems name in the dialect's words:
    `fields` maps Baton's field names (`name`, `params`, `params.value`: a whole name first,
    else its first part) to the dialect's."""
    try:
        return await service.submit(command, wait, with_log)
    except ProblemError as exc:
        raise ProblemError(_renamed(exc.problem, fields), exc.headers) from None


def _renamed(found: Problem, fields: Mapping[str, str]) -> Problem:
    def rename(field: str) -> str:
        if field in fields:
            return fields[field]
        head, dot, rest = field.partition(".")
        return fields[head] + dot + rest if head in fields else field

    errors = [e.model_copy(update={"field": rename(e.field)}) for e in found.errors]
    return found.model_copy(update={"errors": errors})
