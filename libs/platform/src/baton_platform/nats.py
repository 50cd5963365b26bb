"""NATS connection and JetStream streams. Every service ensures the streams it uses."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

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


async def log_disconnected() -> None:
    """nats-py's (and FastStream's) `disconnected_cb`: each lost connection in the log."""
    log.warning("disconnected from NATS")


async def log_reconnected() -> None:
    """`reconnected_cb`: the line an operator (or the chaos run) waits for after a NATS
    restart, the same in every service."""
    log.info("reconnected to NATS")


async def connect(url: str, name: str) -> Client:
    """Connect with unlimited reconnects: a NATS restart must not end a service."""
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=log_disconnected,
        reconnected_cb=log_reconnected,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    for config in STREAMS:
        try:
            await js.add_stream(config=config)
        except BadRequestError:
            # Already there with other settings: bring it in line.
            await js.update_stream(config=config)
