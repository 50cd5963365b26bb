"""Fixtures the integration modules share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baton_cli.localstack import Server
from baton_cli.main import catalog_specs
from baton_simulator import READY_LINE, run_simulator
from tests.conftest import eventually
from tests.integration.test_device_bridge import Device

PROFILES_CATALOG = Path(__file__).resolve().parents[2] / "deploy/catalog/profiles.yaml"


@pytest.fixture
async def simulated(mqtt_broker: Server, caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Every device of the profiles catalog, each speaking its type's profile."""
    caplog.set_level(logging.INFO, logger="baton_simulator")
    stop = asyncio.Event()
    specs = catalog_specs(PROFILES_CATALOG, [], [])
    task = asyncio.create_task(
        run_simulator(
            "127.0.0.1", mqtt_broker.port, mqtt_broker.extra["protocol"], [], [], stop, specs=specs
        )
    )

    async def online() -> bool:
        assert not task.done(), task
        return READY_LINE in caplog.text

    try:
        await eventually(online, what="simulated devices online")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


@pytest.fixture
async def device(mqtt_broker: Server) -> AsyncIterator[Device]:
    """demo-thermostat-1 driven by hand: what reaches it is kept, it answers when told."""
    async with Device(mqtt_broker) as d:
        yield d
