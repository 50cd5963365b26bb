"""`baton nats-replicate-events --snapshot FILE`: give `BATON_EVENTS` copies on every node
when a stack whose events stream was made with BATON_NATS_EVENTS_PERSIST=async grows into a
JetStream cluster.

nats-server keeps such a stream on one server and never changes its mode, so the
dispatcher's start cannot replicate it in place (it stops, naming this command). This
copies it anew (`baton_platform.stream_copy`): the snapshot written to FILE first, the
stream deleted, then restored with `--replicas` copies and the default persist mode, its
messages, their sequences and its consumers' positions kept. Run again after an interruption,
it finishes from FILE. Connects as `ops` (BATON_NATS_URL, BATON_NATS_CREDENTIALS or
BATON_NATS_PASSWORD). docs/operations.md, "NATS cluster".
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from nats.js.errors import NotFoundError

from baton_cli.api_client import EXIT_PROBLEM, fail
from baton_contracts.nats import EVENTS_STREAM
from baton_platform.nats import connect, identity
from baton_platform.nats_access import OPS
from baton_platform.settings import Settings
from baton_platform.stream_copy import Snapshot, StreamCopyError, copy_anew


async def _replicate(settings: Settings, snapshot: Snapshot, replicas: int) -> str:
    """What was done, in one line; StreamCopyError when a step failed."""
    nc = await connect(settings.nats_url, "baton-cli", identity(settings, OPS))
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            info = None  # not there: an interrupted copy, finished from the file
        if info is not None and info.config.persist_mode is None:
            return (
                f"{EVENTS_STREAM} keeps the default persist mode: the dispatcher's start"
                " with BATON_NATS_REPLICAS replicates it in place; nothing to do"
            )
        made = await copy_anew(
            nc, EVENTS_STREAM, snapshot, {"num_replicas": replicas, "persist_mode": None}
        )
        state = made.get("state", {})
        return (
            f"{EVENTS_STREAM}: {state.get('messages')} messages up to sequence"
            f" {state.get('last_seq')}, now with {replicas} replicas (snapshot kept in"
            f" {snapshot.path})"
        )
    finally:
        await nc.close()


def nats_replicate_events(
    snapshot: Annotated[
        Path,
        typer.Option(
            "--snapshot",
            help="where the stream's snapshot is written before the stream is deleted "
            "(kept afterwards; a run interrupted after the delete finishes from it)",
        ),
    ],
    replicas: Annotated[
        int, typer.Option("--replicas", min=2, max=5, help="copies, one per node")
    ] = 3,
) -> None:
    """Replicate BATON_EVENTS made with BATON_NATS_EVENTS_PERSIST=async (one server only)
    onto a cluster's nodes: stop the services first, run this once the cluster is up, then
    start them with BATON_NATS_REPLICAS and without BATON_NATS_EVENTS_PERSIST=async."""
    try:
        done = asyncio.run(_replicate(Settings(), Snapshot(snapshot), replicas))
    except StreamCopyError as exc:
        fail(f"not replicated: {exc}", EXIT_PROBLEM)
    typer.echo(done)
