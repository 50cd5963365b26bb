"""The harness itself: the servers it starts are real and reachable."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import pytest

from baton_cli.localstack import (
    Server,
    Stack,
    find_binary,
    free_port,
    meta_leader,
    node_healthy,
    start_nats,
    start_nats_cluster,
    wait_for_healthy,
    wait_for_port,
)
from baton_cli.processes import start_process
from baton_platform.nats_access import OPS
from tests.conftest import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy/catalog/demo.yaml"

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
    proc = start_process([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", monitor, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as answer:
            varz = json.load(answer)
    finally:
        proc.terminate()
        proc.wait()
    assert varz["jetstream"]["config"]["sync_always"] is True


def test_a_stack_on_three_nodes_tells_every_service_of_every_node(tmp_path: Path) -> None:
    """`Stack(nats_nodes=3)`: three nats-servers, then the broker; the services get every
    node's URL and 3 replicas; each node's store, name and config are its own, its client,
    route and monitoring ports on loopback only."""
    stack = Stack(
        data_dir=tmp_path, api_key="k", catalog=DEMO, nats_nodes=3, broker="nats", simulate=False
    )
    try:
        stack.start_infrastructure()
        nodes = stack.nats_servers
        assert [node.name for node in nodes] == ["n1", "n2", "n3"]
        assert len(stack.servers) == 4  # and the broker, last
        assert stack.servers[3].log_path == tmp_path / "nats-mqtt" / "nats.log"
        env = stack.env()
        assert env["BATON_NATS_URL"].split(",") == [node.url for node in nodes]
        assert env["BATON_NATS_REPLICAS"] == "3"
        assert stack.nats_port == nodes[0].port
        for node in nodes:
            conf = (tmp_path / "nats" / node.name / "nats.conf").read_text()
            assert f'server_name: "{node.name}"' in conf
            assert str(tmp_path / "nats" / node.name / "jetstream") in conf
            assert (
                stat.S_IMODE((tmp_path / "nats" / node.name / "nats.conf").stat().st_mode) == 0o600
            )
            listens = re.findall(r'(?:listen|http)"?: "([^"]+)"', conf)
            assert len(listens) == 3 and all(a.startswith("127.0.0.1:") for a in listens), conf
    finally:
        stack.stop_all()


def _route_hello(port: int, credentials: dict[str, str]) -> bytes:
    """What a cluster node answers a process that connects to its route port as a node."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        hello = {"verbose": False, "pedantic": False, "name": "stranger", **credentials}
        sock.sendall(b"CONNECT " + json.dumps(hello).encode() + b"\r\nPING\r\n")
        return reader.readline()


def test_only_the_cluster_s_own_nodes_may_join_it(tmp_path: Path) -> None:
    """A route carries every message of every account, unchecked: the nodes require a route
    password of their own, so no other local process joins as a node."""
    nodes = start_nats_cluster(tmp_path, 3)
    try:
        conf = (tmp_path / "n1" / "nats.conf").read_text()
        cluster = re.search(r"cluster (\{.*?\n\})", conf, re.DOTALL)
        assert cluster is not None
        block = json.loads(cluster.group(1))
        route_port = int(block["listen"].removeprefix("127.0.0.1:"))
        password = block["authorization"]["password"]
        assert _route_hello(route_port, {}) == b"-ERR 'Authorization Violation'\r\n"
        wrong = {"user": "route", "pass": "guessed"}
        assert _route_hello(route_port, wrong) == b"-ERR 'Authorization Violation'\r\n"
        right = {"user": "route", "pass": password}
        assert _route_hello(route_port, right) != b"-ERR 'Authorization Violation'\r\n"
    finally:
        for node in nodes:
            node.stop()


def test_a_node_killed_by_its_pid_comes_back_with_its_store(tmp_path: Path) -> None:
    nodes = start_nats_cluster(tmp_path, 3)
    try:
        victim = nodes[1]
        pid = victim.pid
        victim.kill()
        assert not victim.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert meta_leader(nodes) is not None  # two of three still elect one
        victim.restart()
        assert victim.running and victim.pid != pid
        wait_for_healthy(nodes)
        assert node_healthy(victim)
        with pytest.raises(RuntimeError, match="still running"):
            victim.restart()
    finally:
        for node in nodes:
            node.stop()


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


# Starts PostgreSQL as tests/conftest.py's `postgres_server` does, says where, and waits for
# its killer.
START_POSTGRES_AND_WAIT = """
import json, sys
from pathlib import Path
from baton_cli.localstack import start_postgres
server = start_postgres(Path(sys.argv[1]), durable=False)
print(json.dumps({"pid": server.pid, "owned_dir": str(server.owned_dir or "")}), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("kill", ["alone", "with its process group"])
def test_a_throwaway_postgres_dies_with_the_run_that_started_it(tmp_path: Path, kill: str) -> None:
    """A test run killed (SIGKILL: CI's timeout, or a person's; alone, or with its process
    group) takes the PostgreSQL it started with it, postmaster and every process of its."""
    run = subprocess.Popen(
        [sys.executable, "-c", START_POSTGRES_AND_WAIT, str(tmp_path / "pg")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        process_group=0,  # a test run of its own, as CI starts one
    )
    assert run.stdout is not None
    started = json.loads(run.stdout.readline() or "{}")
    postmaster = started.get("pid")
    try:
        assert postmaster is not None, "the server did not start"
        workers = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        assert workers  # its checkpointer, writers...
        sigkill(run, kill)
        eventually_sync(
            lambda: not any(is_postgres(pid) for pid in [postmaster, *map(int, workers)]),
            what="the postmaster and its processes gone",
        )
    finally:
        run.kill()
        run.wait()
        if postmaster is not None and is_postgres(postmaster):  # outlived its run: stopped here
            os.kill(postmaster, signal.SIGINT)
            eventually_sync(lambda: not is_postgres(postmaster), what="postgres stopped")
        if started.get("owned_dir"):
            shutil.rmtree(started["owned_dir"], ignore_errors=True)


def sigkill(run: subprocess.Popen[bytes], kill: str) -> None:
    """SIGKILL a test run started in a process group of its own: `alone`, or with every
    process of its group."""
    if kill == "alone":
        run.kill()
    else:
        os.killpg(run.pid, signal.SIGKILL)
    run.wait()


# Starts a whole stack as the end-to-end tests do (or as `baton dev run` does: "own"), says
# the pid of every process it started, and waits for its killer.
START_STACK_AND_WAIT = """
import json, sys
from pathlib import Path
from baton_cli.localstack import Stack
stack = Stack(
    data_dir=Path(sys.argv[1]), api_key="k", catalog=Path(sys.argv[2]),
    own_session=sys.argv[3] == "own",
)
try:
    stack.start_all()
finally:  # what started, even if not everything did
    pids = [server.pid for server in stack.servers]
    pids += [proc.pid for proc in stack.processes.values()]
    print(json.dumps({"pids": pids, "api": stack.api_url}), flush=True)
sys.stdin.read()
"""
# nats-server, the MQTT broker, the four services and the simulator.
STACK_PROCESSES = 7


def start_stack_in_a_run(
    tmp_path: Path, session: str
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """A test run of its own (its own process group, as CI starts one) that starts a stack;
    the run and what it says it started: every pid, and the api's URL."""
    run = subprocess.Popen(
        [sys.executable, "-c", START_STACK_AND_WAIT, str(tmp_path / "stack"), str(DEMO), session],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        process_group=0,
    )
    assert run.stdout is not None
    said: dict[str, Any] = json.loads(run.stdout.readline() or '{"pids": []}')
    return run, said


@pytest.mark.parametrize("kill", ["alone", "with its process group"])
def test_a_stack_the_tests_start_dies_with_the_run_that_started_it(
    tmp_path: Path, kill: str
) -> None:
    """Every process a test run started (servers, services, simulator) ends when the run is
    SIGKILLed, even alone: none keeps ports, files and CPU after it."""
    run, said = start_stack_in_a_run(tmp_path, "tied")
    started = {pid: started_at(pid) for pid in said["pids"]}
    try:
        assert len(started) == STACK_PROCESSES, f"the stack did not start: {tmp_path}/stack/log"
        sigkill(run, kill)
        eventually_sync(lambda: not outliving(started), what="every process of the stack gone")
    finally:
        run.kill()
        run.wait()
        for pid in outliving(started):  # outlived its run: stopped here
            os.kill(pid, signal.SIGKILL)


def test_a_stack_started_as_baton_dev_run_does_outlives_its_starter_s_group(
    tmp_path: Path,
) -> None:
    """`baton dev run` (make run) starts every process in a session of its own: the
    terminal's Ctrl-C reaches only `run`, which stops them in order (and `make stop`, by its
    pid). Nothing ties them to it: its group SIGKILLed, the stack still serves."""
    run, said = start_stack_in_a_run(tmp_path, "own")
    started = {pid: started_at(pid) for pid in said["pids"]}
    try:
        assert len(started) == STACK_PROCESSES, f"the stack did not start: {tmp_path}/stack/log"
        assert all(os.getsid(pid) == pid for pid in started)
        sigkill(run, "with its process group")
        # A round trip through the api after its starter's end, a kill would have come first.
        with urllib.request.urlopen(f"{said['api']}/ready", timeout=10) as ready:
            assert ready.status == 200
        assert sorted(outliving(started)) == sorted(started)
    finally:
        run.kill()
        run.wait()
        for pid in reversed(outliving(started)):  # as `baton dev run` stops them: by pid
            os.kill(pid, signal.SIGTERM)
        eventually_sync(lambda: not outliving(started), timeout=30, what="the stack stopped")


# Starts, as a test of `baton dev run` starts it, a process that stops in order on SIGTERM
# (as `baton dev run` does); says its pid and waits for its killer.
START_STOPPABLE_AND_WAIT = """
import json, signal, sys
from baton_cli.processes import start_process
stoppable = (
    "import pathlib, signal, sys, time\\n"
    "def stop(*_): pathlib.Path(sys.argv[1]).write_text('stopped in order'); sys.exit(0)\\n"
    "signal.signal(signal.SIGTERM, stop)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(600)\\n"
)
proc = start_process(
    [sys.executable, "-c", stoppable, sys.argv[1]],
    own_session=True, death_signal=signal.SIGTERM, stdout=-1,
)
proc.stdout.readline()
print(json.dumps({"pid": proc.pid}), flush=True)
sys.stdin.read()
"""


def test_a_dev_run_a_test_starts_is_stopped_in_order_when_the_test_run_dies(
    tmp_path: Path,
) -> None:
    """A test that runs `baton dev run` starts it in a session of its own, as make does (its
    processes then are too), with SIGTERM as its death signal: the test run SIGKILLed, even
    with its group, the dev run is told to stop, and stops what it started."""
    marker = tmp_path / "stopped"
    run = subprocess.Popen(
        [sys.executable, "-c", START_STOPPABLE_AND_WAIT, str(marker)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        process_group=0,
    )
    assert run.stdout is not None
    pid = json.loads(run.stdout.readline() or "{}").get("pid")
    started = {} if pid is None else {pid: started_at(pid)}
    try:
        assert pid is not None, "it did not start"
        assert os.getsid(pid) == pid  # out of reach of the run's group
        sigkill(run, "with its process group")
        eventually_sync(lambda: not outliving(started), what="the dev run stopped")
        assert marker.read_text() == "stopped in order"
    finally:
        run.kill()
        run.wait()
        for left in outliving(started):
            os.kill(left, signal.SIGKILL)


def test_a_server_started_from_a_thread_outlives_the_thread(tmp_path: Path) -> None:
    """The kernel sends the parent-death signal when the *thread* that forked a process ends:
    a server started (or restarted) from a worker thread, as `asyncio.to_thread` does in the
    chaos runs, must keep running after that thread has ended."""
    started: list[Server] = []
    worker = threading.Thread(target=lambda: started.append(start_nats(tmp_path / "nats")))
    worker.start()
    worker.join()
    eventually_sync(
        lambda: not Path(f"/proc/self/task/{worker.native_id}").exists(), what="thread ended"
    )
    assert started, "the server did not start"
    server = started[0]
    try:
        # Answering after the thread ended: a kill would have come first.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert sock.makefile("rb").readline().startswith(b"INFO ")
        assert server.running
    finally:
        server.stop()


def started_at(pid: int) -> str | None:
    """When process `pid` started (in clock ticks since boot, field 22 of its /proc stat), to
    tell it from a process that took its pid since; None when it is not running (a zombie,
    which a killed process is until whoever adopted it reaps it, is not)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat_line.rpartition(") ")[2].split()
    return None if state in ("Z", "X") else fields[18]


def outliving(started: dict[int, str | None]) -> list[int]:
    """The processes of `started` (pid: start time) still running."""
    return [pid for pid, at in started.items() if at is not None and started_at(pid) == at]


def is_postgres(pid: int) -> bool:
    """A running PostgreSQL process: not a zombie, which a killed one is until its parent
    (here, whoever adopted it) reaps it."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat_line.partition(" (")[2].rpartition(") ")
    return name == "postgres" and not rest.startswith("Z")
