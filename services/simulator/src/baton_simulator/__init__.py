"""Baton's device simulator: simulated devices that speak a wire profile (Baton's own MQTT
contract by default; docs/wire-profiles.md).

`baton simulate` (and so `make run`), the end-to-end tests and the benchmark run it. Each
device has its own connection and follows a behaviour table (baton_simulator.behaviours).

A fleet (thousands of devices) runs in one process: a connection per device, because a
device's presence is its own connection's retained `online` and last will `offline`; one
connection for many devices could not say that one of them went away. Connections are made
a bounded batch at a time, and the process raises its own file descriptor limit (one socket
per device) as far as the hard limit allows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
from collections.abc import Sequence
from dataclasses import dataclass

from baton_simulator.behaviours import (
    BEHAVIOURS,
    CHARGER,
    SILENT,
    STUBBORN_CHARGER,
    THERMOSTAT,
    Behaviour,
    Timing,
)
from baton_simulator.device import Access, Broker, DeviceWire, SimulatedDevice
from baton_simulator.journal import Journal

__all__ = [
    "BEHAVIOURS",
    "CHARGER",
    "CONNECT_BATCH",
    "READY_LINE",
    "SILENT",
    "STUBBORN_CHARGER",
    "THERMOSTAT",
    "Access",
    "Behaviour",
    "DeviceSpec",
    "DeviceWire",
    "Journal",
    "SimulatedDevice",
    "Timing",
    "TooManyDevices",
    "fleet_ids",
    "run_simulator",
]

log = logging.getLogger("baton_simulator")

READY_LINE = "simulator ready"
# How many devices may be connecting (TCP, CONNECT, SUBSCRIBE, `online`) at once: enough to
# keep the broker busy, few enough that its listen backlog (Mosquitto: 100) never overflows
# into SYN retries of a second or more. 1,000 devices came up in 0.8 s here with it.
CONNECT_BATCH = 100
# File descriptors beyond one per device: the loop's own, logging, the executor's.
SPARE_FDS = 64


class TooManyDevices(RuntimeError):
    """This process may not open a socket for every device (`ulimit -Hn`)."""


def fleet_ids(count: int, prefix: str = "sim-") -> list[str]:
    """The ids of a generated fleet: `sim-00001` ... (`baton simulate --fleet` and
    `baton catalog fleet` name the same devices, so a smaller fleet is the start of a larger
    one)."""
    return [f"{prefix}{n:05d}" for n in range(1, count + 1)]


def raise_fd_limit(devices: int) -> None:
    """Let this process hold a socket per device: raise the soft limit of open files (often
    1,024) up to the hard one, or say why it cannot."""
    needed = devices + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise TooManyDevices(
                f"{devices} devices need {needed} open files, but this process may have at "
                f"most {hard} (ulimit -Hn): raise it, or simulate fewer devices per process"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        log.info("raised the open files limit from %d to %d", soft, needed)


@dataclass(frozen=True)
class DeviceSpec:
    """One device to simulate in any wire profile (`baton simulate --catalog` builds these
    from the catalog)."""

    device_id: str
    wire: DeviceWire
    behaviour: Behaviour = THERMOSTAT


async def run_simulator(
    host: str,
    port: int,
    protocol: str,
    devices: list[str],
    silent_devices: list[str],
    stop: asyncio.Event,
    *,
    specs: Sequence[DeviceSpec] = (),
    timing: Timing = Timing(),
    connect_batch: int = CONNECT_BATCH,
    journal: Journal | None = None,
    access: Access = Access(),
) -> None:
    """Run thermostats `devices` and never-answering `silent_devices` (both on Baton's own
    profile) and the devices of `specs` until `stop` is set, then disconnect them all.
    `protocol` is "5" or "3.1.1". `timing` sets every device's answer times where it sets
    them (the CLI times each spec's behaviour itself when timings differ by behaviour); at
    most `connect_batch` devices are connecting at once. `journal`: where every device
    writes the requests it receives and the answers it sends (baton_simulator.journal).
    `access`: the simulator's account and TLS."""
    broker = Broker(host, port, protocol, access)
    everyone = [
        *(DeviceSpec(d, DeviceWire(d), THERMOSTAT) for d in devices),
        *(DeviceSpec(d, DeviceWire(d), SILENT) for d in silent_devices),
        *specs,
    ]
    raise_fd_limit(len(everyone))
    connecting = asyncio.Semaphore(connect_batch)
    simulated = [
        SimulatedDevice(
            spec.device_id,
            spec.behaviour.timed(timing),
            broker,
            wire=spec.wire,
            connecting=connecting,
            journal=journal,
        )
        for spec in everyone
    ]
    running = [asyncio.create_task(s.run(), name=f"sim-{s.device_id}") for s in simulated]
    stopping = asyncio.create_task(stop.wait())
    log.info("simulating %d device(s) on %s:%s (MQTT %s)", len(running), host, port, protocol)
    announcing = asyncio.create_task(_announce_ready(simulated))
    try:
        # A device only ends by itself on a bug: then stop the rest and let it be seen.
        await asyncio.wait([stopping, *running], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, announcing, *running):
            task.cancel()
        outcomes = await asyncio.gather(*running, stopping, announcing, return_exceptions=True)
        gc.unfreeze()
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    log.info("simulator stopped")


async def _announce_ready(simulated: list[SimulatedDevice]) -> None:
    """Log READY_LINE once every device has connected (and so holds a session): requests
    published before a device's first connection would have nowhere to wait."""
    await asyncio.gather(*(device.wait_online() for device in simulated))
    # A fleet's clients, sessions and tasks live as long as the simulator: out of the
    # collector's way, a full collection no longer walks them all. Measured with 10,000
    # devices: CPU per answer 3.5-4.2 ms before, ~1.1 ms after, and stopping 8-17 s -> 2.5 s.
    gc.collect()
    gc.freeze()
    log.info("%s: %d device(s) online", READY_LINE, len(simulated))
