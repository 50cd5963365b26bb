"""Who is calling, in which tenant, with which role: every /v1 and dialect route.

A middleware (not a guard), so that it runs before any handler and its failures reach the
one problem handler. A caller presents one credential, as `Authorization: Bearer <it>`,
`X-API-Key` or `X-Enapter-Auth-Token`:
- a managed key (`baton_<id>_<secret>`, created through /v1/keys; baton_api.access);
- a JWT from a trusted identity provider (baton_api.tokens);
- a bootstrap key from the environment: BATON_ADMIN_API_KEYS are owners, BATON_API_KEYS
  operators, both in the tenant `default`.
The identity's principal names the credential in events and logs without holding it. Each
principal's requests are then counted against its rate limit (baton_platform.rate_limits).

Each route declares the least role it needs with one of the guards below (`opt["role"]`
says which, for the OpenAPI document and the table in docs/security.md): a weaker role
gets 403. Another tenant's objects are never found (404), which the services see to: they
get the caller's tenant with every call.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp, Guard

from baton_api.access import AccessStore, InMemoryAccess, matching
from baton_api.problems import ProblemError, problem
from baton_api.tokens import InvalidToken, TokenVerifier, looks_like_jwt
from baton_domain.tenants import DEFAULT_TENANT, Role
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.rate_limits import RateLimits

API_KEY_HEADER = "X-API-Key"
# Every dialect's header for the same keys: Enapter clients send theirs.
TOKEN_HEADERS = (API_KEY_HEADER, "X-Enapter-Auth-Token")


@dataclass(frozen=True)
class Identity:
    principal: str  # recorded as who asked: `key:<id>`, `jwt:<sub>`, or a bootstrap key's hash
    tenant: str
    role: Role


def principal_of(key: str) -> str:
    """A bootstrap key's principal: a short hash, so the key itself is never recorded."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps even the key's length out of the timing.
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """`request.user` is the caller's `Identity`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str] = (),
        admin_keys: Sequence[str] = (),
        limits: RateLimits | None = None,
        access: AccessStore | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        super().__init__(app)
        self._limits = limits or RateLimits(0, 1)
        self.keys = KeyIdentifier(keys, admin_keys, access, tokens)

    def presented(self, connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
        """The credential the request carries (the console's middleware: its cookie)."""
        return _presented_key(connection)

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:  # type: ignore[type-arg]
        presented = self.presented(connection)
        if presented is None:
            raise NotAuthorizedException("an API key is required (Authorization: Bearer <key>)")
        identity = self.keys.identify(presented)
        wait = self._limits.take(identity.principal)
        if wait is not None:
            REJECTED_MESSAGES.labels(service="api", reason="rate-limited").inc()
            detail = (
                f"this API key may send {self._limits.rate:g} requests a second "
                f"({self._limits.burst} at once); try again in {wait:.2f} s"
            )
            refused = problem(429, "rate-limited", detail)
            raise ProblemError(refused, {"Retry-After": str(max(1, math.ceil(wait)))})
        return AuthenticationResult(user=identity, auth=identity.role)


class KeyIdentifier:
    """Who a credential is: a JWT, a managed key, or a bootstrap key; 401 for none."""

    def __init__(
        self,
        keys: Sequence[str] = (),
        admin_keys: Sequence[str] = (),
        access: AccessStore | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        self._access = access or InMemoryAccess()
        self._tokens = tokens
        owners = set(admin_keys)
        self._bootstrap = [
            (_digest(k), Identity(principal_of(k), DEFAULT_TENANT, _bootstrap_role(k, owners)))
            for k in dict.fromkeys([*keys, *admin_keys])
        ]

    def identify(self, presented: str) -> Identity:
        if self._tokens is not None and self._tokens.enabled and looks_like_jwt(presented):
            try:
                claims = self._tokens.verify(presented)
            except InvalidToken as exc:
                raise NotAuthorizedException(str(exc)) from None
            return Identity("jwt:" + claims.subject, claims.tenant, claims.role)
        record = matching(self._access, presented)
        if record is not None:
            return Identity("key:" + record.id, record.tenant, Role.parse(record.role))
        digest = _digest(presented)
        # Compare with every bootstrap key, without stopping early, so timing tells nothing.
        found = [who for known, who in self._bootstrap if hmac.compare_digest(known, digest)]
        if not found:
            raise NotAuthorizedException("the API key is not valid")
        return found[0]


def _bootstrap_role(key: str, owners: set[str]) -> Role:
    return Role.OWNER if key in owners else Role.OPERATOR


def identity_of(connection: ASGIConnection) -> Identity:  # type: ignore[type-arg]
    user = connection.user
    if not isinstance(user, Identity):  # a route outside the middleware: a wiring mistake
        raise NotAuthorizedException("no credentials were checked for this route")
    return user


def caller(request: Request[Any, Any, Any]) -> Identity:
    """The `caller` dependency of every route: who is asking."""
    return identity_of(request)


def requires(role: Role) -> Guard:
    """The guard of routes that need at least `role` (403 for a weaker one)."""

    # A coroutine function: Litestar runs a plain function guard in a worker thread, a
    # thread hop on every request for a comparison.
    async def guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        if identity_of(connection).role < role:
            raise PermissionDeniedException(f"this needs the {role.label} role or higher")

    guard.role = role  # type: ignore[attr-defined]  # read by openapi.py and the docs test
    return guard


viewer = requires(Role.VIEWER)
operator = requires(Role.OPERATOR)
admin = requires(Role.ADMIN)
owner = requires(Role.OWNER)


def role_of(guards: Sequence[object]) -> Role | None:
    """The role a route's guards require (None: none of ours, so open to any caller)."""
    roles = [getattr(getattr(g, "func", g), "role", None) for g in guards]
    found = [r for r in roles if isinstance(r, Role)]
    return max(found) if found else None


def _presented_key(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    authorization = connection.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for header in TOKEN_HEADERS:
        key = connection.headers.get(header, "").strip()
        if key:
            return key
    return None
