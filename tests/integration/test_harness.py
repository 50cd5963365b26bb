"""The harness itself: the servers it starts are real and reachable."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import aiomqtt
import nats
import pytest

from baton_cli.localstack import Server, find_binary, free_port, start_nats, wait_for_port
from baton_platform.nats_access import OPS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


async def test_nats_server_has_jetstream(nats_server: Server) -> None:
    nc = await nats.connect(nats_server.url_as(OPS))
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_mqtt_broker_round_trip(mqtt_broker: Server) -> None:
    protocol = (
        aiomqtt.ProtocolVersion.V5
        if mqtt_broker.extra["protocol"] == "5"
        else aiomqtt.ProtocolVersion.V311
    )
    async with aiomqtt.Client(
        "127.0.0.1", mqtt_broker.port, protocol=protocol, identifier="harness"
    ) as client:
        await client.subscribe("harness/echo", qos=1)
        await client.publish("harness/echo", b"ping", qos=1)
        async for message in client.messages:
            assert message.payload == b"ping"
            break


@pytest.mark.parametrize("source", ["harness", "deploy"])
def test_nats_server_fsyncs_every_write(tmp_path: Path, source: str) -> None:
    """What `make run`, the tests and deploy/ start acknowledges a JetStream write only once it
    is on disk (docs/architecture.md, "What stored means"): the server itself says so."""
    monitor = free_port()
    if source == "harness":
        start_nats(tmp_path / "first").stop()  # writes the config make run and the tests use
        config = (tmp_path / "first" / "nats.conf").read_text()
    else:
        store = tmp_path / "data" / "jetstream"
        config = (ROOT / "deploy/nats/nats.conf").read_text().replace("/data/jetstream", str(store))
        config = config.replace("0.0.0.0:4222", f"127.0.0.1:{free_port()}")
    conf = tmp_path / "monitored.conf"
    conf.write_text(f"{config}\nhttp: 127.0.0.1:{monitor}\n")
    binary = find_binary("nats-server")
    assert binary is not None
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", monitor, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as answer:
            varz = json.load(answer)
    finally:
        proc.terminate()
        proc.wait()
    assert varz["jetstream"]["config"]["sync_always"] is True
