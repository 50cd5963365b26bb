"""`baton dev run|stop`: the whole stack on this machine, what `make run` starts.

Data lives under ./var/ (event store, views, deadlines, JetStream, broker persistence, logs),
so a second `make run` carries on where the first stopped. `make run-cluster` (`--cluster`)
starts the replicated topology instead, afresh under ./var/cluster/, on a PostgreSQL of its
own or on BATON_DATABASE_URL's; it starts a replica that stops (a rolling restart) again
(baton_cli.rolling).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from baton_cli.devstate import forget_state, write_state
from baton_cli.localstack import (
    PostgresServer,
    Stack,
    mqtt_flavour,
    start_postgres,
)
from baton_cli.rolling import (
    PROCESSES_FILE,
    RestartError,
    Supervisor,
    read_processes,
    restart_replica,
)

if TYPE_CHECKING:
    from baton_domain.catalog import Catalog

dev_app = typer.Typer(
    help="Run the whole stack locally (what `make run` does).", no_args_is_help=True
)

PID_FILE = "run/devstack.pid"
# The dispatcher's metrics port; the other services take the next ones (METRICS_OFFSETS).
DEFAULT_METRICS_PORT = 9180
DEFAULT_CATALOG = Path("deploy/catalog/demo.yaml")
# `--cluster` (make run-cluster): the topology of docs/operations.md on one machine.
CLUSTER_NATS_NODES = 3
CLUSTER_REPLICAS = 2


def _wait_ready(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def metrics_port_problem(stack: Stack) -> str | None:
    """Why the stack's metrics ports cannot be used (one line naming the setting), or None.

    Checked before anything starts: a service finding its port taken would stop, and the
    stack with it, with the reason only in that service's log."""
    if not stack.metrics_port:
        return None
    ports = stack.metrics_ports()
    setting = f"BATON_METRICS_PORT={stack.metrics_port}"
    if max(ports.values()) > 65535:
        return f"{setting}: the services need ports up to {max(ports.values())}; choose a lower one"
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the metrics server binds (prometheus_client's, an http.server): a port left
            # in TIME_WAIT by the last stack's scrapes is free for it, only a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                return (
                    f"{setting}: port {port} ({name} metrics, BATON_METRICS_PORT"
                    f"+{port - stack.metrics_port}) is not free ({exc.strerror or exc}); "
                    "choose another base port, or 0 to turn metrics off"
                )
    return None


def first_command(catalog: Path | Catalog) -> tuple[str, str, dict[str, Any]]:
    """A command the banner can show for the catalog in use: the demo's own example, or a
    command of the first device that needs no params (else its first command)."""
    from baton_domain.catalog import Catalog, CatalogError

    loaded: Catalog | None
    if isinstance(catalog, Catalog):
        loaded = catalog
    else:
        try:
            loaded = Catalog.from_yaml(catalog)
        except (CatalogError, OSError):
            loaded = None
    devices = loaded.devices if loaded is not None else []
    if not devices or any(d.id == "demo-thermostat-1" for d in devices):
        return "demo-thermostat-1", "set_temperature", {"value": 22}
    assert loaded is not None
    device = devices[0]
    commands = loaded.device_types[device.type].commands
    free = [name for name, spec in commands.items() if not spec.params.get("required")]
    return device.id, next(iter(free or commands), "reboot"), {}


def _banner(
    stack: Stack,
    warnings: list[str] | None = None,
    stored: Catalog | None = None,
    own_store: bool = True,
) -> str:
    """`stored`: the catalog in use when it is not the file's (the example is one of its).
    `own_store`: see `_topology`."""
    key = stack.api_key
    broker = "Mosquitto" if stack.broker == "mosquitto" else "nats-server's MQTT listener"
    device, name, params = first_command(stored or stack.catalog)
    body = json.dumps({"name": name, "params": params})
    cli_params = "".join(f" --param {k}={json.dumps(v)}" for k, v in params.items())
    metrics = "".join(
        f"\n  Metrics    http://127.0.0.1:{port}/metrics   ({name})"
        for name, port in stack.metrics_ports().items()
    )
    simulated = f"the devices of {stack.catalog}" if stack.simulate else "none"
    return f"""
Baton is running.
  API        {stack.api_url}   (docs: {stack.api_url}/schema/swagger, /schema/redoc)
  Console    {stack.api_url}/console   (sign in with the API key)
  API key    {key}
  NATS       {stack.nats_url}   (users and passwords: {stack.nats_credentials})
  MQTT       mqtt://127.0.0.1:{stack.mqtt_port} ({broker}; no anonymous clients)
  MQTT accounts  {stack.accounts_path}  (a device's own: POST /v1/devices/ID/credentials){metrics}
  Simulated  {simulated}
  Data/logs  {stack.data_dir}/  (logs in {stack.log_dir}/){_topology(stack, own_store)}

Send a first command:
  curl -s -X POST '{stack.api_url}/v1/devices/{device}/commands?wait=5' \\
       -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
       -d '{body}'

  BATON_API_URL={stack.api_url} BATON_API_KEY={key} \\
  .venv/bin/baton send {device} {name}{cli_params} --wait 5

  (`baton` finds this stack from any directory without them, while it is the last one run.)
{_warnings(warnings or [])}
Ctrl-C (or `make stop`) stops everything.
"""


def _warnings(warnings: list[str]) -> str:
    return "".join(f"\nWARNING: {w}\n" for w in warnings)


def stored_catalog(stack: Stack) -> Catalog | None:
    """The catalog the running stack's key sees (None if the api does not say)."""
    import httpx

    from baton_domain.catalog import Catalog

    try:
        answer = httpx.get(
            f"{stack.api_url}/v1/catalog",
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=10,
        )
        return Catalog.model_validate(answer.raise_for_status().json())
    except (httpx.HTTPError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def catalog_warning(stack: Stack, stored: Catalog | None) -> str | None:
    """Why the catalog file asked for is not the one in use: the data directory holds a
    catalog already (the file seeds an empty one only). None when it is in use."""
    from baton_domain.catalog import Catalog, CatalogError
    from baton_domain.catalog_document import document_of

    try:
        wanted = document_of(Catalog.from_yaml(stack.catalog).of("default"))
    except (CatalogError, OSError):
        return None
    if stored is None or document_of(stored) == wanted:
        return None
    return (
        f"BATON_CATALOG_PATH={stack.catalog} is NOT in use: {stack.data_dir} holds a catalog "
        "already, and the file only seeds an empty data directory. Load it with "
        f"`baton catalog import {stack.catalog}`, or start afresh: `make stop && make reset`."
    )


def _topology(stack: Stack, own_store: bool = True) -> str:
    """The banner's lines about a replicated stack (none for the plain one). `own_store`:
    the stack started its PostgreSQL, whose URL (a throwaway password) `pg_dump` needs;
    else it is the operator's BATON_DATABASE_URL, not printed back."""
    if stack.replicas == 1:
        return ""
    from baton_platform.sql import redacted

    names = ", ".join(stack.names)
    url = stack.database_url or ""
    store = f"PostgreSQL  BATON_DATABASE_URL={url}" if own_store else f"PostgreSQL {redacted(url)}"
    return (
        f"\n  Store      {store}"
        f"\n  Topology   {stack.nats_nodes} NATS nodes; {names}; the api replicas behind the "
        f"balancer on {stack.api_url} (a replica that stops is started again: "
        "`baton dev restart` restarts them one at a time)"
    )


def dev_stack(**options: Any) -> Stack:
    """The stack `make run` starts: its simulator runs the devices of the catalog in use
    (each in its type's wire profile), whichever catalog that is."""
    return Stack(simulate_catalog=True, **options)


@dev_app.command("run")
def run(
    data_dir: Path = typer.Option(Path("var"), help="Where every service keeps its data."),
    api_port: int = typer.Option(8080, envvar="BATON_API_PORT"),
    nats_port: int = typer.Option(4222, envvar="BATON_DEV_NATS_PORT"),
    mqtt_port: int = typer.Option(1883, envvar="BATON_DEV_MQTT_PORT"),
    catalog: Path = typer.Option(DEFAULT_CATALOG, envvar="BATON_CATALOG_PATH"),
    api_key: str = typer.Option("dev-admin-key", envvar="BATON_DEV_API_KEY"),
    simulate: bool = typer.Option(
        True, help="Start the device simulator with every device of the catalog."
    ),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT,
        envvar="BATON_METRICS_PORT",
        min=0,
        help="Prometheus metrics of the dispatcher on this port, of the timeout-scheduler, "
        "device-bridge and api on the next three (--cluster: the second replicas on the "
        "four after); 0 turns them off.",
    ),
    cluster: bool = typer.Option(
        False,
        help="The replicated topology (make run-cluster): PostgreSQL, a 3-node NATS cluster "
        "and 2 replicas of each service, the api's behind a balancer on --api-port. Its data "
        "is under DATA_DIR/cluster and starts afresh each time; its store too, unless "
        "BATON_DATABASE_URL names one.",
    ),
) -> None:
    """Start nats-server, an MQTT broker, the four services and the simulator; stop on Ctrl-C."""
    data_dir = data_dir.resolve()
    pid_file = data_dir / PID_FILE
    postgres: PostgresServer | None = None
    supervisor: Supervisor | None = None
    # The operator's database (a restored backup, say), as `make run` takes it; else the
    # cluster starts a PostgreSQL of its own.
    given_store = os.environ.get("BATON_DATABASE_URL") or None
    topology: dict[str, Any] = {}
    if cluster:
        data_dir = data_dir / "cluster"
        shutil.rmtree(data_dir, ignore_errors=True)  # a trial: NATS and PostgreSQL start empty
        topology = {"nats_nodes": CLUSTER_NATS_NODES, "replicas": CLUSTER_REPLICAS}
    broker = mqtt_flavour()
    if broker == "nats":
        typer.echo("Mosquitto is not installed: using nats-server's MQTT listener (MQTT 3.1.1).")
    stack = dev_stack(
        data_dir=data_dir,
        api_key=api_key,
        catalog=catalog.resolve(),
        nats_port=nats_port,
        mqtt_port=mqtt_port,
        api_port=api_port,
        broker=broker,
        simulate=simulate,
        metrics_port=metrics_port,
        # Every process in a session of its own: Ctrl-C reaches only us, and we stop them in
        # order (the services before the servers they use).
        own_session=True,
        **topology,
    )
    problem = metrics_port_problem(stack)
    if problem is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(1)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if cluster and given_store is None:
            postgres = start_postgres(data_dir / "postgres", own_session=True)
        if cluster:
            stack.database_url = given_store or (postgres.url if postgres else None)
        stack.start_all()
        if not _wait_ready(stack.api_url):
            typer.echo(f"The API did not become ready; see {stack.log_dir}/", err=True)
            raise typer.Exit(1)
        write_state(stack.env(), os.getpid())  # `baton ...` finds this stack from anywhere
        if cluster:
            supervisor = Supervisor(stack, pid_file.parent / PROCESSES_FILE, typer.echo)
            supervisor.begin()
        # A catalog asked for (not the default) that the data directory's overrides: said.
        stored = stored_catalog(stack) if catalog.resolve() != DEFAULT_CATALOG.resolve() else None
        warning = catalog_warning(stack, stored)
        own_store = given_store is None
        if warning is None:
            typer.echo(_banner(stack, own_store=own_store))
        else:  # its example: a device of the catalog in use
            typer.echo(_banner(stack, [warning], stored, own_store))
        while not stopping:
            dead = stack.dead() if supervisor is None else supervisor.step()
            if dead:
                typer.echo(
                    f"{', '.join(dead)} stopped unexpectedly; see {stack.log_dir}/", err=True
                )
                raise typer.Exit(1)
            time.sleep(0.5)
    finally:
        typer.echo("Stopping Baton...")
        if supervisor is not None:
            supervisor.forget()  # before the stops, which are not to be restarted
        stack.stop_all()
        if postgres is not None:
            postgres.stop()
        pid_file.unlink(missing_ok=True)


@dev_app.command("nats-client")
def nats_client(
    tenant: str = typer.Argument(..., help="The tenant the client submits commands for."),
    data_dir: Path = typer.Option(Path("var"), help="The stack's data directory."),
) -> None:
    """Create (or show) the NATS user of a client bound to TENANT: it may submit on its
    tenant's subject only. A new one is let in at the next `baton dev run`."""
    from baton_contracts.nats import TENANT_SUBMIT_SUBJECT
    from baton_platform.nats_access import (
        ensure_credentials,
        inbox_prefix,
        read_credentials,
        tenant_user,
    )

    stack = Stack(data_dir=data_dir.resolve(), api_key="", catalog=Path())
    try:
        user = tenant_user(tenant)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    path = stack.nats_credentials
    new = not path.exists() or user not in read_credentials(path)
    passwords = ensure_credentials(stack.nats_credentials, [tenant])
    typer.echo(
        f"user          {user}\n"
        f"password      {passwords[user]}\n"
        f"submit on     {TENANT_SUBMIT_SUBJECT.format(tenant=tenant)}\n"
        f"inbox prefix  {inbox_prefix(user)}   (nats-py: connect(..., inbox_prefix=...))\n"
        f"stored in     {stack.nats_credentials}"
    )
    if new:
        typer.echo("New: restart `make run` (or `baton dev run`) to let it in.")


STOP_PATIENCE_S = 120.0


@dev_app.command("stop")
def stop(data_dir: Path = typer.Option(Path("var"))) -> None:
    """Stop a stack started by `baton dev run` (from another terminal)."""
    pid_file = data_dir / PID_FILE
    if not pid_file.exists():
        typer.echo("Nothing to stop.")
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        typer.echo("Nothing to stop (stale pid file removed).")
        return
    # The stack stops its processes one after another, each with time to finish what it
    # holds (an api replica drains for 6 s): a run-cluster took 14-17 s on two idle cores.
    deadline = time.monotonic() + STOP_PATIENCE_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo("Stopped.")
            return
        time.sleep(0.2)
    typer.echo(f"Process {pid} is still running.", err=True)
    sys.exit(1)


@dev_app.command("restart")
def restart(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Replicas to restart, in this order (default: every one)."),
    ] = None,
    data_dir: Path = typer.Option(Path("var"), help="The stack's data directory."),
) -> None:
    """Restart the service replicas of `make run-cluster` one at a time, each once the one
    before is ready again: a rolling restart (docs/operations.md, "Rolling upgrades")."""
    record = data_dir / "run" / PROCESSES_FILE
    processes = read_processes(record) if running_pid(data_dir) is not None else {}
    if not processes:
        typer.echo(
            f"error: no `make run-cluster` runs with its data in {data_dir}/ (`make run` runs "
            "one process of each service: stopping one stops the stack)",
            err=True,
        )
        raise typer.Exit(1)
    unknown = [name for name in names or [] if name not in processes]
    if unknown:
        typer.echo(
            f"error: no replica {', '.join(unknown)}; the stack's: {', '.join(processes)}",
            err=True,
        )
        raise typer.Exit(2)
    for name in names or list(processes):
        try:
            seconds = restart_replica(record, name)
        except RestartError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"{name} restarted; ready again after {seconds:.1f} s")


def running_pid(data_dir: Path) -> int | None:
    """The pid of the `baton dev run` whose data is in `data_dir`, if it still runs."""
    pid_file = data_dir / PID_FILE
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@dev_app.command("reset")
def reset(data_dir: Path = typer.Option(Path("var"), help="The stack's data directory.")) -> None:
    """Delete every local datum (DATA_DIR: events, views, JetStream, broker, logs). Refused
    while the stack runs: it stops nothing."""
    pid = running_pid(data_dir)
    if pid is not None:
        typer.echo(
            f"error: the stack is running (pid {pid}, data in {data_dir}/): stop it first "
            "(`make stop`, or Ctrl-C where it runs); nothing was deleted",
            err=True,
        )
        raise typer.Exit(1)
    if not data_dir.exists():
        typer.echo(f"Nothing to reset: no {data_dir}/.")
        return
    forget_state(data_dir)
    shutil.rmtree(data_dir)
    typer.echo(f"Deleted {data_dir}/: the next `make run` starts afresh.")
