"""Managed API keys and tenants: where they are kept, and how a presented key is found.

Kept in the JetStream key-value bucket BATON_ACCESS, which every api replica watches: each
holds the whole (small) set in memory, so checking a key costs no round trip, and a key
revoked through any replica stops working on all of them as soon as the deletion reaches
their watchers (milliseconds on one machine). Only a key's SHA-256 is stored; the key
itself is shown once, when it is created.

Keys look like `baton_<id>_<secret>`: the id finds the record at once, the secret (32
random bytes) is what is compared. With that much entropy a plain SHA-256 cannot be
reversed, so no slow hash is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from typing import Protocol, Self

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from baton_api.nats_link import NatsLink
from baton_contracts.nats import (
    ACCESS_BUCKET,
    KEY_ENTRY,
    TENANT_ENTRY,
    KeyRecord,
    TenantRecord,
)
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats import ensure_bucket

log = logging.getLogger(__name__)

KEY_PREFIX = "baton_"


def new_key() -> tuple[str, str]:
    """A new key and its id."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id inside a managed key, or None if `key` does not look like one."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = key[len(KEY_PREFIX) :].partition("_")
    return key_id if key_id and secret else None


class AccessUnavailable(Exception):
    """The bucket cannot be written now (NATS down): nothing was changed."""


class AccessStore(Protocol):
    def key(self, key_id: str) -> KeyRecord | None: ...

    def key_records(self) -> list[KeyRecord]: ...

    def tenant(self, tenant_id: str) -> TenantRecord | None: ...

    def tenants(self) -> list[TenantRecord]: ...

    async def put_key(self, record: KeyRecord) -> None: ...

    async def delete_key(self, key_id: str) -> None: ...

    async def put_tenant(self, record: TenantRecord) -> None: ...


def matching(store: AccessStore, presented: str) -> KeyRecord | None:
    """The managed key `presented` is, if any (compared in constant time)."""
    key_id = key_id_of(presented)
    record = store.key(key_id) if key_id else None
    if record is None or not hmac.compare_digest(record.digest, digest_of(presented)):
        return None
    return record


class InMemoryAccess:
    """The store of one process: unit tests, and an api that runs without NATS."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyRecord] = {}
        self._tenants: dict[str, TenantRecord] = {}

    def __deepcopy__(self, _memo: dict[int, object]) -> Self:
        # Litestar copies a middleware's arguments for every router it sits on: the store
        # the middleware checks must be the one the key routes write.
        return self

    def key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    def key_records(self) -> list[KeyRecord]:
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        return self._tenants.get(tenant_id)

    def tenants(self) -> list[TenantRecord]:
        return sorted(self._tenants.values(), key=lambda t: t.id)

    async def put_key(self, record: KeyRecord) -> None:
        self._keys[record.id] = record

    async def delete_key(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    async def put_tenant(self, record: TenantRecord) -> None:
        self._tenants[record.id] = record

    def apply(self, entry: str, value: bytes | None) -> None:
        """One entry of the bucket as it now is (None: deleted)."""
        kind, _, name = entry.partition(".")
        try:
            if kind == "keys":
                if value is None:
                    self._keys.pop(name, None)
                else:
                    self._keys[name] = KeyRecord.model_validate_json(value)
            elif kind == "tenants":
                if value is None:
                    self._tenants.pop(name, None)
                else:
                    self._tenants[name] = TenantRecord.model_validate_json(value)
        except ValidationError:
            REJECTED_MESSAGES.labels(service="api", reason="malformed-access-entry").inc()
            log.warning("ignored a malformed %s entry in %s", entry, ACCESS_BUCKET)


class NatsAccess(InMemoryAccess):
    """The bucket, mirrored in memory by a watcher; writes go to the bucket and are applied
    here at once, so this replica's next request sees them."""

    def __init__(self, link: NatsLink, replicas: int = 1) -> None:
        super().__init__()
        self._link = link
        self._replicas = replicas  # BATON_NATS_REPLICAS: the bucket's copies, as the streams'
        self._bucket: KeyValue | None = None
        self.loaded = asyncio.Event()

    async def run(self) -> None:
        """Watch the bucket for ever (restarting the watch after a failure)."""
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching %s failed (%s); again in 1 s", ACCESS_BUCKET, exc)
            await asyncio.sleep(1)

    async def _watch(self) -> None:
        client = await self._link.connected_client()
        js = client.jetstream()
        self._bucket = await ensure_bucket(js, ACCESS_BUCKET, history=1, replicas=self._replicas)
        watcher = await self._bucket.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    self.loaded.set()
                    continue
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                self.apply(entry.key, None if deleted else entry.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _writable(self) -> KeyValue:
        if self._bucket is None or not self._link.connected:
            raise AccessUnavailable(f"{ACCESS_BUCKET} is not reachable")
        return self._bucket

    async def put_key(self, record: KeyRecord) -> None:
        await self._write(KEY_ENTRY.format(id=record.id), record.model_dump_json().encode())
        await super().put_key(record)

    async def delete_key(self, key_id: str) -> None:
        await self._write(KEY_ENTRY.format(id=key_id), None)
        await super().delete_key(key_id)

    async def put_tenant(self, record: TenantRecord) -> None:
        await self._write(TENANT_ENTRY.format(id=record.id), record.model_dump_json().encode())
        await super().put_tenant(record)

    async def _write(self, entry: str, value: bytes | None) -> None:
        """Put `entry` (None: delete it, if it is there); AccessUnavailable on any failure."""
        bucket = self._writable()
        try:
            if value is None:
                with contextlib.suppress(KeyNotFoundError):
                    await bucket.delete(entry)
            else:
                await bucket.put(entry, value)
        except Exception as exc:
            raise AccessUnavailable(str(exc)) from exc
