"""Every service says in its log when it lost NATS and when it is connected again: the line
operators (and the chaos run, between two faults) wait for after a nats-server restart."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest

from baton_platform.nats import NatsIdentity, connect
from baton_platform.nats_access import OPS
from tests.conftest import eventually, start_baton_nats

pytestmark = pytest.mark.integration


async def test_a_nats_restart_is_logged_lost_and_then_reconnected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="baton_platform.nats")
    server = start_baton_nats(tmp_path / "nats")
    try:
        ops = NatsIdentity(OPS, server.passwords[OPS])
        client = await connect(server.url, "reconnect-test", ops)
        try:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()

            async def said(line: str) -> bool:
                return line in caplog.messages

            await eventually(lambda: said("disconnected from NATS"), what="the loss logged")
            assert "reconnected to NATS" not in caplog.messages
            server = start_baton_nats(tmp_path / "nats", server.port)
            await eventually(lambda: said("reconnected to NATS"), what="the reconnection logged")
            assert client.is_connected
        finally:
            await client.close()
    finally:
        server.stop()
