"""The replicas of `make run-cluster`, restarted one at a time as a rolling upgrade does
(docs/operations.md, "Rolling upgrades").

`baton dev run --cluster` supervises its service replicas as a process manager would: a
replica that stops after it has run a while (a SIGTERM, as each step of a rolling upgrade
sends), or that `baton dev restart` stops, is started again under the same name, and the
stack goes on; one that stops by itself soon after its start (a broken start: a crash loop
otherwise) stops the stack, as any process of `make run` does. The stack records each
replica's pid, log and (an api replica) own `/ready` in `run/processes.json` beside its pid
file: `baton dev restart` marks a replica as asked to restart (`run/restart-<name>`), stops
it, and waits until the one started in its place is ready before the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton_cli.localstack import READY_LINES, Stack, replica_of

PROCESSES_FILE = "processes.json"  # in the stack's run/ directory, beside devstack.pid
# A replica that stopped sooner than this after its start failed to start: started again,
# it would fail again, so the stack stops and says so.
MIN_UP_S = 10.0
# How long `baton dev restart` waits for one replica to be ready again (the api's drain,
# BATON_API_DRAIN_SECONDS, is part of it).
RESTART_TIMEOUT_S = 90.0


@dataclass
class Supervisor:
    """Starts again the service replicas of `stack` that stopped; keeps `record` current."""

    stack: Stack
    record: Path
    say: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    started: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        """The stack has started: every replica's clock runs from now."""
        self.started = dict.fromkeys(self.stack.names, self.clock())
        self.write()

    def step(self) -> list[str]:
        """Start again each replica that stopped after running MIN_UP_S or more. Returns the
        processes that stopped otherwise (too soon, or not a replica: the balancer, the
        simulator): the stack stops."""
        failed = []
        restarted = False
        for name in self.stack.dead():
            since = self.started.get(name)
            asked = restart_mark(self.record, name)
            if since is None or (self.clock() - since < MIN_UP_S and not asked.exists()):
                failed.append(name)
                continue
            asked.unlink(missing_ok=True)
            code = self.stack.processes[name].returncode
            self.stack.spawn(name)
            self.started[name] = self.clock()
            restarted = True
            self.say(f"{name} stopped (exit {code}); started it again")
        if restarted:
            self.write()
        return failed

    def write(self) -> None:
        stack = self.stack
        entries = {
            name: {
                "pid": stack.processes[name].pid,
                "log": str(stack.log_dir / f"{name}.log"),
                "ready": _ready_url(stack, name),
            }
            for name in stack.names
            if name in stack.processes
        }
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(self.record)

    def forget(self) -> None:
        self.record.unlink(missing_ok=True)
        for name in self.stack.names:
            restart_mark(self.record, name).unlink(missing_ok=True)


def restart_mark(record: Path, name: str) -> Path:
    """Made before `baton dev restart` stops `name`: a stop asked for, however soon after
    the replica's start."""
    return record.with_name(f"restart-{name}")


def _ready_url(stack: Stack, name: str) -> str | None:
    """An api replica's own /ready (the balancer's says only that one of them is)."""
    service, replica = replica_of(name)
    if service != "api" or not stack.replica_api_ports:
        return None
    return f"http://127.0.0.1:{stack.replica_api_ports[replica - 1]}/ready"


class RestartError(Exception):
    """A replica could not be restarted (its message says why)."""


def read_processes(record: Path) -> dict[str, dict[str, Any]]:
    """The replicas of the running stack; {} if it records none (`make run`, or stopped)."""
    try:
        entries = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def restart_replica(record: Path, name: str, timeout: float = RESTART_TIMEOUT_S) -> float:
    """Stop replica `name` (SIGTERM: it hands its work over) and wait until the one the stack
    started in its place is ready. Returns the seconds it took."""
    entry = read_processes(record)[name]
    log = Path(entry["log"])
    offset = log.stat().st_size if log.exists() else 0
    start = time.monotonic()
    restart_mark(record, name).touch()
    with contextlib.suppress(ProcessLookupError):  # stopped already: the stack restarts it
        os.kill(int(entry["pid"]), signal.SIGTERM)
    while time.monotonic() - start < timeout:
        current = read_processes(record).get(name)
        if current is None:
            raise RestartError(f"the stack stopped while {name} restarted")
        if current["pid"] != entry["pid"] and _ready(name, current, log, offset):
            return time.monotonic() - start
        time.sleep(0.2)
    raise RestartError(f"{name} was not ready again within {timeout:.0f} s; see {log}")


def _ready(name: str, entry: dict[str, Any], log: Path, offset: int) -> bool:
    """Whether the replica started after `offset` of its log is ready: its ready lines
    written since, and an api replica's own /ready answering 200."""
    with log.open("rb") as text:
        text.seek(offset)
        written = text.read()
    if not all(line.encode() in written for line in READY_LINES[replica_of(name)[0]]):
        return False
    url = entry.get("ready")
    if not url:
        return True
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False
