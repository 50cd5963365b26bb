"""`baton access backup` and `restore` (docs/operations.md, "Backup and restore") against a
real nats-server: the keys and tenants of BATON_ACCESS survive the bucket's loss, as an api
replica sees them, and a file that is not a backup changes nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from baton_api.access import digest_of, matching, new_key
from baton_api.nats_link import NatsLink
from baton_cli.localstack import Server
from baton_cli.main import app
from baton_contracts.nats import ACCESS_BUCKET, KeyRecord, TenantRecord
from baton_platform.nats import NatsIdentity, connect
from baton_platform.nats_access import OPS
from tests.integration.test_access_store import replica


@pytest.fixture
def as_ops(nats_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The CLI's settings: the server, as `ops`."""
    monkeypatch.setenv("BATON_NATS_URL", nats_server.url)
    monkeypatch.setenv("BATON_NATS_USER", OPS)
    monkeypatch.setenv("BATON_NATS_PASSWORD", nats_server.passwords[OPS])
    return nats_server


def baton(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_keys_and_tenants_backed_up_come_back_after_the_bucket_is_lost(
    as_ops: Server, tmp_path: Path
) -> None:
    key_id, key = new_key()
    now = datetime.now(UTC)
    asyncio.run(
        _fill(
            as_ops,
            KeyRecord(
                id=key_id,
                digest=digest_of(key),
                role="operator",
                tenant="acme",
                name="line 3",
                created_at=now,
                created_by="owner",
            ),
            TenantRecord(id="acme", name="Acme", created_at=now, created_by="owner"),
        )
    )
    backup = tmp_path / "baton-access.json"

    code, said = baton("access", "backup", str(backup))
    assert code == 0, said
    assert "1 key(s) and 1 tenant(s)" in said
    assert backup.stat().st_mode & 0o077 == 0  # hashes and tenants: the owner's only

    asyncio.run(_lose_bucket(as_ops))  # a new NATS cluster: the bucket is gone
    code, said = baton("access", "restore", str(backup))
    assert code == 0, said

    found, tenant = asyncio.run(_seen_by_an_api_replica(as_ops, key))
    assert found is not None
    assert (found.id, found.tenant, found.role) == (key_id, "acme", "operator")
    assert tenant is not None and tenant.name == "Acme"


def test_a_key_revoked_since_the_backup_stays_revoked(as_ops: Server, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    records = []
    for name in ("kept", "revoked"):
        key_id, key = new_key()
        records.append((key_id, key))
        record = KeyRecord(
            id=key_id,
            digest=digest_of(key),
            role="operator",
            tenant="acme",
            name=name,
            created_at=now,
            created_by="owner",
        )
        tenant = TenantRecord(id="acme", name="Acme", created_at=now, created_by="owner")
        asyncio.run(_fill(as_ops, record, tenant))
    backup = tmp_path / "baton-access.json"
    assert baton("access", "backup", str(backup))[0] == 0
    (kept_id, kept), (revoked_id, revoked) = records
    asyncio.run(_revoke(as_ops, revoked_id))

    code, said = baton("access", "restore", str(backup))

    assert code == 0, said
    assert f"left out 1 deleted in {ACCESS_BUCKET} since the backup" in said
    assert f"keys.{revoked_id}" in said
    assert asyncio.run(_seen_by_an_api_replica(as_ops, revoked))[0] is None
    found = asyncio.run(_seen_by_an_api_replica(as_ops, kept))[0]
    assert found is not None and found.id == kept_id


def test_a_file_that_is_not_a_backup_restores_nothing(as_ops: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    tenant = TenantRecord(id="acme", name="Acme", created_at=datetime.now(UTC), created_by="o")
    # A good entry first: every entry is checked before any is written.
    entries = {"tenants.acme": tenant.model_dump(mode="json"), "keys.k1": {"id": "k1"}}
    bad.write_text(json.dumps({"format": "baton-access/1", "entries": entries}))

    code, said = baton("access", "restore", str(bad))

    assert code == 1
    assert said.startswith("error: ") and "nothing was restored" in said
    assert "Traceback" not in said
    assert asyncio.run(_entries(as_ops)) == []


async def _fill(server: Server, key: KeyRecord, tenant: TenantRecord) -> None:
    link, access, tasks = await replica(server)
    try:
        await access.put_key(key)
        await access.put_tenant(tenant)
    finally:
        await _stop(link, tasks)


async def _revoke(server: Server, key_id: str) -> None:
    link, access, tasks = await replica(server)
    try:
        await access.delete_key(key_id)
    finally:
        await _stop(link, tasks)


async def _seen_by_an_api_replica(
    server: Server, key: str
) -> tuple[KeyRecord | None, TenantRecord | None]:
    link, access, tasks = await replica(server)
    try:
        return matching(access, key), access.tenant("acme")
    finally:
        await _stop(link, tasks)


async def _stop(link: NatsLink, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await link.close()


async def _lose_bucket(server: Server) -> None:
    nc = await connect(server.url, "test", NatsIdentity(OPS, server.passwords[OPS]))
    try:
        await nc.jetstream().delete_key_value(ACCESS_BUCKET)
    finally:
        await nc.close()


async def _entries(server: Server) -> list[str]:
    """The bucket's entries (none when it does not exist)."""
    nc = await connect(server.url, "test", NatsIdentity(OPS, server.passwords[OPS]))
    try:
        js = nc.jetstream()
        try:
            bucket = await js.key_value(ACCESS_BUCKET)
            return list(await bucket.keys())
        except Exception:  # no bucket, or no keys in it
            return []
    finally:
        await nc.close()
