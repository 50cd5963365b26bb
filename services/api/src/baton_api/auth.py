"""API-key authentication for the /v1 routes: `Authorization: Bearer <key>` or `X-API-Key`.

A middleware (not a guard), so that it runs before any handler and its failures reach the
one problem handler. The authenticated user is the key's principal: a short hash that
identifies the key in events and logs without ever storing the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

API_KEY_HEADER = "X-API-Key"


def principal_of(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps even the key's length out of the timing.
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        super().__init__(app)
        self._keys = [(_digest(k), principal_of(k)) for k in keys]

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:  # type: ignore[type-arg]
        presented = _presented_key(connection)
        if presented is None:
            raise NotAuthorizedException("an API key is required (Authorization: Bearer <key>)")
        digest = _digest(presented)
        # Compare with every key, without stopping early, so timing tells nothing.
        matches = [
            principal for known, principal in self._keys if hmac.compare_digest(known, digest)
        ]
        if not matches:
            raise NotAuthorizedException("the API key is not valid")
        return AuthenticationResult(user=matches[0], auth=None)


def _presented_key(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    authorization = connection.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = connection.headers.get(API_KEY_HEADER, "").strip()
    return key or None
