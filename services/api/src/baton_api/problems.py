"""Every error the api answers is an RFC 9457 problem document, built here and only here.

`ProblemError` carries a wire `Problem` (from the dispatcher, or made by the api itself);
`problem_handler` is the single Litestar exception handler that turns *any* exception into
`application/problem+json`: Litestar's own (404 for unknown routes, 405, validation), auth
failures, view query errors, and unhandled ones (500, logged, no internals in the body).
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any
from uuid import UUID

from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from pydantic import ValidationError as PydanticValidationError

from baton_api.limits import MAX_BODY_BYTES
from baton_api.schemas import FILTER_PATTERN
from baton_contracts.nats import FieldProblem, Problem
from baton_platform.sql import unreachable
from baton_views import InvalidQueryError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://baton.dev/problems/"  # a stable namespace, documented in docs/api.md
BODY_REQUIRED = "a JSON body is required"
# What the query decoder says of a filter given empty or blank (FILTER_PATTERN), and what the
# asker is told instead.
_BLANK_FILTER = f"Expected `str` matching regex {FILTER_PATTERN!r}"
BLANK_FILTER = "empty or blank; name one, or leave the filter out"


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


def invalid(field: str, reason: str) -> ProblemError:
    """A 422 problem naming `field`, like Litestar's and the catalog's validation errors."""
    return ProblemError(
        problem(
            422,
            "validation-failed",
            "the request is not valid",
            [FieldProblem(field=field, reason=reason)],
        )
    )


def unavailable(detail: str) -> ProblemError:
    """503 when the request never reached the dispatcher: nothing was stored; retry."""
    return ProblemError(problem(503, "unavailable", detail), {"Retry-After": "1"})


def outcome_unknown(detail: str, execution_id: UUID | None = None) -> ProblemError:
    """503 when the request was sent and no answer came in time: it may have been stored.

    No Retry-After: a blind retry is exactly what must not happen. With the execution id,
    `Location` names the execution a GET settles it with (404: nothing was stored)."""
    found = problem(503, "outcome-unknown", detail, title="Outcome unknown")
    if execution_id is None:
        return ProblemError(found)
    return ProblemError(
        found.model_copy(update={"execution_id": execution_id}),
        {"Location": f"/v1/executions/{execution_id}"},
    )


def payload_too_large(detail: str) -> ProblemError:
    return ProblemError(problem(413, "payload-too-large", detail))


STORE_UNAVAILABLE = "store-unavailable"


def problem_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The one place an exception becomes an HTTP answer."""
    found, headers = _translate(exc, request)
    if found.code == "internal-error":
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    elif found.code == STORE_UNAVAILABLE:  # an outage to retry through, not a bug
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path, exc)
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
    if found.execution_id is not None:
        body["execution_id"] = str(found.execution_id)
    return Response(
        content=body,
        status_code=found.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _translate(exc: Exception, request: Request[Any, Any, Any]) -> tuple[Problem, dict[str, str]]:
    if isinstance(exc, ProblemError):
        headers = dict(exc.headers)
        if exc.problem.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.problem.retry_after)))
        return exc.problem, headers
    if isinstance(exc, InvalidQueryError):
        return problem(
            422, "invalid-query", str(exc), [FieldProblem(field=exc.field, reason=exc.reason)]
        ), {}
    if (body_errors := _body_errors(exc)) is not None:
        return _validation_problem(body_errors, body_required=False), {}
    if isinstance(exc, ValidationException):
        return _named_as_sent(_validation_problem(exc, _body_required(request)), request), {}
    if _undecodable_body(exc):
        detail = "the body is not JSON this api can read (invalid UTF-8, or nested too deep)"
        return problem(400, "malformed-request", detail), {}
    if isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException):
        # Litestar's own decode failure (not JSON at all): the same answer as above.
        return problem(400, "malformed-request", f"the body is not valid JSON: {exc.detail}"), {}
    if isinstance(exc, NotAuthorizedException):
        detail = exc.detail or "a valid API key is required"
        return problem(401, "unauthorized", detail), {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, NotFoundException):
        return problem(404, "not-found", "no such resource"), {}
    if isinstance(exc, HTTPException) and exc.status_code == 413:  # request_max_body_size
        detail = f"the request body is larger than {MAX_BODY_BYTES} bytes"
        return payload_too_large(detail).problem, {}
    if isinstance(exc, MethodNotAllowedException):
        return problem(405, "method-not-allowed", exc.detail), dict(exc.headers or {})
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        return problem(exc.status_code, code, exc.detail), dict(exc.headers or {})
    if unreachable(exc):
        detail = "the database cannot be reached just now (restarting?); retry shortly"
        return problem(503, STORE_UNAVAILABLE, detail), {"Retry-After": "1"}
    return problem(500, "internal-error", "an unexpected error occurred; it has been logged"), {}


def _named_as_sent(found: Problem, request: Request[Any, Any, Any]) -> Problem:
    """Litestar names a parameter by its Python name; the client knows the name it sent
    (`Idempotency-Key`, `thingId`)."""
    try:
        parameters = request.route_handler.parsed_fn_signature.parameters
    except Exception:  # no route resolved: nothing to rename
        return found

    def sent(field: str) -> str:
        definition = getattr(parameters.get(field), "kwarg_definition", None)
        for alias in ("name", "header", "query", "cookie"):
            value = getattr(definition, alias, None)
            if isinstance(value, str) and value:
                return value
        return field

    errors = [e.model_copy(update={"field": sent(e.field)}) for e in found.errors]
    return found.model_copy(update={"errors": errors})


def _body_errors(exc: Exception) -> ValidationException | None:
    """A body model's validation errors, all of them, from pydantic's own report.

    Not from Litestar's report of them: Litestar 2 drops an error whose key names a
    dependency (its rule for a dependency that failed validation), and answers 500 when
    that leaves none. A body field's key is the field's name alone, so a stray field named
    `service` or `webhooks` (the app's dependencies) was taken for one. Request bodies are
    the only pydantic models Litestar validates here (no dependency is one), so a pydantic
    error under its validation or 500 exception is always the body's."""
    if not isinstance(exc, ValidationException | InternalServerException):
        return None
    cause = exc.__cause__.__cause__ if exc.__cause__ is not None else None
    if not isinstance(cause, PydanticValidationError):
        return None
    return ValidationException(
        extra=[
            {"key": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
            for error in cause.errors(include_url=False, include_input=False)
        ]
    )


def _undecodable_body(exc: Exception) -> bool:
    """Invalid UTF-8 inside a JSON string and nesting deeper than msgspec decodes escape
    Litestar's JSON decode unwrapped (not as its SerializationException). Only when they come
    from that decode are they the client's fault; anywhere else they are bugs (500)."""
    if not isinstance(exc, UnicodeDecodeError | RecursionError):
        return False
    return any(
        frame.f_code.co_name == "decode_json"
        and str(frame.f_globals.get("__name__", "")).startswith("litestar.")
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def _body_required(request: Request[Any, Any, Any]) -> bool:
    """Whether the route's handler needs a body (its `data` parameter has no default)."""
    try:
        data = request.route_handler.parsed_fn_signature.parameters.get("data")
    except Exception:  # no route resolved (404/405): there is no handler to ask
        return False
    return data is not None and not data.has_default


def _validation_problem(exc: ValidationException, body_required: bool) -> Problem:
    """Litestar's validation errors, re-shaped so each names its field and a real reason.

    A value missing from the handler's arguments comes back as a KeyError's text (`'data'`
    for an absent body) beside the real errors: an absent body the route needs becomes
    `body: a JSON body is required`; one it can do without (or any other such entry) is
    dropped, since it is only an echo of the real error."""
    errors: list[FieldProblem] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        field = str(item.get("key") or item.get("source") or "body")
        reason = str(item.get("message", ""))
        if reason == repr(field):
            if field == "data" and body_required:
                errors.append(FieldProblem(field="body", reason=BODY_REQUIRED))
            continue
        if field == "data":  # the whole body (Litestar's name for it), e.g. an array
            field = "body"
        if reason == _BLANK_FILTER:
            reason = BLANK_FILTER
        errors.append(FieldProblem(field=field, reason=reason))
    if not errors:
        # Litestar raises ValidationException without details for an unreadable body.
        return problem(400, "malformed-request", exc.detail or "the request cannot be read")
    return problem(422, "validation-failed", "the request is not valid", errors)
