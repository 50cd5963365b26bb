"""Every operation of the OpenAPI document declares the problem documents it can answer.

Litestar declares one error of its own making (a 400 `application/json` with its exception
shape) where a route has parameters. Baton answers every error as an RFC 9457 problem
(problems.py), so `declare_problems` has the generated document rewritten once, when Litestar
builds it (on the first request for it): each operation loses Litestar's error entries and
gets, as `application/problem+json` with a `$ref` to `ProblemOut`, the statuses its shape
can give:

| status | when |
|---|---|
| 400 | it reads a body or parameters (an unreadable body, a malformed value) |
| 401 | it is behind the API-key check (it has a security requirement) |
| 403 | it needs a role above viewer (baton_api.auth's guards), which a weaker caller lacks |
| 404 | it has path parameters, or asks the dispatcher (unknown device, type, execution) |
| 409 | it asks the dispatcher to change something (illegal transition, conflict, key reuse) |
| 410 | it resumes a live stream (a `Last-Event-ID` parameter): below the pruned feed |
| 413 | it reads a body (the body size limit) |
| 422 | it reads a body or parameters; every `/v1` route (unknown query parameters) |
| 429 | behind the API-key check (its rate limit), or it submits (cooldown, full queue) |
| 503 | it asks the dispatcher (unreachable, no answer), or is a `/v1` route (database down) |

The rules read the document (parameters, body, security) and the route handlers (guards,
which handler submits), so a new route gets its problems without a line here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from baton_api.auth import role_of
from baton_api.problems import PROBLEM_MEDIA_TYPE
from baton_api.schemas import ProblemOut
from baton_domain.tenants import Role

PROBLEM_SCHEMA = ProblemOut.__name__
# The handlers that create an execution, so may meet a cooldown or a full queue (429).
SUBMITS = frozenset(
    {
        "submit_command",
        "retry_execution",
        "enapter_execute_command",
        "enapter_create_command_execution",
        "fleets_send_command",
        "traxes_send_command",
        "iotee_send_command",
        "iotee_retry_command",
    }
)
# Methods that only read the views or the stored catalog: every other asks the dispatcher.
READS = frozenset({"GET", "HEAD", "OPTIONS"})
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

DESCRIPTIONS = {
    400: "The request cannot be read (malformed body or value).",
    401: "No valid API key.",
    403: "The caller's role may not do this (docs/security.md).",
    404: "No such resource (device, device type, execution).",
    409: "The request conflicts with the current state.",
    410: "The live stream cannot resume there: those changes are no longer kept.",
    413: "The body is larger than the api accepts.",
    422: "The request is not valid; `errors` names each field and why.",
    429: "Not now (the key's rate limit; cooldown, full queue): retry after `Retry-After` "
    "seconds; none for the full queue of an offline device (`detail`: retry once it is online).",
    503: "The dispatcher or the database cannot be reached, or did not answer; see `detail`.",
}
RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER), description="seconds to wait before retrying"
)
WWW_AUTHENTICATE = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="Bearer")
HEADERS: dict[int, dict[str, OpenAPIHeader | Reference]] = {
    401: {"WWW-Authenticate": WWW_AUTHENTICATE},
    429: {"Retry-After": RETRY_AFTER},
    503: {"Retry-After": RETRY_AFTER},
}


def declare_problems(app: Litestar) -> None:
    """Have the error responses of every operation of `app`'s document rewritten when
    Litestar builds it: once, on the first request for it, and cached, so what `/schema`
    serves is the rewritten document. Not at start: building it took ~0.6 s of an api's
    ~2.5 s start on a quiet machine (several seconds under load), time a restarted replica
    is not serving."""
    # Litestar offers no hook after the build, and its plugin has __slots__: the instance
    # becomes one of a subclass that adds the rewrite (the same slots, so the same layout).
    app.plugins.get(OpenAPIPlugin).__class__ = _DeclaringProblems


class _DeclaringProblems(OpenAPIPlugin):
    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        document = super()._build_openapi()
        rewrite_problems(self.app, document)
        return document


def rewrite_problems(app: Litestar, document: OpenAPI) -> None:
    """Rewrite the error responses of every operation of `document`, `app`'s."""
    components = document.components
    components.schemas = {**(components.schemas or {}), **problem_schemas()}
    facts = _handler_facts(app)
    for path, item in (document.paths or {}).items():
        for method in METHODS:
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            admin, submits, declared = facts.get((path, method.upper()), (False, False, set()))
            statuses = problem_statuses(path, method.upper(), operation, admin, submits)
            responses = {
                code: response
                for code, response in (operation.responses or {}).items()
                if code[:1] not in ("4", "5") or code in declared
            }
            responses.update({str(status): problem_response(status) for status in statuses})
            for response in responses.values():
                _any_of_models(response)
            operation.responses = responses


def _any_of_models(response: OpenAPIResponse | Reference) -> None:
    """A handler returning one of several models (`ExecutionOut | ExecutionWithLogOut`) gets
    a `oneOf` from Litestar; but objects are open, so an instance of the richer model is valid
    under both, which `oneOf` forbids. The answer is one of them, at least: `anyOf`."""
    for media in (getattr(response, "content", None) or {}).values():
        schema = media.schema
        if isinstance(schema, Schema) and schema.one_of:
            schema.any_of, schema.one_of = schema.one_of, None


def problem_statuses(
    path: str, method: str, operation: Operation, admin: bool, submits: bool
) -> list[int]:
    has_body = operation.request_body is not None
    has_params = bool(operation.parameters)
    path_params = any(getattr(p, "param_in", None) == "path" for p in operation.parameters or [])
    dispatcher = method not in READS
    resumes = any(getattr(p, "name", None) == "Last-Event-ID" for p in operation.parameters or [])
    wanted = {
        400: has_body or has_params,
        401: bool(operation.security),
        403: admin,
        404: path_params or dispatcher,
        409: dispatcher,
        410: resumes,
        413: has_body,
        422: has_body or has_params or path.startswith("/v1/"),
        429: submits or bool(operation.security),
        503: dispatcher or path.startswith("/v1/"),
    }
    return [status for status, applies in wanted.items() if applies]


def problem_response(status: int) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=DESCRIPTIONS[status],
        headers=HEADERS.get(status),
        content={
            PROBLEM_MEDIA_TYPE: OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{PROBLEM_SCHEMA}")
            )
        },
    )


def problem_schemas() -> dict[str, Schema]:
    """`ProblemOut` (and the models it uses) as OpenAPI component schemas."""
    found = ProblemOut.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = found.pop("$defs", {})
    return {name: _schema(node) for name, node in {**definitions, PROBLEM_SCHEMA: found}.items()}


def _handler_facts(app: Litestar) -> dict[tuple[str, str], tuple[bool, bool, set[str]]]:
    """(path, METHOD) -> (admin-only, submits a command, the statuses its handler declares
    itself: kept as they are), from the route handlers."""
    facts: dict[tuple[str, str], tuple[bool, bool, set[str]]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            # Litestar wraps each guard (AsyncCallable), keeping the original as `func`.
            role = role_of(handler.resolve_guards())
            admin = role is not None and role > Role.VIEWER
            submits = handler.handler_name in SUBMITS
            declared = {str(status) for status in handler.responses or {}}
            for method in handler.http_methods:
                facts[(route.path_format or "/", method)] = (admin, submits, declared)
    return facts


# JSON Schema keyword -> field of Litestar's `Schema` (most differ only by case).
_FIELD_OF = {str(f.metadata.get("alias", f.name)): f.name for f in fields(Schema)}
_SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SCHEMA_VALUES = {"items", "not", "additionalProperties", "contains"}


def _schema(node: dict[str, Any]) -> Schema:
    result = _node(node)
    if not isinstance(result, Schema):
        raise TypeError("a component schema cannot be a bare reference")
    return result


def _node(node: dict[str, Any]) -> Schema | Reference:
    """A pydantic JSON Schema node as Litestar's spec objects (which write it back out)."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    values: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            value = (
                [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
            )
        elif key == "properties":
            value = {name: _node(child) for name, child in value.items()}
        elif key in _SCHEMA_LISTS:
            value = [_node(child) for child in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            value = _node(value)
        values[_FIELD_OF[key]] = value
    return Schema(**values)
