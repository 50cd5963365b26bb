"""Run a service until SIGINT/SIGTERM: the shared `main()` body of every service; and the
small waits of its loops."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def run_until_signalled(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `service(stop)`; SIGINT or SIGTERM sets `stop`, and the service shuts down cleanly."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service(stop)

    asyncio.run(_main())


async def cancel_and_wait(task: asyncio.Task[Any], patience: float = 0.1) -> None:
    """Cancel `task` and wait until it has ended, cancelling again as long as it runs.

    One `cancel()` is not always enough: on Python 3.11 `asyncio.wait_for` (used inside
    nats-py's request and publish) swallows a cancellation that arrives just as the awaited
    result does, and a service loop would then run on for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=patience)
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "task %s ended with an error while stopping", task.get_name(), exc_info=task.exception()
        )


async def rest_of(gap: float, since: float) -> None:
    """Sleep what is left of `gap` seconds since `since` (a `time.monotonic()`): a loop
    that starts each turn this way runs at most once per `gap`, and waits not at all when
    its turns are further apart."""
    if (left := since + gap - time.monotonic()) > 0:
        await asyncio.sleep(left)


async def tried_until(
    call: Callable[[], Awaitable[T]],
    within: float,
    retried: type[BaseException] | tuple[type[BaseException], ...],
    pause: float = 0.0,
    when: Callable[[BaseException], bool] | None = None,
) -> T:
    """What `call()` returns, calling it again `pause` seconds after each error of `retried`
    (and, given `when`, that `when` holds for) until `within` seconds have passed; then that
    error. For answers that come a moment late in a cluster (a subject's interest still
    travelling over the routes, a leader still applying a change), where asking again
    changes nothing."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except retried as error:
            if (when is not None and not when(error)) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(pause)
