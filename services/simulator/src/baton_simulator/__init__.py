"""Baton's device simulator: simulated devices that speak a wire profile (Baton's own MQTT
contract by default; docs/wire-profiles.md).

`baton simulate` (and so `make run`), the end-to-end tests and the benchmark run it. Each
device has its own connection and follows a behaviour table (baton_simulator.behaviours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from baton_simulator.behaviours import (
    BEHAVIOURS,
    CHARGER,
    SILENT,
    STUBBORN_CHARGER,
    THERMOSTAT,
    Behaviour,
)
from baton_simulator.device import Broker, DeviceWire, SimulatedDevice

__all__ = [
    "BEHAVIOURS",
    "CHARGER",
    "READY_LINE",
    "SILENT",
    "STUBBORN_CHARGER",
    "THERMOSTAT",
    "Behaviour",
    "DeviceSpec",
    "DeviceWire",
    "SimulatedDevice",
    "run_simulator",
]

log = logging.getLogger("baton_simulator")

READY_LINE = "simulator ready"


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
) -> None:
    """Run thermostats `devices` and never-answering `silent_devices` (both on Baton's own
    profile) and the devices of `specs` until `stop` is set, then disconnect them all.
    `protocol` is "5" or "3.1.1"."""
    broker = Broker(host, port, protocol)
    simulated = [SimulatedDevice(d, THERMOSTAT, broker) for d in devices]
    simulated += [SimulatedDevice(d, SILENT, broker) for d in silent_devices]
    simulated += [
        SimulatedDevice(spec.device_id, spec.behaviour, broker, wire=spec.wire) for spec in specs
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
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    log.info("simulator stopped")


async def _announce_ready(simulated: list[SimulatedDevice]) -> None:
    """Log READY_LINE once every device has connected (and so holds a session): requests
    published before a device's first connection would have nowhere to wait."""
    await asyncio.gather(*(device.wait_online() for device in simulated))
    log.info("%s: %d device(s) online", READY_LINE, len(simulated))
