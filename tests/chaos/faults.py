"""The chaos run's faults: SIGKILL of each service at random moments (restarted after a
random pause), nats-server and the MQTT broker restarted gracefully (SIGTERM) and killed
(SIGKILL), and a supervisor that restarts a service that exits by itself (as systemd or
Kubernetes would), noting it.

Every process is one the run started (baton_cli.localstack.Stack), stopped by its pid.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime

from baton_cli.localstack import (
    SERVICE_MODULES,
    Server,
    Stack,
    start_mosquitto,
    start_nats,
    start_service,
)
from tests.chaos.verdict import Fault

log = logging.getLogger("chaos")

SERVERS = ("nats-server", "mqtt-broker")


@dataclass(frozen=True)
class PlannedFault:
    target: str  # a service name or one of SERVERS
    how: str  # SIGKILL | SIGTERM
    offset: float  # seconds after the load starts
    down: float  # seconds before it is started again


def plan(
    rng: random.Random,
    duration: float,
    kills: int,
    server_restarts: int,
    max_down: float,
) -> list[PlannedFault]:
    """`kills` SIGKILLs of each service and `server_restarts` SIGTERMs and SIGKILLs of each
    server, in random order, one at a random moment in each of equal slots of the window
    from 10 % to 85 % of the run (so they spread over it and the last one's effects still
    meet load)."""
    kinds = [(name, "SIGKILL") for name in SERVICE_MODULES for _ in range(kills)]
    kinds += [(server, how) for server in SERVERS for how in ("SIGTERM", "SIGKILL")] * (
        server_restarts
    )
    rng.shuffle(kinds)
    start, end = 0.10 * duration, 0.85 * duration
    slot = (end - start) / max(len(kinds), 1)
    return [
        PlannedFault(target, how, start + (i + rng.random()) * slot, rng.uniform(0.2, max_down))
        for i, (target, how) in enumerate(kinds)
    ]


class Chaos:
    """Applies faults to a running Stack and keeps every service running in between."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.faults: list[Fault] = []
        self._lock = asyncio.Lock()  # one change of the stack at a time
        self._down: set[str] = set()  # what a fault holds down on purpose

    async def run(self, planned: list[PlannedFault], started: float) -> None:
        loop = asyncio.get_running_loop()
        for fault in planned:
            await asyncio.sleep(max(0.0, started + fault.offset - loop.time()))
            await self.apply(fault)

    async def apply(self, fault: PlannedFault) -> None:
        at = datetime.now(UTC)
        async with self._lock:
            self._down.add(fault.target)
            await asyncio.to_thread(self._stop, fault.target, fault.how)
        log.info("chaos: %s %s, down %.1f s", fault.target, fault.how, fault.down)
        await asyncio.sleep(fault.down)
        async with self._lock:
            await asyncio.to_thread(self._start, fault.target)
            self._down.discard(fault.target)
        self.faults.append(Fault(fault.target, fault.how, at, datetime.now(UTC)))

    async def supervise(self, every: float = 0.5) -> None:
        """Restart a service that exited by itself (say, started while NATS was down), until
        cancelled; each exit is noted as a fault `exited <code>`."""
        while True:
            await asyncio.sleep(every)
            async with self._lock:
                dead = {name: proc.returncode for name, proc in self._processes().items()}
                for name, code in dead.items():
                    if code is None or name in self._down:
                        continue
                    log.warning("chaos: %s exited by itself (%s); restarting it", name, code)
                    at = datetime.now(UTC)
                    await asyncio.to_thread(self._start, name)
                    self.faults.append(Fault(name, f"exited {code}", at, datetime.now(UTC)))

    def _processes(self) -> dict[str, subprocess.Popen[bytes]]:
        servers = {name: self._server(name).proc for name in SERVERS}
        return {**servers, **self.stack.processes}

    def _stop(self, target: str, how: str) -> None:
        sig = signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM
        if target in SERVERS:
            server = self._server(target)
            server.proc.send_signal(sig)
            server.proc.wait(timeout=30)
            return
        proc = self.stack.processes[target]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def _start(self, target: str) -> None:
        stack = self.stack
        if target == "nats-server":
            stack.servers[0] = start_nats(stack.data_dir / "nats", stack.nats_port)
        elif target == "mqtt-broker":
            if stack.broker == "mosquitto":
                stack.servers[1] = start_mosquitto(stack.data_dir / "mosquitto", stack.mqtt_port)
            else:
                stack.servers[1] = start_nats(
                    stack.data_dir / "nats-mqtt", mqtt_port=stack.mqtt_port
                )
        else:
            # Not Stack.start: it waits for the api to listen (seconds on a busy machine),
            # which would hold up the faults after it. A service that exits while starting
            # (say, NATS is down) is started again by the supervisor.
            stack.processes[target] = start_service(
                target, stack.service_env(target), stack.log_dir
            )

    def _server(self, target: str) -> Server:
        return self.stack.servers[SERVERS.index(target)]
