"""Managed keys and tenants in the JetStream bucket, seen by two api replicas (real
nats-server): a key created through one works on the other, and a key revoked through one
is refused by the other within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from baton_api.access import AccessUnavailable, NatsAccess, digest_of, matching, new_key
from baton_api.nats_link import NatsLink
from baton_cli.localstack import Server
from baton_contracts.nats import KeyRecord, TenantRecord
from baton_platform.nats import NatsIdentity
from baton_platform.nats_access import API
from tests.conftest import eventually


async def replica(server: Server) -> tuple[NatsLink, NatsAccess, list[asyncio.Task[None]]]:
    """An api replica's access store, connected as the api's NATS user."""
    who = NatsIdentity(API, server.passwords[API])
    link = NatsLink(server.url, who, on_event=lambda: None)
    access = NatsAccess(link)
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(access.run())]
    await asyncio.wait_for(access.loaded.wait(), timeout=10)
    return link, access, tasks


@pytest.fixture
async def replicas(
    nats_server: Server,
) -> AsyncIterator[tuple[NatsAccess, NatsAccess]]:
    first = await replica(nats_server)
    second = await replica(nats_server)
    yield first[1], second[1]
    for link, _access, tasks in (first, second):
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.close()


def record(key: str, key_id: str, tenant: str = "default") -> KeyRecord:
    return KeyRecord(
        id=key_id,
        digest=digest_of(key),
        role="operator",
        tenant=tenant,
        name="test",
        created_at=datetime.now(UTC),
        created_by="test",
    )


async def test_a_key_created_on_one_replica_works_on_the_other_and_revoking_it_reaches_both(
    replicas: tuple[NatsAccess, NatsAccess],
) -> None:
    one, other = replicas
    key_id, key = new_key()
    await one.put_key(record(key, key_id))
    assert matching(one, key) is not None  # at once on the replica that wrote it

    async def known() -> bool:
        return matching(other, key) is not None

    await eventually(known, timeout=5, what="the key on the other replica")
    assert matching(other, key + "x") is None  # the secret is compared, not just the id

    revoked_at = time.monotonic()
    await one.delete_key(key_id)
    assert matching(one, key) is None

    async def refused() -> bool:
        return matching(other, key) is None

    await eventually(refused, timeout=1.0, interval=0.01, what="the revocation on the other")
    print(f"\nrevocation reached the other replica in {time.monotonic() - revoked_at:.3f} s")


async def test_a_new_replica_loads_what_is_stored(
    replicas: tuple[NatsAccess, NatsAccess], nats_server: Server
) -> None:
    one, _other = replicas
    key_id, key = new_key()
    await one.put_key(record(key, key_id, tenant="acme"))
    tenant = TenantRecord(id="acme", name="Acme", created_at=datetime.now(UTC), created_by="t")
    await one.put_tenant(tenant)
    link, late, tasks = await replica(nats_server)
    try:
        found = matching(late, key)
        assert found is not None and found.tenant == "acme"
        assert late.tenant("acme") == tenant
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.close()


async def test_without_nats_nothing_is_written() -> None:
    link = NatsLink("nats://127.0.0.1:1", on_event=lambda: None)
    access = NatsAccess(link)
    key_id, key = new_key()
    with pytest.raises(AccessUnavailable):
        await access.put_key(record(key, key_id))
    assert access.key(key_id) is None
