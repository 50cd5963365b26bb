"""Make a JetStream stream anew with another configuration, keeping its messages, their
sequences and its consumers' positions: nats-server's snapshot and restore.

nats-server never changes a stream's persist mode, and keeps a stream made with
`persist_mode: async` (BATON_NATS_EVENTS_PERSIST=async) on one server only. To replicate
such a stream when the stack grows into a cluster it is copied out (a snapshot, written to
a file first), deleted, and restored with the new configuration: `baton
nats-replicate-events`, docs/operations.md. A copy interrupted after the delete is finished
from the file.

The snapshot protocol (nats-server's `$JS.API.STREAM.SNAPSHOT` and `RESTORE`, as the `nats`
CLI speaks it): the server sends the snapshot in chunks to a subject of ours, each to be
answered (its flow control), and ends with an empty message; a restore takes the chunks as
requests to the subject the server names, and an empty request ends it, answered with the
stream's info or an error.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from baton_platform.lifecycle import tried_until

API = "$JS.API"
CHUNK = 128 * 1024
ANSWER_S = 10.0  # the server's answer to one request of the protocol
LOOK_S = 1.0  # one look at whether the stream is there, asked again until ANSWER_S
SNAPSHOT_S = 600.0  # a whole snapshot


class StreamCopyError(Exception):
    """The server refused a step, or the copy is not whole; the message says which."""


@dataclass(frozen=True)
class Snapshot:
    """A stream's snapshot on disk: the server's archive, and beside it (`.json`) the
    stream's configuration and state when it was taken."""

    path: Path

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def exists(self) -> bool:
        return self.path.exists() and self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads(self.meta_path.read_text())
        return meta


async def _call(nc: Client, subject: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
    """One request of the JetStream API; its JSON answer, or StreamCopyError."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await nc.request(subject, data, ANSWER_S)
    answer: dict[str, Any] = json.loads(reply.data) if reply.data else {}
    if "error" in answer:
        error = answer["error"]
        raise StreamCopyError(f"{subject}: {error.get('description', error)}")
    return answer


def _write_synced(path: Path, data: bytes) -> None:
    """`data` in `path`, on disk before this returns (the stream is deleted next)."""
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


async def take_snapshot(nc: Client, stream: str, snapshot: Snapshot) -> dict[str, Any]:
    """Write `stream`'s snapshot, its consumers included, to `snapshot` as it comes (a
    month of events need not fit in memory), on disk before this returns; the stream's
    configuration and state as the server gave them."""
    inbox = nc.new_inbox()
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with snapshot.path.open("wb") as out:

        async def on_chunk(msg: Msg) -> None:
            if ended.done():
                return
            if not msg.data:
                status = (msg.headers or {}).get("Status")
                if status and not status.startswith("2"):
                    description = (msg.headers or {}).get("Description", "")
                    ended.set_exception(StreamCopyError(f"snapshot ended: {status} {description}"))
                else:
                    ended.set_result(None)
                return
            out.write(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, b"")

        subscription = await nc.subscribe(inbox, cb=on_chunk)
        try:
            meta = await _call(
                nc,
                f"{API}.STREAM.SNAPSHOT.{stream}",
                {"deliver_subject": inbox, "chunk_size": CHUNK},
            )
            await asyncio.wait_for(ended, SNAPSHOT_S)
        finally:
            await subscription.unsubscribe()
        out.flush()
        os.fsync(out.fileno())
    taken = {"config": meta["config"], "state": meta["state"]}
    _write_synced(snapshot.meta_path, json.dumps(taken).encode())
    return taken


async def restore(nc: Client, snapshot: Snapshot, config: dict[str, Any]) -> dict[str, Any]:
    """Make the stream of `snapshot` anew with `config`, from the snapshot; its info."""
    meta = snapshot.meta()
    stream = config["name"]
    answer = await _call(
        nc, f"{API}.STREAM.RESTORE.{stream}", {"config": config, "state": meta["state"]}
    )
    deliver = answer["deliver_subject"]
    with snapshot.path.open("rb") as archive:
        while chunk := archive.read(CHUNK):
            await _send_chunk(nc, deliver, chunk)
    return await _send_chunk(nc, deliver, b"")


async def _send_chunk(nc: Client, deliver: str, chunk: bytes) -> dict[str, Any]:
    """One chunk of a restore. In a cluster the node taking the restore may not be ours,
    and its subscription reaches our node over the routes a moment after the answer that
    named it (seen: "no responders" for the first chunk): tried again meanwhile, as a chunk
    nobody received."""
    try:
        return await tried_until(
            lambda: _call(nc, deliver, chunk), ANSWER_S, NoRespondersError, pause=0.05
        )
    except NoRespondersError:
        raise StreamCopyError(f"nobody takes the restore on {deliver}") from None


async def _there(nc: Client, stream: str) -> bool:
    """Whether `stream` exists. In a cluster, a stream deleted a moment ago may leave a
    look unanswered: the meta leader that has not yet applied the delete leaves the answer
    to the stream's leader, which has already dropped the stream (seen: a copy started
    right after one stopped past its delete got no answer in 5 s). Only looks are asked
    again: they change nothing."""

    async def look() -> bool:
        try:
            await nc.jetstream(timeout=LOOK_S).stream_info(stream)
        except NotFoundError:
            return False
        return True

    return await tried_until(look, ANSWER_S, nats.errors.TimeoutError)


async def copy_anew(
    nc: Client, stream: str, snapshot: Snapshot, changes: dict[str, Any]
) -> dict[str, Any]:
    """`stream` made anew with `changes` to its configuration (None: the setting dropped,
    the server's default), its messages, sequences and consumers kept; its info after.

    The snapshot goes to disk before the stream is deleted. When the stream is not there and
    the snapshot is, the copy was interrupted after the delete: it is restored from the file.
    """
    if await _there(nc, stream):
        meta = await take_snapshot(nc, stream, snapshot)
        await _call(nc, f"{API}.STREAM.DELETE.{stream}", {})
    elif snapshot.exists():
        meta = snapshot.meta()
    else:
        raise StreamCopyError(f"stream {stream} does not exist and {snapshot.path} holds no copy")
    config = dict(meta["config"])
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    try:
        info = await restore(nc, snapshot, config)
    except (StreamCopyError, nats.errors.Error) as exc:
        raise StreamCopyError(
            f"{exc}; stream {stream} is deleted and its copy is in {snapshot.path}:"
            " run again to restore it from there"
        ) from exc
    want, got = meta["state"], info.get("state", {})
    if got.get("last_seq") != want.get("last_seq") or got.get("messages") != want.get("messages"):
        raise StreamCopyError(
            f"stream {stream} restored with {got.get('messages')} messages up to"
            f" {got.get('last_seq')}; the snapshot had {want.get('messages')} up to"
            f" {want.get('last_seq')}"
        )
    return info
