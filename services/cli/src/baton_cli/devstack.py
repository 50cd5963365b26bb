"""`baton dev run|stop`: the whole stack on this machine, what `make run` starts.

Data lives under ./var/ (event store, views, deadlines, JetStream, broker persistence, logs),
so a second `make run` carries on where the first stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import typer

from baton_cli.localstack import Stack, mqtt_flavour

dev_app = typer.Typer(
    help="Run the whole stack locally (what `make run` does).", no_args_is_help=True
)

PID_FILE = "run/devstack.pid"


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


def _banner(stack: Stack) -> str:
    key = stack.api_key
    broker = "Mosquitto" if stack.broker == "mosquitto" else "nats-server's MQTT listener"
    body = json.dumps({"name": "set_temperature", "params": {"value": 22}})
    return f"""
Baton is running.
  API        {stack.api_url}   (docs: {stack.api_url}/schema/swagger)
  API key    {key}
  NATS       {stack.nats_url}
  MQTT       mqtt://127.0.0.1:{stack.mqtt_port} ({broker})
  Data/logs  {stack.data_dir}/  (logs in {stack.log_dir}/)

Send a first command:
  curl -s -X POST '{stack.api_url}/v1/devices/demo-thermostat-1/commands?wait=5' \\
       -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
       -d '{body}'

  .venv/bin/baton send demo-thermostat-1 set_temperature --param value=22 --wait 5

Ctrl-C (or `make stop`) stops everything.
"""


@dev_app.command("run")
def run(
    data_dir: Path = typer.Option(Path("var"), help="Where every service keeps its data."),
    api_port: int = typer.Option(8080, envvar="BATON_API_PORT"),
    nats_port: int = typer.Option(4222, envvar="BATON_DEV_NATS_PORT"),
    mqtt_port: int = typer.Option(1883, envvar="BATON_DEV_MQTT_PORT"),
    catalog: Path = typer.Option(Path("deploy/catalog/demo.yaml"), envvar="BATON_CATALOG_PATH"),
    api_key: str = typer.Option("dev-admin-key", envvar="BATON_DEV_API_KEY"),
    simulate: bool = typer.Option(True, help="Start the device simulator with the demo devices."),
) -> None:
    """Start nats-server, an MQTT broker, the four services and the simulator; stop on Ctrl-C."""
    data_dir = data_dir.resolve()
    broker = mqtt_flavour()
    if broker == "nats":
        typer.echo("Mosquitto is not installed: using nats-server's MQTT listener (MQTT 3.1.1).")
    stack = Stack(
        data_dir=data_dir,
        api_key=api_key,
        catalog=catalog.resolve(),
        nats_port=nats_port,
        mqtt_port=mqtt_port,
        api_port=api_port,
        broker=broker,
        simulate=simulate,
    )
    pid_file = data_dir / PID_FILE
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        stack.start_all()
        if not _wait_ready(stack.api_url):
            typer.echo(f"The API did not become ready; see {stack.log_dir}/", err=True)
            raise typer.Exit(1)
        typer.echo(_banner(stack))
        while not stopping:
            dead = stack.dead()
            if dead:
                typer.echo(
                    f"{', '.join(dead)} stopped unexpectedly; see {stack.log_dir}/", err=True
                )
                raise typer.Exit(1)
            time.sleep(0.5)
    finally:
        typer.echo("Stopping Baton...")
        stack.stop_all()
        pid_file.unlink(missing_ok=True)


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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo("Stopped.")
            return
        time.sleep(0.2)
    typer.echo(f"Process {pid} is still running.", err=True)
    sys.exit(1)
