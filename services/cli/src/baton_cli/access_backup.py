"""`baton access backup FILE` and `baton access restore FILE`: the API keys and tenants of the
bucket BATON_ACCESS, copied out and back (docs/operations.md, "Backup and restore").

They are kept nowhere else, and only as hashes, so a bucket lost with its NATS cluster cannot
be rebuilt: this copies its entries (`keys.<id>`, `tenants.<id>`) to a file (mode 0600) and
puts them back into the bucket, made if missing with BATON_NATS_REPLICAS copies as the api
makes it. The api replicas watch the bucket, so a restore may run before or after they start.
Every entry of the file is checked before any is written: a file that is not a backup changes
nothing. Connects as `ops` (BATON_NATS_URL, BATON_NATS_CREDENTIALS or BATON_NATS_PASSWORD),
as `nats-replicate-events` does, and needs no `nats` CLI.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import nats.errors
import typer
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from baton_cli.api_client import EXIT_PROBLEM, EXIT_UNREACHABLE, fail
from baton_contracts.nats import ACCESS_BUCKET, KeyRecord, TenantRecord
from baton_platform.nats import connect, ensure_bucket, identity
from baton_platform.nats_access import OPS, write_private
from baton_platform.settings import Settings

access_app = typer.Typer(
    help="Back up and restore the API keys and tenants (the bucket BATON_ACCESS).",
    no_args_is_help=True,
)

FORMAT = "baton-access/1"
RECORDS: dict[str, type[KeyRecord] | type[TenantRecord]] = {
    "keys": KeyRecord,
    "tenants": TenantRecord,
}  # an entry's kind: its record
NATS_S = 30.0  # the whole copy; NATS not answering by then is said so


async def _bucket(settings: Settings) -> tuple[Client, KeyValue]:
    nc = await connect(settings.nats_url, "baton-cli", identity(settings, OPS))
    js = nc.jetstream()
    return nc, await ensure_bucket(js, ACCESS_BUCKET, history=1, replicas=settings.nats_replicas)


async def _entries(bucket: KeyValue) -> dict[str, Any]:
    try:
        names = await bucket.keys()
    except NoKeysError:
        return {}
    entries = {}
    for name in sorted(names):
        try:
            entry = await bucket.get(name)
        except KeyNotFoundError:
            continue  # deleted since the listing
        if entry.value:
            entries[name] = json.loads(entry.value)
    return entries


async def _backup(settings: Settings) -> dict[str, Any]:
    nc, bucket = await _bucket(settings)
    try:
        return await _entries(bucket)
    finally:
        await nc.close()


async def _restore(settings: Settings, values: dict[str, bytes]) -> list[str]:
    """Put the entries back; returns those left out: deleted in the bucket since the
    backup (a key revoked then must stay revoked)."""
    nc, bucket = await _bucket(settings)
    left_out = []
    try:
        for name, value in values.items():
            try:
                await bucket.get(name)
            except KeyNotFoundError as exc:
                # nats-py says a deleted key is not found, with the delete marker's op: that
                # marker means revoked after the backup was made. No op: never there (or
                # the bucket is new), so put it back.
                if exc.op is not None:
                    left_out.append(name)
                    continue
            await bucket.put(name, value)
    finally:
        await nc.close()
    return left_out


def checked(document: Any) -> dict[str, bytes]:
    """The entries of a backup, each as the api writes it; ValueError naming what is wrong."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not a backup of `baton access backup` (format {FORMAT!r})")
    entries = document.get("entries")
    if not isinstance(entries, dict):
        raise ValueError("no `entries` object")
    values = {}
    for name, record in entries.items():
        kind, _, key = str(name).partition(".")
        model = RECORDS.get(kind)
        if model is None or not key:
            raise ValueError(f"entry {name!r}: not keys.<id> or tenants.<id>")
        try:
            parsed = model.model_validate(record)
        except ValidationError as exc:
            raise ValueError(f"entry {name!r}: {exc.errors()[0]['msg']}") from None
        if parsed.id != key:
            raise ValueError(f"entry {name!r} holds the record of {parsed.id!r}")
        values[name] = parsed.model_dump_json().encode()
    return values


def _run(work: Any) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(work, NATS_S))
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        fail(f"error: NATS did not answer ({exc or type(exc).__name__})", EXIT_UNREACHABLE)


@access_app.command("backup")
def backup(
    file: Annotated[Path, typer.Argument(help="Where to write the backup (JSON, mode 0600).")],
) -> None:
    """Copy every API key (its hash) and tenant of BATON_ACCESS to FILE."""
    entries = _run(_backup(Settings()))
    write_private(file, json.dumps({"format": FORMAT, "entries": entries}, indent=1) + "\n")
    keys = sum(1 for name in entries if name.startswith("keys."))
    typer.echo(f"{keys} key(s) and {len(entries) - keys} tenant(s) of {ACCESS_BUCKET} in {file}")


@access_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="A file of `baton access backup`.")],
) -> None:
    """Put every API key and tenant of FILE back into BATON_ACCESS (the entries it has
    besides are kept; one deleted there since the backup, a revoked key, stays deleted)."""
    try:
        values = checked(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        fail(f"error: {file}: {exc}; nothing was restored", EXIT_PROBLEM)
    left_out: list[str] = _run(_restore(Settings(), values))
    typer.echo(f"restored {len(values) - len(left_out)} entries of {file} into {ACCESS_BUCKET}")
    if left_out:
        typer.echo(
            f"left out {len(left_out)} deleted in {ACCESS_BUCKET} since the backup (a key "
            f"revoked then stays revoked): {', '.join(left_out)}"
        )
