"""The chaos run's faults: SIGKILL of each service at random moments (restarted after a
random pause), nats-server and the MQTT broker restarted gracefully (SIGTERM) and killed
(SIGKILL), and a supervisor that restarts a service that exits by itself (as systemd or
Kubernetes would), noting it.

One fault at a time: before each, the run waits (at most RECOVERY_WAIT_S) until the stack
has recovered from the one before (`Recovery`): every process alive, every service ready
since its last start, and connected again since the last restart of a server it uses. A
fault never lands on a stack still recovering from another, so two faults never overlap.

Every process is one the run started (baton_cli.localstack.Stack), stopped by its pid.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import nats.errors

from baton_cli.localstack import (
    READY_LINES,
    SERVICE_MODULES,
    PostgresServer,
    Server,
    Stack,
    replica_of,
)
from baton_platform.nats_access import OPS
from tests.chaos.verdict import Fault

log = logging.getLogger("chaos")

SERVERS = ("nats-server", "mqtt-broker")  # the plain stack's; a cluster's: `servers_of`
RECOVERY_WAIT_S = 30.0

# What each service logs once connected again after a server it uses was restarted. A
# cluster's NATS node or PostgreSQL: none (the services connected to that node move to the
# others; the store's connections are opened again at their next use).
RECONNECTED_LINES = {
    "nats-server": dict.fromkeys(SERVICE_MODULES, "reconnected to NATS"),
    "mqtt-broker": {"device-bridge": "connected to MQTT "},
}


def servers_of(stack: Stack, postgres: PostgresServer | None = None) -> dict[str, Server]:
    """The stack's servers by the name a fault gives them: `nats-server` and `mqtt-broker`,
    or for a cluster `nats-n1`.. and `mqtt-broker`, and `postgres` when there is one."""
    nats = stack.nats_servers
    named = {"nats-server": nats[0]} if len(nats) == 1 else {f"nats-{s.name}": s for s in nats}
    named["mqtt-broker"] = stack.servers[len(nats)]
    if postgres is not None:
        named["postgres"] = postgres
    return named


def single_kinds(kills: int, server_restarts: int) -> list[tuple[str, str]]:
    """The plain stack's faults: `kills` SIGKILLs of each service, `server_restarts` SIGTERMs
    and SIGKILLs of each server."""
    kinds = [(name, "SIGKILL") for name in SERVICE_MODULES for _ in range(kills)]
    kinds += [(server, how) for server in SERVERS for how in ("SIGTERM", "SIGKILL")] * (
        server_restarts
    )
    return kinds


def cluster_kinds(stack: Stack, rng: random.Random, kills: int) -> list[tuple[str, str]]:
    """A replicated stack's faults: `kills` times, one replica of each service and one NATS
    node SIGKILLed, and PostgreSQL restarted (its fast shutdown, SIGINT)."""
    kinds: list[tuple[str, str]] = []
    for _ in range(kills):
        for service in SERVICE_MODULES:
            replicas = [n for n in stack.names if replica_of(n)[0] == service]
            kinds.append((rng.choice(replicas), "SIGKILL"))
        kinds.append((f"nats-{rng.choice(stack.nats_servers).name}", "SIGKILL"))
        kinds.append(("postgres", "SIGINT"))
    return kinds


# How long one replica each of the dispatcher and the device-bridge stays down in a cluster
# run: well past its leases' TTL (baton_platform.leases.TTL_S, 6 s), so its partitions and
# its bridge slot are taken over by the other replica under load (within ~6-7.5 s), and given
# back when it returns.
TAKEOVER_DOWN_S = 15.0
TAKEN_OVER = frozenset({"dispatcher", "device-bridge"})


def with_takeovers(planned: list[PlannedFault]) -> list[PlannedFault]:
    """`planned`, the dispatcher's and the bridge's replicas down for TAKEOVER_DOWN_S."""
    return [
        replace(fault, down=TAKEOVER_DOWN_S) if replica_of(fault.target)[0] in TAKEN_OVER else fault
        for fault in planned
    ]


@dataclass(frozen=True)
class PlannedFault:
    target: str  # a service name or one of SERVERS
    how: str  # SIGKILL | SIGTERM
    offset: float  # seconds after the load starts
    down: float  # seconds before it is started again


def plan(
    rng: random.Random,
    duration: float,
    kinds: list[tuple[str, str]],
    max_down: float,
) -> list[PlannedFault]:
    """The faults `kinds` ((target, signal) pairs: `single_kinds`, `cluster_kinds`), in
    random order, one at a random moment in each of equal slots of the window from 10 % to
    85 % of the run (so they spread over it and the last one's effects still meet load).
    Chaos.run holds one back while the stack recovers from the one before."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    start, end = 0.10 * duration, 0.85 * duration
    slot = (end - start) / max(len(kinds), 1)
    return [
        PlannedFault(target, how, start + (i + rng.random()) * slot, rng.uniform(0.2, max_down))
        for i, (target, how) in enumerate(kinds)
    ]


@dataclass
class Recovery:
    """Whether the stack has recovered: what each service still has to log, as (log offset,
    line) pairs (a line counts only if written after its offset), beside the checks that
    need no memory (processes alive, servers accepting connections, the api's /ready)."""

    stack: Stack
    expected: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # Every server by its name (`servers_of`); None: the plain stack's two.
    servers: dict[str, Server] | None = None
    # nats-server was restarted: its clients reconnect as soon as it listens, but JetStream
    # answers only once it has recovered its streams (and stops answering first on SIGTERM).
    jetstream_pending: bool = False

    def started(self, name: str, offset: int | None = None) -> None:
        """Service `name` was (or is about to be) started: it has to become ready again,
        which also covers any server restarted before (a new process connects afresh)."""
        at = self._size(name) if offset is None else offset
        self.expected[name] = [(at, line) for line in READY_LINES[replica_of(name)[0]]]

    def server_stopped(self, server: str) -> None:
        """`server` was stopped: each service that uses it has to connect again, in lines
        written from now on (a connection before the stop is to the old server)."""
        for service, line in RECONNECTED_LINES.get(server, {}).items():
            for name in self._processes_of(service):
                self.expected.setdefault(name, []).append((self._size(name), line))
        if server.startswith("nats-"):
            self.jetstream_pending = True

    def _processes_of(self, service: str) -> list[str]:
        """The processes of `service`: itself, or its replicas."""
        if self.stack.replicas == 1:
            return [service]
        return [name for name in self.stack.names if replica_of(name)[0] == service]

    def missing(self) -> list[str]:
        """What has not recovered yet; empty when everything has."""
        stack = self.stack
        missing = [f"{n} not running" for n, p in stack.processes.items() if p.poll() is not None]
        servers = self.servers or dict(zip(SERVERS, stack.servers, strict=True))
        for name, server in servers.items():
            if server.proc.poll() is not None or not _accepts(server.port):
                missing.append(f"{name} not accepting connections")
        for name, lines in self.expected.items():
            if not lines:
                continue
            base = min(at for at, _ in lines)
            text = _read_from(self._log(name), base)
            lines[:] = [(at, line) for at, line in lines if line.encode() not in text[at - base :]]
            missing += [f"{name}: no {line!r} yet" for _, line in lines]
        if any(replica_of(n)[0] == "api" for n in stack.processes) and not _ready(stack.api_url):
            missing.append("api: /ready not 200")
        return missing

    async def wait(self, timeout: float = RECOVERY_WAIT_S) -> tuple[float, list[str], list[str]]:
        """Wait until everything has recovered, or `timeout`: how long it took, what had not
        recovered when the wait began, and what still had not when it gave up (empty:
        recovered)."""
        start = time.monotonic()
        first: list[str] | None = None
        while True:
            missing = await asyncio.to_thread(self.missing)
            if self.jetstream_pending:
                self.jetstream_pending = not await _jetstream_answers(self.stack.nats_url_as(OPS))
                if self.jetstream_pending:
                    missing.append("nats-server: JetStream not answering")
            first = missing if first is None else first
            waited = time.monotonic() - start
            if not missing or waited >= timeout:
                return waited, first, missing
            await asyncio.sleep(0.1)

    def _log(self, name: str) -> Path:
        return self.stack.log_dir / f"{name}.log"

    def _size(self, name: str) -> int:
        path = self._log(name)
        return path.stat().st_size if path.exists() else 0


def _read_from(path: Path, offset: int) -> bytes:
    if not path.exists():
        return b""
    with path.open("rb") as log_file:
        log_file.seek(offset)
        return log_file.read()


async def _jetstream_answers(url: str) -> bool:
    async def quiet(_exc: Exception) -> None:  # nats-py logs each error by default
        return

    try:
        client = await nats.connect(
            url, allow_reconnect=False, connect_timeout=1, error_cb=quiet, name="baton-chaos"
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    try:
        await client.jetstream(timeout=1).account_info()
        return True
    except (nats.errors.Error, TimeoutError):
        return False
    finally:
        await client.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class RecoveryWait:
    """How long the stack took to recover from `after` (a fault, or the start), and what had
    still not recovered when the wait gave up (empty: it recovered)."""

    after: str
    seconds: float
    missing: tuple[str, ...] = ()


class Chaos:
    """Applies faults to a running Stack, one at a time, and keeps every service running in
    between."""

    def __init__(self, stack: Stack, servers: dict[str, Server] | None = None) -> None:
        self.stack = stack
        self.servers = servers or servers_of(stack)
        self.faults: list[Fault] = []
        self.recovery = Recovery(stack, servers=self.servers)
        for name in stack.processes:
            if replica_of(name)[0] in SERVICE_MODULES:
                self.recovery.started(name, offset=0)  # each wrote its log from the start
        self.waits: list[RecoveryWait] = []
        self.delays: list[float] = []  # how late each fault came, past its planned moment
        self.done_at: float | None = None  # loop time the stack recovered from the last one
        self._lock = asyncio.Lock()  # one change of the stack at a time
        self._down: set[str] = set()  # what a fault holds down on purpose

    async def run(self, planned: list[PlannedFault], started: float) -> None:
        """Each fault at its planned moment, or as soon as the stack has recovered from the
        one before if that takes longer (then the faults after it may come late too)."""
        loop = asyncio.get_running_loop()
        await self.recover("the start")
        for fault in planned:
            await asyncio.sleep(max(0.0, started + fault.offset - loop.time()))
            # Again right before it: a service may have exited by itself since.
            await self.recover(None)
            self.delays.append(max(0.0, loop.time() - started - fault.offset))
            done = await self.apply(fault)
            recovered = await self.recover(f"{fault.target} {fault.how}")
            self.faults.append(replace(done, ready=datetime.now(UTC) if recovered else None))
        self.done_at = loop.time()

    async def recover(self, after: str | None) -> bool:
        """Wait until the stack has recovered (RECOVERY_WAIT_S at most) and note how long
        it took after `after`; None: a check before a fault, noted only if something had not
        recovered. False if it gave up."""
        seconds, first, missing = await self.recovery.wait()
        if after is None and not first:
            return True  # recovered at the first look (however long the look took)
        after = after or f"the check before the next fault found: {'; '.join(first)};"
        self.waits.append(RecoveryWait(after, seconds, tuple(missing)))
        if missing:
            log.warning(
                "chaos: not recovered %.0f s after %s: %s", seconds, after, "; ".join(missing)
            )
        else:
            log.info("chaos: recovered %.1f s after %s", seconds, after)
        return not missing

    async def apply(self, fault: PlannedFault) -> Fault:
        """Stop `fault.target` its way, and start it again after its pause."""
        at = datetime.now(UTC)
        async with self._lock:
            self._down.add(fault.target)
            await asyncio.to_thread(self._stop, fault.target, fault.how)
        log.info("chaos: %s %s, down %.1f s", fault.target, fault.how, fault.down)
        await asyncio.sleep(fault.down)
        async with self._lock:
            await asyncio.to_thread(self._start, fault.target)
            self._down.discard(fault.target)
        return Fault(fault.target, fault.how, at, datetime.now(UTC))

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
                    if name in self.servers:
                        self.recovery.server_stopped(name)
                    await asyncio.to_thread(self._start, name)
                    self.faults.append(Fault(name, f"exited {code}", at, datetime.now(UTC)))

    def _processes(self) -> dict[str, subprocess.Popen[bytes]]:
        servers = {name: server.proc for name, server in self.servers.items()}
        return {**servers, **self.stack.processes}

    def _stop(self, target: str, how: str) -> None:
        sig = getattr(signal, how)
        if target in self.servers:
            server = self.servers[target]
            server.proc.send_signal(sig)
            server.proc.wait(timeout=30)
            self.recovery.server_stopped(target)
            return
        proc = self.stack.processes[target]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def _start(self, target: str) -> None:
        stack = self.stack
        nodes = len(stack.nats_servers)
        if target == "nats-server":
            stack.servers[0] = self.servers[target] = stack.start_nats_server()
        elif target == "mqtt-broker":
            stack.servers[nodes] = self.servers[target] = stack.start_broker()
        elif target in self.servers:
            self.servers[target].restart()  # a cluster's node, PostgreSQL: as it was started
        else:
            self.recovery.started(target)
            # Not Stack.start: it waits for the api to listen (seconds on a busy machine),
            # which would hold up the faults after it. A service that exits while starting
            # (say, NATS is down) is started again by the supervisor.
            stack.spawn(target)
