"""Every error the api answers is an RFC 9457 problem document, built here and only here.

`ProblemError` carries a wire `Problem` (from the dispatcher, or made by the api itself);
`problem_handler` is the single Litestar exception handler that turns *any* exception into
`application/problem+json`: Litestar's own (404 for unknown routes, 405, validation), auth
failures, view query errors, and unhandled ones (500, logged, no internals in the body).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)

from baton_contracts.nats import FieldProblem, Problem
from baton_views import InvalidQueryError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://baton.dev/problems/"  # a stable namespace, documented in docs/api.md


class ProblemError(Exception):
    """Raise to answer with this problem (and these extra headers)."""

    def __init__(self, problem: Problem, headers: dict[str, str] | None = None) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.headers = headers or {}


def problem(
    status: int,
    code: str,
    detail: str,
    errors: Sequence[FieldProblem] = (),
    title: str | None = None,
) -> Problem:
    return Problem(
        status=status,
        title=title or HTTPStatus(status).phrase,
        detail=detail,
        code=code,
        errors=list(errors),
    )


def unavailable(detail: str) -> ProblemError:
    return ProblemError(problem(503, "unavailable", detail), {"Retry-After": "1"})


def problem_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The one place an exception becomes an HTTP answer."""
    found, headers = _translate(exc)
    if found.status >= 500 and not isinstance(exc, ProblemError):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + found.code,
        "title": found.title,
        "status": found.status,
        "detail": found.detail,
        "instance": request.url.path,
        "code": found.code,
    }
    if found.errors or found.status == 422:
        body["errors"] = [e.model_dump() for e in found.errors]
    return Response(
        content=body,
        status_code=found.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _translate(exc: Exception) -> tuple[Problem, dict[str, str]]:
    if isinstance(exc, ProblemError):
        headers = dict(exc.headers)
        if exc.problem.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.problem.retry_after)))
        return exc.problem, headers
    if isinstance(exc, InvalidQueryError):
        return problem(
            422, "invalid-query", str(exc), [FieldProblem(field=exc.field, reason=exc.reason)]
        ), {}
    if isinstance(exc, ValidationException):
        return _validation_problem(exc), {}
    if isinstance(exc, NotAuthorizedException):
        detail = exc.detail or "a valid API key is required"
        return problem(401, "unauthorized", detail), {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, NotFoundException):
        return problem(404, "not-found", "no such resource"), {}
    if isinstance(exc, MethodNotAllowedException):
        return problem(405, "method-not-allowed", exc.detail), dict(exc.headers or {})
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        return problem(exc.status_code, code, exc.detail), dict(exc.headers or {})
    return problem(500, "internal-error", "an unexpected error occurred; it has been logged"), {}


def _validation_problem(exc: ValidationException) -> Problem:
    """Litestar's validation errors, re-shaped so each names its field."""
    errors: list[FieldProblem] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            field = item.get("key") or item.get("source") or "body"
            errors.append(FieldProblem(field=str(field), reason=str(item.get("message", ""))))
    if not errors:
        # Litestar raises ValidationException without details for an unreadable body.
        return problem(400, "malformed-request", exc.detail or "the request cannot be read")
    return problem(422, "validation-failed", "the request is not valid", errors)
