"""JWT bearer tokens (Traxes clients send them): who the caller is, in which tenant, with
which role, as an identity provider Baton trusts says.

HS256 with a shared secret (`BATON_JWT_SECRET`), RS256 and ES256 against the public keys of
a JWKS file (`BATON_JWT_JWKS_PATH`, chosen by the token's `kid`). Every token must carry
`sub` and `exp` (and `aud`/`iss` when they are configured); the tenant and the role come
from two claims (`tenant` and `role` unless configured otherwise).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from baton_contracts.nats import TENANT_PATTERN
from baton_domain.tenants import Role

HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]


class InvalidToken(Exception):
    """Not a token this Baton accepts; the message says why (it goes into the 401)."""


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    tenant: str
    role: Role


class TokenVerifier:
    def __init__(
        self,
        secret: str | None = None,
        jwks_path: Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        tenant_claim: str = "tenant",
        role_claim: str = "role",
    ) -> None:
        self._secret = secret
        self._keys: dict[str, Any] = {}
        if jwks_path is not None:
            # Read once at start: a broken file stops the api rather than every request.
            jwks = jwt.PyJWKSet.from_dict(json.loads(jwks_path.read_text()))
            self._keys = {key.key_id or "": key for key in jwks.keys}
        self._audience = audience
        self._issuer = issuer
        self._tenant_claim = tenant_claim
        self._role_claim = role_claim

    @property
    def enabled(self) -> bool:
        return self._secret is not None or bool(self._keys)

    def verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm in HMAC_ALGORITHMS and self._secret is not None:
                key: Any = self._secret
            elif algorithm in PUBLIC_KEY_ALGORITHMS and self._keys:
                found = self._keys.get(header.get("kid") or "")
                if found is None:
                    raise InvalidToken("the token's key (kid) is not in the JWKS")
                key = found.key
            else:
                raise InvalidToken(f"tokens signed with {algorithm!r} are not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not _is_tenant(tenant):
            raise InvalidToken(f"the token's {self._tenant_claim!r} claim is not a tenant id")
        try:
            role = Role.parse(str(claims.get(self._role_claim)))
        except ValueError:
            raise InvalidToken(
                f"the token's {self._role_claim!r} claim is not a role "
                "(viewer, operator, admin, owner)"
            ) from None
        return TokenClaims(subject=str(claims["sub"]), tenant=tenant, role=role)


def looks_like_jwt(value: str) -> bool:
    """Three dot-separated parts, the first a JSON object in base64url (`eyJ` is `{"`)."""
    return value.startswith("eyJ") and value.count(".") == 2


def _is_tenant(value: str) -> bool:
    return re.fullmatch(TENANT_PATTERN, value) is not None
