"""What each process of the stack costs, read from /proc: CPU seconds (utime + stime of all
its threads) and peak resident memory (VmHWM). Linux only, like the stack itself."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from baton_cli.localstack import Server, Stack

# The stack's PostgreSQL (`--database postgres`), whose work is done by its children.
POSTGRES = "postgres"

TICKS = os.sysconf("SC_CLK_TCK")

Pids = Mapping[str, int]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces: count fields after its ')'.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of every process below it (PostgreSQL's: one per connection)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_seconds(pid) + sum(tree_cpu_seconds(int(child)) for child in children)


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of `pid` from /proc/<pid>/status, in KiB (VmHWM: the most it has held
    resident; VmRSS: what it holds now); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stack_pids(stack: Stack) -> dict[str, int]:
    """Every process the stack runs, by a readable name; the bench's own process last."""
    pids: dict[str, int] = {}
    nodes = len(stack.nats_servers)
    for n, server in enumerate(stack.servers):
        # The NATS node(s) first, then the MQTT broker (Mosquitto or nats-server).
        if n >= nodes:
            pids[f"broker ({stack.broker})"] = server.proc.pid
        else:
            pids["nats-server" if nodes == 1 else f"nats-server {server.name}"] = server.proc.pid
    for name, proc in stack.processes.items():
        pids[name] = proc.pid
    postgres: Server | None = getattr(stack, "postgres", None)  # the bench's stacks' own
    if postgres is not None:
        pids[POSTGRES] = postgres.proc.pid
    pids["bench (load)"] = os.getpid()
    return pids


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    seconds: dict[str, float]

    @classmethod
    def take(cls, pids: Pids) -> CpuSnapshot:
        return cls(
            time.monotonic(),
            {
                name: (tree_cpu_seconds if name == POSTGRES else cpu_seconds)(pid)
                for name, pid in pids.items()
            },
        )

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds each process spent between `earlier` and this snapshot."""
        return {name: self.seconds[name] - earlier.seconds.get(name, 0.0) for name in self.seconds}


async def busy_by_process(pids: Pids, window: float = 0.5) -> dict[str, float]:
    """How many cores each of the processes `pids` kept busy over the next `window` s."""
    before = CpuSnapshot.take(pids)
    await asyncio.sleep(window)
    after = CpuSnapshot.take(pids)
    return {name: spent / (after.at - before.at) for name, spent in after.since(before).items()}


async def busy_cores(pids: Pids, window: float = 0.5) -> float:
    """How many cores the processes `pids` kept busy over the next `window` seconds."""
    return sum((await busy_by_process(pids, window)).values())
