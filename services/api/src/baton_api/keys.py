"""Managed API keys and tenants: `/v1/keys` (admin) and `/v1/tenants` (owner).

An admin manages its own tenant's keys, up to its own role; the owner manages every
tenant's, and the tenants. A key is shown once, when it is created; after that only its
id, role, tenant and name are (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, Field

from baton_api.access import AccessStore, AccessUnavailable, digest_of, new_key
from baton_api.auth import Identity, admin, owner
from baton_api.problems import ProblemError, problem, unavailable
from baton_api.schemas import STRICT_REQUEST
from baton_contracts.nats import DEFAULT_TENANT, KeyRecord, RoleName, Tenant, TenantRecord
from baton_domain.tenants import Role


class KeyRequest(BaseModel):
    model_config = STRICT_REQUEST

    role: RoleName
    name: str = Field(min_length=1, max_length=200, description="what the key is for")
    tenant: Tenant | None = Field(
        default=None, description="the owner only: another tenant's key (default: the caller's)"
    )


class KeyOut(BaseModel):
    id: str
    role: RoleName
    tenant: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, record: KeyRecord) -> KeyOut:
        return cls(
            id=record.id,
            role=record.role,
            tenant=record.tenant,
            name=record.name,
            created_at=record.created_at,
        )


class CreatedKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class KeyPage(BaseModel):
    items: list[KeyOut]
    total_count: int


class TenantRequest(BaseModel):
    model_config = STRICT_REQUEST

    id: Tenant = Field(description="lower-case letters, digits and `-`; a letter or digit first")
    name: str = Field(min_length=1, max_length=200)


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, record: TenantRecord) -> TenantOut:
        return cls(id=record.id, name=record.name, created_at=record.created_at)


class TenantPage(BaseModel):
    items: list[TenantOut]
    total_count: int


class AccessService:
    def __init__(self, store: AccessStore) -> None:
        self._store = store

    def tenant_exists(self, tenant: str) -> bool:
        return tenant == DEFAULT_TENANT or self._store.tenant(tenant) is not None

    async def create_key(self, request: KeyRequest, by: Identity) -> CreatedKeyOut:
        tenant = request.tenant or by.tenant
        if tenant != by.tenant and by.role < Role.OWNER:
            raise _no_tenant(tenant)  # another tenant: as if it did not exist
        if not self.tenant_exists(tenant):
            raise _no_tenant(tenant)
        role = Role.parse(request.role)
        if role > by.role:
            raise _stronger(role, by)
        key_id, key = new_key()
        record = KeyRecord(
            id=key_id,
            digest=digest_of(key),
            role=request.role,
            tenant=tenant,
            name=request.name,
            created_at=datetime.now(UTC),
            created_by=by.principal,
        )
        await _written(self._store.put_key(record))
        return CreatedKeyOut(key=key, **KeyOut.of(record).model_dump())

    def keys(self, by: Identity) -> list[KeyOut]:
        """The caller's tenant's keys; every tenant's for the owner."""
        return [
            KeyOut.of(r)
            for r in self._store.key_records()
            if by.role >= Role.OWNER or r.tenant == by.tenant
        ]

    async def revoke(self, key_id: str, by: Identity) -> None:
        record = self._store.key(key_id)
        if record is None or (by.role < Role.OWNER and record.tenant != by.tenant):
            raise ProblemError(
                problem(404, "key-not-found", f"key {key_id} does not exist", title="Not Found")
            )
        if Role.parse(record.role) > by.role:
            raise _stronger(Role.parse(record.role), by)
        await _written(self._store.delete_key(key_id))

    async def create_tenant(self, request: TenantRequest, by: Identity) -> TenantOut:
        if self.tenant_exists(request.id):
            raise ProblemError(
                problem(409, "tenant-exists", f"tenant {request.id!r} already exists")
            )
        record = TenantRecord(
            id=request.id, name=request.name, created_at=datetime.now(UTC), created_by=by.principal
        )
        await _written(self._store.put_tenant(record))
        return TenantOut.of(record)

    def tenants(self) -> list[TenantOut]:
        return [TenantOut.of(t) for t in self._store.tenants()]


async def _written(write: Awaitable[None]) -> None:
    try:
        await write
    except AccessUnavailable as exc:
        raise unavailable(f"keys and tenants cannot be changed now: {exc}") from None


def _no_tenant(tenant: str) -> ProblemError:
    return ProblemError(
        problem(404, "tenant-not-found", f"tenant {tenant!r} does not exist", title="Not Found")
    )


def _stronger(role: Role, by: Identity) -> ProblemError:
    return ProblemError(
        problem(403, "forbidden", f"a {by.role.label} cannot manage {role.label} keys")
    )


class KeyController(Controller):
    path = "/keys"
    tags = ["access"]

    @post("/", status_code=201, guards=[admin])
    async def create_key(
        self,
        caller: NamedDependency[Identity],
        access_service: NamedDependency[AccessService],
        data: JSONBody[KeyRequest],
    ) -> Response[CreatedKeyOut]:
        """A new key (shown once) for the caller's tenant, up to the caller's own role."""
        created = await access_service.create_key(data, caller)
        return Response(created, status_code=201, headers={"Location": f"/v1/keys/{created.id}"})

    @get("/", guards=[admin])
    async def list_keys(
        self, caller: NamedDependency[Identity], access_service: NamedDependency[AccessService]
    ) -> KeyPage:
        """The tenant's keys (never the keys themselves)."""
        items = access_service.keys(caller)
        return KeyPage(items=items, total_count=len(items))

    @delete("/{key_id:str}", status_code=204, guards=[admin])
    async def revoke_key(
        self,
        caller: NamedDependency[Identity],
        access_service: NamedDependency[AccessService],
        key_id: FromPath[str],
    ) -> None:
        """Revoke a key: refused from then on, by every api replica."""
        await access_service.revoke(key_id, caller)


class TenantController(Controller):
    path = "/tenants"
    tags = ["access"]

    @post("/", status_code=201, guards=[owner])
    async def create_tenant(
        self,
        caller: NamedDependency[Identity],
        access_service: NamedDependency[AccessService],
        data: JSONBody[TenantRequest],
    ) -> TenantOut:
        """Owner: a new tenant; then `POST /v1/keys` with its id gives it a first admin key."""
        return await access_service.create_tenant(data, caller)

    @get("/", guards=[owner])
    async def list_tenants(self, access_service: NamedDependency[AccessService]) -> TenantPage:
        """Owner: every tenant but `default`, which always exists."""
        items = access_service.tenants()
        return TenantPage(items=items, total_count=len(items))
