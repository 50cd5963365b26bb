"""API-key authentication for the /v1 routes: `Authorization: Bearer <key>` or `X-API-Key`.

A middleware (not a guard), so that it runs before any handler and its failures reach the
one problem handler. The authenticated user is the key's principal: a short hash that
identifies the key in events and logs without ever storing the key itself. Each key's
requests are then counted against its rate limit (baton_api.rate_limits): over it, `429
rate-limited` with `Retry-After`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from baton_api.problems import ProblemError, problem
from baton_api.rate_limits import RateLimits
from baton_platform.metrics import REJECTED_MESSAGES

API_KEY_HEADER = "X-API-Key"


def principal_of(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps even the key's length out of the timing.
    return hashlib.sha256(key.encode()).digest()


ADMIN = "admin"
USER = "user"
# Every dialect's header for the same keys: Enapter clients send theirs.
TOKEN_HEADERS = (API_KEY_HEADER, "X-Enapter-Auth-Token")


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    """The user is the key's principal; `auth` its role (`admin` keys may delete and purge)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        admin_keys: Sequence[str] = (),
        limits: RateLimits | None = None,
    ) -> None:
        super().__init__(app)
        self._limits = limits or RateLimits(0, 1)
        admins = set(admin_keys)
        self._keys = [
            (_digest(k), principal_of(k), ADMIN if k in admins else USER)
            for k in dict.fromkeys([*keys, *admin_keys])
        ]

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:  # type: ignore[type-arg]
        presented = _presented_key(connection)
        if presented is None:
            raise NotAuthorizedException("an API key is required (Authorization: Bearer <key>)")
        digest = _digest(presented)
        # Compare with every key, without stopping early, so timing tells nothing.
        matches = [
            (principal, role)
            for known, principal, role in self._keys
            if hmac.compare_digest(known, digest)
        ]
        if not matches:
            raise NotAuthorizedException("the API key is not valid")
        principal, role = matches[0]
        wait = self._limits.take(principal)
        if wait is not None:
            REJECTED_MESSAGES.labels(service="api", reason="rate-limited").inc()
            detail = (
                f"this API key may send {self._limits.rate:g} requests a second "
                f"({self._limits.burst} at once); try again in {wait:.2f} s"
            )
            refused = problem(429, "rate-limited", detail)
            raise ProblemError(refused, {"Retry-After": str(max(1, math.ceil(wait)))})
        return AuthenticationResult(user=principal, auth=role)


def admin_only(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Guard of the admin routes (delete, purge, list-all in some dialects): 403 otherwise."""
    if connection.auth != ADMIN:
        raise PermissionDeniedException("this needs an admin API key")


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
