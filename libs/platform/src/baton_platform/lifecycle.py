"""Run a service until SIGINT/SIGTERM: the shared `main()` body of every service."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signalled(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `service(stop)`; SIGINT or SIGTERM sets `stop`, and the service shuts down cleanly."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service(stop)

    asyncio.run(_main())
