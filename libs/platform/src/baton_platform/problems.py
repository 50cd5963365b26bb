"""Domain errors as wire `Problem`s: the one translation every boundary shares.

The dispatcher replies with these over NATS and the api turns them into RFC 9457
documents unchanged, so an HTTP client sees the same status, code and field errors
whichever way the command came in.
"""

from __future__ import annotations

from baton_contracts.nats import FieldProblem, Problem
from baton_domain.errors import (
    CatalogConflict,
    CooldownActive,
    DeadlineNotReached,
    DomainError,
    ExecutionNotFound,
    IdempotencyConflict,
    IllegalTransition,
    InvalidCatalog,
    InvalidCommand,
    QueueFull,
    UnknownDevice,
    UnknownDeviceType,
    WriteConflict,
    WrongDevice,
)

# (HTTP status, title) per error class; looked up along the MRO so subclasses inherit.
_STATUS: dict[type[DomainError], tuple[int, str]] = {
    UnknownDevice: (404, "Unknown device"),
    ExecutionNotFound: (404, "Execution not found"),
    InvalidCommand: (422, "Invalid command"),
    IdempotencyConflict: (409, "Idempotency key reused"),
    IllegalTransition: (409, "Illegal transition"),
    WrongDevice: (409, "Wrong device"),
    DeadlineNotReached: (409, "Deadline not reached"),
    CooldownActive: (429, "Command cooling down"),
    InvalidCatalog: (422, "Invalid catalog"),
    CatalogConflict: (409, "Catalog conflict"),
    UnknownDeviceType: (404, "Unknown device type"),
    QueueFull: (429, "Too many commands waiting"),
    WriteConflict: (503, "Write conflict"),
}
_DEFAULT = (409, "Request refused")


def problem_for(exc: DomainError) -> Problem:
    """The wire problem for a domain error: status, title, the error's `code`, its message."""
    status, title = next((_STATUS[cls] for cls in type(exc).__mro__ if cls in _STATUS), _DEFAULT)
    errors = (
        [FieldProblem(field=e.field, reason=e.reason) for e in exc.errors]
        if isinstance(exc, InvalidCommand | InvalidCatalog)
        else []
    )
    retry_after = (
        exc.remaining if isinstance(exc, CooldownActive | QueueFull | WriteConflict) else None
    )
    return Problem(
        status=status,
        title=title,
        detail=str(exc),
        code=exc.code,
        errors=errors,
        retry_after=retry_after,
    )
