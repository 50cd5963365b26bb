"""The console's pages: thin edges over the same services as /v1, rendered on the server.

Every page needs a signed-in caller: the API key given at sign-in is kept in an HttpOnly,
SameSite=Strict cookie scoped to /console, and each request is identified from it exactly as
/v1 identifies a header (`ConsoleAuthMiddleware`, the same keys, tenants, roles and rate
limits). Forms that change something carry a CSRF token derived from that key; the routes
that change something need the operator role, as in /v1 (the pages hide what the caller's
role may not do, and the server refuses it anyway).

Live parts (the executions table, an execution that has not ended, the devices) are
re-read when an event of theirs arrives on the console's own copy of the live feeds
(`LiveController` of baton_api.live, served here too: `/console/events`,
`/console/executions/{id}/events`, signed in by the cookie). The `live` macro of
templates/_live.html says which region follows which feed; console.js listens
(docs/console.md, "Live updates").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from uuid import UUID

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.enums import MediaType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from baton_api.auth import ApiKeyMiddleware, Identity, KeyIdentifier, operator
from baton_api.catalog import CatalogService
from baton_api.console.forms import PREFIX, WHOLE, fields_of, params_of, place_errors
from baton_api.console.timeline import steps_of
from baton_api.live import LiveController, LiveFeed
from baton_api.problems import ProblemError
from baton_api.service import ExecutionService
from baton_contracts.nats import FieldProblem, SubmitCommand
from baton_domain.statuses import ExecutionStatus
from baton_domain.tenants import Role
from baton_views import ExecutionFilter
from baton_views.projection import PROJECTED_TYPES

HERE = Path(__file__).parent
BASE = "/console"
COOKIE = "baton_console"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
PAGE_SIZE = 20
# Without the feed (a browser without EventSource, a stream refused), live parts re-read
# themselves this often instead (console.js).
FALLBACK_POLL_SECONDS = 30
RECENT = 10
STATUSES = [s.value for s in ExecutionStatus]
# No inline script or style anywhere: the console runs under a strict policy.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; style-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


TEMPLATES.filters["when"] = _when
TEMPLATES.globals.update(
    base=BASE,
    fallback_poll_seconds=FALLBACK_POLL_SECONDS,
    statuses=STATUSES,
    # The feeds' `event:` names (an EventSource listens to each by name).
    event_kinds=" ".join(sorted(PROJECTED_TYPES)),
)


class ConsoleAuthMiddleware(ApiKeyMiddleware):
    """The /v1 identification, from the console's cookie instead of a header."""

    def presented(self, connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
        return connection.cookies.get(COOKIE) or None


def csrf_token(key: str) -> str:
    """Bound to the signed-in key: a page of another site can neither read nor make it."""
    return hmac.new(key.encode(), b"baton-console-csrf", hashlib.sha256).hexdigest()


def _render(
    request: Request[Any, Any, Any], template: str, status: int = 200, **context: Any
) -> Response[str]:
    user = request.scope.get("user")
    me = user if isinstance(user, Identity) else None
    key = request.cookies.get(COOKIE)
    html = TEMPLATES.get_template(template).render(
        me=me,
        can_operate=me is not None and me.role >= Role.OPERATOR,
        csrf=csrf_token(key) if key and me is not None else "",
        path=request.url.path,
        **context,
    )
    return Response(html, media_type=MediaType.HTML, status_code=status, headers=SECURITY_HEADERS)


def _same_origin(request: Request[Any, Any, Any]) -> None:
    """A browser names the page a form came from (`Origin`): another site's is refused, the
    sign-in form's too (so no other site can sign a browser in with its own key)."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
        raise PermissionDeniedException("the form came from another site")


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The posted form, once its origin and CSRF token are checked (403 otherwise)."""
    _same_origin(request)
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    key = request.cookies.get(COOKIE, "")
    sent = values.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not key or not hmac.compare_digest(sent, csrf_token(key)):
        raise PermissionDeniedException("the form is stale or came from another site: reload it")
    return values


async def _position(live: LiveFeed) -> int:
    """Where the live feed stands: read before what a page shows, its region follows the
    feed from there (nothing between the page and its stream is missed)."""
    return await asyncio.to_thread(live.views.position)


def _see_other(url: str) -> Redirect:
    return Redirect(url, status_code=303)


# --- sign in and out ----------------------------------------------------------------------


@get("/sign-in", exclude_from_auth=True, sync_to_thread=False)
def sign_in_page(request: Request[Any, Any, Any]) -> Response[str]:
    return _render(request, "sign_in.html")


@post("/sign-in", exclude_from_auth=True)
async def sign_in(
    request: Request[Any, Any, Any], key_identifier: NamedDependency[KeyIdentifier]
) -> Response[Any]:
    _same_origin(request)
    form = await request.form()
    key = str(form.get("api_key", "")).strip()
    try:
        if not key:
            raise NotAuthorizedException("enter an API key")
        key_identifier.identify(key)
    except NotAuthorizedException as exc:
        return _render(request, "sign_in.html", status=401, error=exc.detail)
    secure = request.url.scheme == "https"
    cookie = Cookie(
        key=COOKIE, value=key, path=BASE, httponly=True, samesite="strict", secure=secure
    )
    return Redirect(f"{BASE}/executions", status_code=303, cookies=[cookie])


@post("/sign-out")
async def sign_out(request: Request[Any, Any, Any]) -> Redirect:
    await _form(request)
    gone = Cookie(key=COOKIE, value="", path=BASE, max_age=0, httponly=True, samesite="strict")
    return Redirect(f"{BASE}/sign-in", status_code=303, cookies=[gone])


@get("/", sync_to_thread=False)
def home() -> Redirect:
    return _see_other(f"{BASE}/executions")


# --- executions ---------------------------------------------------------------------------


def _moment(raw: str, name: str, errors: list[str]) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        errors.append(f"{name}: not a date and time")
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def _executions(
    request: Request[Any, Any, Any], me: Identity, service: ExecutionService, live: LiveFeed
) -> dict[str, Any]:
    after = await _position(live)
    query = request.query_params
    chosen = {
        k: query.get(k, "").strip() for k in ("device", "command", "status", "after", "before")
    }
    errors: list[str] = []
    statuses: frozenset[ExecutionStatus] = frozenset()
    if chosen["status"]:
        if chosen["status"] in STATUSES:
            statuses = frozenset({ExecutionStatus(chosen["status"])})
        else:
            errors.append(f"status: one of {', '.join(STATUSES)}")
    where = ExecutionFilter(
        tenant=me.tenant,
        statuses=statuses,
        name=chosen["command"] or None,
        device_id=chosen["device"] or None,
        created_after=_moment(chosen["after"], "from", errors),
        created_before=_moment(chosen["before"], "until", errors),
    )
    cursor = query.get("cursor") or None
    try:
        page = await service.list(where, "newest", PAGE_SIZE, cursor)
    except ProblemError as exc:
        errors.append(exc.problem.detail)
        page = None
    filters = urlencode({k: v for k, v in chosen.items() if v})
    return {
        "chosen": chosen,
        "errors": errors,
        "page": page,
        "filters": filters,
        "cursor": cursor or "",
        "live_query": urlencode({k: v for k, v in {**chosen, "cursor": cursor}.items() if v}),
        # Device and command never change, so the feed filters on them; not on the status: a
        # row that leaves the chosen status must go too.
        "events_query": urlencode(
            {
                k: v
                for k, v in {"device_id": chosen["device"], "name": chosen["command"]}.items()
                if v
            }
        ),
        "after": after,
    }


@get(["/executions", "/executions/rows"])
async def executions_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    live: NamedDependency[LiveFeed],
) -> Response[str]:
    """The page, or (`/rows`) the table alone: what the live region re-reads."""
    context = await _executions(request, caller, service, live)
    rows = request.url.path.endswith("/rows")
    return _render(request, "_execution_rows.html" if rows else "executions.html", **context)


@get(["/executions/{execution_id:uuid}", "/executions/{execution_id:uuid}/live"])
async def execution_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    history: NamedDependency[Callable[[UUID], list[Any]]],
    live: NamedDependency[LiveFeed],
    execution_id: FromPath[UUID],
) -> Response[str]:
    """The page, or (`/live`) the part of it that the live region re-reads."""
    after = await _position(live)
    execution = await service.get(execution_id, True, caller.tenant)  # 404: another tenant's
    steps = steps_of(await asyncio.to_thread(history, execution_id))
    part = request.url.path.endswith("/live")
    template = "_execution_live.html" if part else "execution.html"
    return _render(request, template, execution=execution, steps=steps, after=after)


@post("/executions/{execution_id:uuid}/cancel", guards=[operator])
async def cancel(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    execution_id: FromPath[UUID],
) -> Redirect:
    form = await _form(request)
    await service.cancel(execution_id, form.get("reason") or "canceled in the console", caller)
    return _see_other(f"{BASE}/executions/{execution_id}")


@post("/executions/{execution_id:uuid}/retry", guards=[operator])
async def retry(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    execution_id: FromPath[UUID],
) -> Redirect:
    await _form(request)
    retried = await service.retry(execution_id, caller, "console")
    return _see_other(f"{BASE}/executions/{retried.execution.id}")


# --- send a command -----------------------------------------------------------------------


async def _send_context(
    request: Request[Any, Any, Any],
    me: Identity,
    catalog_service: CatalogService,
    device_id: str,
    command: str,
) -> dict[str, Any]:
    catalog = await catalog_service.catalog(me.tenant)
    devices = sorted(catalog.devices, key=lambda d: d.id)
    device = next((d for d in devices if d.id == device_id), None)
    device_type = catalog.device_types.get(device.type) if device is not None else None
    commands = sorted(device_type.commands) if device_type is not None else []
    spec = device_type.commands.get(command) if device_type is not None else None
    return {
        "devices": devices,
        "device": device,
        "commands": commands,
        "command": command if spec is not None else "",
        "spec": spec,
        "fields": fields_of(spec.params) if spec is not None else [],
        "form_errors": [],
        "ttl": "",
    }


@get("/send")
async def send_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    catalog_service: NamedDependency[CatalogService],
) -> Response[str]:
    device_id = request.query_params.get("device", "")
    command = request.query_params.get("command", "")
    context = await _send_context(request, caller, catalog_service, device_id, command)
    return _render(request, "send.html", **context)


@post("/send", guards=[operator])
async def send(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    catalog_service: NamedDependency[CatalogService],
) -> Response[Any]:
    form = await _form(request)
    context = await _send_context(
        request, caller, catalog_service, form.get("device", ""), form.get("command", "")
    )
    spec = context["spec"]
    if spec is None:
        context["form_errors"] = ["choose a device and one of its commands"]
        return _render(request, "send.html", status=422, **context)
    params, unreadable = params_of(spec.params, form)
    ttl_raw = form.get("ttl", "").strip()
    context["ttl"] = ttl_raw
    context["fields"] = fields_of(
        spec.params, {k: v for k, v in form.items() if k.startswith(PREFIX) or k == WHOLE}
    )
    problems = [
        FieldProblem(field=f"params.{n}" if n else "params", reason=r)
        for n, r in unreadable.items()
    ]
    ttl = int(ttl_raw) if ttl_raw.isdigit() else None
    if ttl_raw and ttl is None:
        problems.append(FieldProblem(field="ttl", reason="a whole number of seconds"))
    if not problems:
        command = SubmitCommand(
            device_id=context["device"].id,
            name=context["command"],
            params=params,
            ttl=ttl,
            principal=caller.principal,
            tenant=caller.tenant,
            source="console",
        )
        try:
            submitted = await service.submit(command, None)
        except ProblemError as exc:
            problems = list(exc.problem.errors)
            if not problems:
                context["form_errors"] = [exc.problem.detail]
        else:
            return _see_other(f"{BASE}/executions/{submitted.execution.id}")
    context["form_errors"] = [*context["form_errors"], *place_errors(context["fields"], problems)]
    return _render(request, "send.html", status=422, **context)


# --- devices and device types -------------------------------------------------------------


@get("/devices")
async def devices_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    catalog_service: NamedDependency[CatalogService],
    live: NamedDependency[LiveFeed],
) -> Response[str]:
    """Re-read whole by its live region, which keeps its own part (htmx `hx-select`)."""
    after = await _position(live)
    device_type = request.query_params.get("type") or None
    cursor = request.query_params.get("cursor") or None
    page = await catalog_service.devices(caller.tenant, device_type, PAGE_SIZE, cursor)
    catalog = await catalog_service.catalog(caller.tenant)
    return _render(
        request,
        "devices.html",
        page=page,
        chosen_type=device_type or "",
        types=sorted(catalog.device_types),
        now=datetime.now(UTC),
        live_query=urlencode(
            {k: v for k, v in {"type": device_type, "cursor": cursor}.items() if v}
        ),
        after=after,
    )


@get("/devices/{device_id:str}")
async def device_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    service: NamedDependency[ExecutionService],
    catalog_service: NamedDependency[CatalogService],
    live: NamedDependency[LiveFeed],
    device_id: FromPath[str],
) -> Response[str]:
    """Re-read whole by its live region, as the devices page."""
    after = await _position(live)
    device = await catalog_service.device_status(device_id, caller.tenant)
    recent = await service.list(
        ExecutionFilter(tenant=caller.tenant, device_id=device_id), "newest", RECENT
    )
    return _render(request, "device.html", device=device, recent=recent.items, after=after)


@get("/device-types")
async def device_types_page(
    request: Request[Any, Any, Any],
    caller: NamedDependency[Identity],
    catalog_service: NamedDependency[CatalogService],
) -> Response[str]:
    catalog = await catalog_service.catalog(caller.tenant)
    counts: dict[str, int] = {}
    for device in catalog.devices:
        counts[device.type] = counts.get(device.type, 0) + 1
    types = sorted(catalog.device_types.items())
    return _render(request, "device_types.html", types=types, counts=counts)


# --- errors -------------------------------------------------------------------------------


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, NotAuthorizedException):
        if request.headers.get("HX-Request"):  # a live region: the whole page goes
            return Response("", status_code=204, headers={"HX-Redirect": f"{BASE}/sign-in"})
        gone = Cookie(key=COOKIE, value="", path=BASE, max_age=0)
        return Redirect(f"{BASE}/sign-in", status_code=303, cookies=[gone])
    if isinstance(exc, ProblemError):
        status, title, detail = exc.problem.status, exc.problem.title, exc.problem.detail
    elif isinstance(exc, HTTPException):
        status, title, detail = exc.status_code, "Not allowed", exc.detail
        if isinstance(exc, NotFoundException):
            title = "Not found"
    else:
        raise exc
    return _render(request, "error.html", status=status, title=title, detail=detail)


def console_routers(
    key_check: dict[str, Any], history: Callable[[UUID], list[Any]]
) -> list[Router]:
    """The console's pages (signed in with the same keys as /v1: `key_check` is the
    ApiKeyMiddleware's arguments) and its static files."""
    identifier = KeyIdentifier(
        key_check.get("keys", ()),
        key_check.get("admin_keys", ()),
        key_check.get("access"),
        key_check.get("tokens"),
    )
    pages = Router(
        BASE,
        route_handlers=[
            sign_in_page,
            sign_in,
            sign_out,
            home,
            executions_page,
            execution_page,
            cancel,
            retry,
            send_page,
            send,
            devices_page,
            device_page,
            device_types_page,
            LiveController,  # /console/events...: the /v1 feeds, signed in by the cookie
        ],
        middleware=[DefineMiddleware(ConsoleAuthMiddleware, **key_check)],
        dependencies={
            "key_identifier": Provide(lambda: identifier, sync_to_thread=False),
            "history": Provide(lambda: history, sync_to_thread=False),
        },
        exception_handlers={
            NotAuthorizedException: _error_page,
            PermissionDeniedException: _error_page,
            NotFoundException: _error_page,
            ProblemError: _error_page,
        },
        include_in_schema=False,
    )
    static = create_static_files_router(
        path=f"{BASE}/static", directories=[HERE / "static"], include_in_schema=False
    )
    return [pages, static]
