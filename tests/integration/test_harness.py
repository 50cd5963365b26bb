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


def test_a_throwaway_postgres_serves_its_own_user_and_is_gone_after_stop(tmp_path: Path) -> None:
    """initdb + postgres on a free loopback port, password required, not as root (which
    PostgreSQL refuses: as root the harness runs it as another account), durable (fsync
    on), and stopped by its pid: no process and (as root) no directory left behind."""
    import os

    import psycopg

    from baton_cli.localstack import start_postgres
    from baton_platform.sql import conninfo, postgres_params

    server = start_postgres(tmp_path / "pg")
    try:
        with psycopg.connect(conninfo(server.url)) as conn:
            fsync, address = conn.execute(
                "SELECT current_setting('fsync'), current_setting('listen_addresses')"
            ).fetchone()  # type: ignore[misc]
        assert (fsync, address) == ("on", "127.0.0.1")
        wrong = {**postgres_params(server.url), "password": "wrong"}
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**wrong).close()  # type: ignore[arg-type]
        owner = os.stat(f"/proc/{server.proc.pid}").st_uid
        assert owner != 0
        assert owner == os.geteuid() or os.geteuid() == 0
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
        assert children.split()  # its checkpointer, writers... and the session above's
    finally:
        server.stop()
    assert server.proc.poll() is not None
    # No child outlived the postmaster (a pid reused since would be another program).
    assert [pid for pid in children.split() if is_postgres(int(pid))] == []
    if server.owned_dir is not None:
        assert not server.owned_dir.exists()


def is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False
