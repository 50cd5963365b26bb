"""NATS connection and JetStream streams. Every service ensures the streams it uses."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PersistMode, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from baton_contracts.nats import (
    DEAD_LETTERS_PREFIX,
    DEAD_LETTERS_STREAM,
    EVENTS_STREAM,
    EVENTS_WILDCARD,
    REPORTS_STREAM,
    REPORTS_WILDCARD,
    WATERMARKS_STREAM,
    WATERMARKS_WILDCARD,
)
from baton_platform.lifecycle import tried_until
from baton_platform.nats_access import BUCKET_PROBE_KEY, inbox_prefix, read_credentials
from baton_platform.settings import Settings

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0

STREAMS = (
    # Every lifecycle event, in notification order. Limits retention: consumers are
    # durable and independent; the event store stays the source of truth.
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENTS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=30 * 24 * 3600.0,
    ),
    # Device reports from the bridge to the dispatcher (the only consumer).
    StreamConfig(
        name=REPORTS_STREAM,
        subjects=[REPORTS_WILDCARD],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=7 * 24 * 3600.0,
    ),
    # Each device-bridge's latest watermark, read by the dispatcher before a deadline. A
    # bridge silent for a week is forgotten: by then the broker has ended its session too.
    StreamConfig(
        name=WATERMARKS_STREAM,
        subjects=[WATERMARKS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        allow_direct=True,
        max_age=7 * 24 * 3600.0,
    ),
    # Messages a service gave up on, with the reason in a header, kept for inspection.
    StreamConfig(
        name=DEAD_LETTERS_STREAM,
        subjects=[f"{DEAD_LETTERS_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600.0,
    ),
)


def is_refusal(exc: Exception) -> bool:
    """Whether nats-server refused something this user may not do (its permissions)."""
    return "permissions violation" in str(exc).lower()


async def log_nats_error(exc: Exception) -> None:
    """nats-py's `error_cb`, one line each: a permissions violation (a subject this user may
    not publish or subscribe to, a bug in a service; nats-server logs it too) as an error,
    other errors (connection attempts during an outage) as warnings. A reply refused on an
    inbox is a warning too: after a reconnect, the server no longer lets this connection
    answer a request that came over the one before (response permissions are kept per
    connection); the requester gets no answer and retries, as after any lost reply."""
    if is_refusal(exc) and 'publish to "_inbox.' in str(exc).lower():
        log.warning("NATS refused a reply (a request from before a reconnect): %s", exc)
    elif is_refusal(exc):
        log.error("NATS refused: %s", exc)
    else:
        log.warning("NATS error: %s", exc)


async def log_disconnected() -> None:
    """nats-py's (and FastStream's) `disconnected_cb`: each lost connection in the log."""
    log.warning("disconnected from NATS")


async def log_reconnected() -> None:
    """`reconnected_cb`: the line an operator (or the chaos run) waits for after a NATS
    restart, the same in every service."""
    log.info("reconnected to NATS")


@dataclass(frozen=True)
class NatsIdentity:
    """Who a service is on NATS: its user, password and inbox prefix (docs/security.md).
    `password` is never logged (not in `repr`)."""

    user: str | None
    password: str | None = field(default=None, repr=False)
    # TLS to the server, checking its certificate (BATON_NATS_CA_FILE); None: as the URL says.
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def options(self) -> dict[str, Any]:
        """nats-py's `connect` keyword arguments for this identity."""
        secure = {} if self.tls is None else {"tls": self.tls}
        if self.user is None:
            return secure
        return {
            "user": self.user,
            "password": self.password,
            "inbox_prefix": inbox_prefix(self.user),
            **secure,
        }


def identity(settings: Settings, service: str) -> NatsIdentity:
    """`service`'s NATS identity: BATON_NATS_USER (default `service`) with BATON_NATS_PASSWORD,
    or its password from the BATON_NATS_CREDENTIALS file. Neither: anonymous, for a
    nats-server without authorization (warned: Baton's own servers refuse it)."""
    user = settings.nats_user or service
    tls = None
    if settings.nats_ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.nats_ca_file))
    if settings.nats_password is not None:
        return NatsIdentity(user, settings.nats_password.get_secret_value(), tls)
    if settings.nats_credentials is not None:
        passwords = read_credentials(settings.nats_credentials)
        if user not in passwords:
            raise ValueError(f"no NATS user {user!r} in {settings.nats_credentials}")
        return NatsIdentity(user, passwords[user], tls)
    log.warning(
        "no NATS credentials (BATON_NATS_PASSWORD, BATON_NATS_CREDENTIALS): connecting as "
        "no one, which only a nats-server without authorization accepts"
    )
    return NatsIdentity(None, tls=tls)


def redacted(url: str) -> str:
    """`url` without the credentials someone may have put in it, for logs."""
    return re.sub(r"//[^/@,]*@", "//", url)


def server_urls(url: str) -> list[str]:
    """BATON_NATS_URL as the servers list nats-py and FastStream take: one server, or a
    cluster's nodes comma-separated (nats-py would read a comma-separated string as one
    malformed URL). A client that knows every node reconnects to another when its own dies,
    before it has learnt the others from the server."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("BATON_NATS_URL names no server")
    return servers


async def connect(url: str, name: str, who: NatsIdentity) -> Client:
    """Connect as `who` to the server(s) of `url` (comma-separated: a cluster's nodes), with
    unlimited reconnects: a NATS restart, or a cluster node's death, must not end a service."""
    log.info("connecting to NATS at %s as %s", redacted(url), who.user or "no one")
    return await nats.connect(
        server_urls(url),
        name=name,
        **who.options(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=log_nats_error,
        disconnected_cb=log_disconnected,
        reconnected_cb=log_reconnected,
    )


async def synced(client: Client) -> None:
    """Once this returns, the server has every command `client` sent before (its SUBs,
    UNSUBs and PUBs). `Client.flush()` alone does not promise that: nats-py 2.16 writes the
    flush's PING straight to the socket, ahead of the commands still waiting for its
    flusher task, so the PONG can come back before the server has seen them (a subscription
    made just before missed the next messages). So the flusher is waited for first (a
    private nats-py call: no public one waits for it)."""
    await client._flush_pending(force_flush=True)
    await client.flush()


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, events_persist: str = "default"
) -> None:
    """Create the streams with `replicas` copies each (BATON_NATS_REPLICAS), or bring them
    in line: the dispatcher's job (only its NATS user may); the other services wait for
    theirs (`wait_for_streams`). An update keeps a stream's messages and its consumers:
    going from 1 to 3 replicas, the server copies the stream to two more nodes, and the
    consumers (which follow their stream's count) with it.

    `events_persist` (BATON_NATS_EVENTS_PERSIST) is the events stream's persist mode when
    it is made; nats-server never changes a stream's mode, so one made before keeps its
    own, and one made `async` cannot take more than one replica (refused, with why)."""
    for config in STREAMS:
        config = replace(config, num_replicas=replicas)
        if config.name == EVENTS_STREAM and events_persist != "default":
            config = replace(config, persist_mode=PersistMode(events_persist))
        name = config.name
        assert name is not None
        try:
            await _answered(f"creating stream {name}", partial(js.add_stream, config=config))
        except BadRequestError:
            # Already there with other settings: bring it in line, its mode as it is.
            made = (await _answered(f"reading stream {name}", partial(js.stream_info, name))).config
            if made.persist_mode != config.persist_mode:
                log.warning(
                    "stream %s keeps persist mode %s (nats-server never changes it;"
                    " BATON_NATS_EVENTS_PERSIST applies to a stream made anew)",
                    config.name,
                    made.persist_mode or "default",
                )
                config = replace(config, persist_mode=made.persist_mode)
            if config.persist_mode == PersistMode.ASYNC and replicas > 1:
                raise RuntimeError(
                    f"stream {config.name} was made with persist mode async, which"
                    f" nats-server keeps on one server only: to give it {replicas} replicas,"
                    " run `baton nats-replicate-events` (docs/operations.md, NATS cluster)"
                ) from None
            await _answered(f"updating stream {name}", partial(js.update_stream, config=config))


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    history: int,
    replicas: int = 1,
    ttl: float | None = None,
) -> KeyValue:
    """The key-value bucket `bucket` (entries kept `ttl` seconds, None: for ever), created
    with `replicas` copies, or, if it is there with another count (made before
    BATON_NATS_REPLICAS changed), scaled to it in place: nats-py's `create_key_value` only
    creates. Its entries are kept."""
    create = partial(
        js.create_key_value, bucket=bucket, history=history, replicas=replicas, ttl=ttl
    )
    try:
        made = await _answered(f"creating bucket {bucket}", create)
    except BadRequestError:
        stream = f"KV_{bucket}"
        config = (
            await _answered(f"reading stream {stream}", partial(js.stream_info, stream))
        ).config
        if config.num_replicas != replicas:
            config = replace(config, num_replicas=replicas)
            await _answered(f"updating stream {stream}", partial(js.update_stream, config=config))
        return await _answered(f"opening bucket {bucket}", partial(js.key_value, bucket))
    await _until_writable(js, bucket)  # made just now
    return made


T = TypeVar("T")

# How long setting up the streams and buckets asks a JetStream that cannot answer yet: a
# cluster without a meta leader (starting, or most of its nodes down) gives no answer or a
# 503 until it has one, and one just formed may not yet count every node online ("no
# suitable peers for placement"). Each request is safe to repeat (a stream made as asked is
# made again without error). After that, the error: the service stops, its supervisor
# starts it again.
SETUP_WITHIN_S = 60.0
NO_PEERS_FOR_PLACEMENT = 10005  # nats-server's JSClusterNoPeersErr


_NOT_YET = (nats.errors.TimeoutError, APIError)  # those `_not_answerable_yet` holds for


def _not_answerable_yet(error: BaseException) -> bool:
    if isinstance(error, nats.errors.TimeoutError | ServiceUnavailableError):
        return True
    return isinstance(error, APIError) and error.err_code == NO_PEERS_FOR_PLACEMENT


async def _answered(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`'s answer, asked again while JetStream cannot give one yet (logged once)."""
    told = False

    async def once() -> T:
        nonlocal told
        try:
            return await call()
        except _NOT_YET as error:
            if not told and _not_answerable_yet(error):
                log.warning(
                    "no answer from JetStream %s (%s: a cluster electing its leader?);"
                    " asking again for up to %.0f s",
                    what,
                    (error.description if isinstance(error, APIError) else None)
                    or type(error).__name__,
                    SETUP_WITHIN_S,
                )
                told = True
            raise

    return await tried_until(
        once, SETUP_WITHIN_S, _NOT_YET, pause=STREAM_WAIT_S, when=_not_answerable_yet
    )


# How long a stream or bucket just made may take to take writes from every node.
BUCKET_READY_S = 10.0
# A compare-and-set no entry can meet: the server refuses it, and so stores nothing.
_NEVER = {"Nats-Expected-Last-Subject-Sequence": str(2**62)}


async def _until_writable(js: JetStreamContext, bucket: str) -> None:
    await until_writable(js, f"$KV.{bucket}.{BUCKET_PROBE_KEY}")


async def until_writable(js: JetStreamContext, subject: str) -> None:
    """Return once a write on `subject` reaches its stream from this connection. In a
    cluster, a stream just made may live on another node, whose interest in its subjects
    reaches ours over the routes a moment after the answer that made it: a write meanwhile
    gets "no responders" (seen in tests: the first put after creating a one-replica bucket
    on a 3-node cluster, and the first publish to BATON_EVENTS just made with 3 replicas).
    nats.go's JetStream publish retries on that; nats-py's does not. The probe is a write
    the server refuses, so nothing is stored."""

    async def probe() -> None:
        try:
            await js.publish(subject, b"", headers=dict(_NEVER))
        except APIError:
            return  # refused by the stream: it is there, and takes our writes
        raise RuntimeError(f"the stream of {subject} stored the probe it should have refused")

    await tried_until(probe, BUCKET_READY_S, NoStreamResponseError, pause=0.05)


STREAM_WAIT_S = 0.5


async def wait_for_streams(js: JetStreamContext, names: Iterable[str]) -> None:
    """Return once every stream of `names` exists: they are the dispatcher's to create, and
    a consumer or a publish before that would fail. Logged once while it waits."""
    for name in names:
        told = False
        while True:
            try:
                await js.stream_info(name)
                break
            except (NotFoundError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if not told:
                    log.info("waiting for stream %s (the dispatcher creates it)", name)
                    told = True
                await asyncio.sleep(STREAM_WAIT_S)
