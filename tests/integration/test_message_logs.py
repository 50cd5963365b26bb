"""FastStream's per-message `Received` / `Processed` lines: quiet unless BATON_LOG_MESSAGES."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nats.aio.client import Client

from baton_cli.localstack import Server
from baton_contracts.nats import CATALOG_GET_SUBJECT, CatalogReply
from baton_dispatcher.app import Dispatcher
from tests.conftest import service_settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("log_messages", [False, True])
async def test_per_message_lines_only_when_asked_for(
    nats_server: Server,
    tmp_path: Path,
    nc: Client,
    caplog: pytest.LogCaptureFixture,
    log_messages: bool,
) -> None:
    caplog.set_level(logging.INFO)
    settings = service_settings(nats_server, tmp_path).model_copy(
        update={"log_messages": log_messages}
    )
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    try:
        # Answered through FastStream (the dispatcher's admin subjects).
        reply = await nc.request(CATALOG_GET_SUBJECT, b"{}", timeout=5)
        assert CatalogReply.model_validate_json(reply.data).document is not None
    finally:
        await dispatcher.stop()
    lines = {r.getMessage() for r in caplog.records if r.levelno >= logging.INFO}
    if log_messages:
        assert {"Received", "Processed"} <= lines
    else:
        assert not lines & {"Received", "Processed"}
