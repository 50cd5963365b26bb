"""The `baton` command: send commands and look after executions (list, get, cancel, retry,
delete), the catalog (devices, types, catalog import/export), print an execution's events,
replay the views, run the device simulator, and run the local stack (`baton dev`).

Configured like the services, from BATON_* variables (baton_platform.settings.Settings); what
is unset comes from the last `baton dev run` (devstate.py), so the CLI finds the local stack
from any directory. Most commands talk to the HTTP API; `events` and `replay` read the event
store directly. docs/cli.md is the reference.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from baton_cli import executions as executions_cli
from baton_cli.access_backup import access_app
from baton_cli.api_client import (
    DEFAULT_KEY,
    DEFAULT_URL,
    ApiKey,
    ApiUrl,
    answer,
    fail,
    request,
)
from baton_cli.asyncapi import asyncapi
from baton_cli.catalog import catalog_app
from baton_cli.devstack import dev_app
from baton_cli.devstate import apply_state, origin
from baton_cli.inventory import devices_app, types_app
from baton_cli.keys import keys_app, tenants_app
from baton_cli.mqtt_setup import mqtt_setup
from baton_cli.nats_setup import nats_setup
from baton_cli.nats_streams import nats_replicate_events
from baton_cli.output import dumps, event_line, execution_summary, progress_bar
from baton_cli.tail import follow_execution, tail
from baton_cli.usage import BatonGroup
from baton_domain.json_values import json_faults

if TYPE_CHECKING:
    from baton_platform.settings import Settings

DEMO_DEVICES = [f"demo-thermostat-{n}" for n in range(1, 6)]
DEMO_SILENT = ["demo-silent-1"]

app = typer.Typer(
    name="baton",
    cls=BatonGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev_app, name="dev")
app.add_typer(catalog_app, name="catalog")
app.command("nats-setup")(nats_setup)
app.command("nats-replicate-events")(nats_replicate_events)
app.command("mqtt-setup")(mqtt_setup)
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(access_app, name="access")
app.command("tail")(tail)
app.command("asyncapi")(asyncapi)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"baton {version('baton-cli')}")
        raise typer.Exit()


@app.callback()
def settings_of_the_dev_stack(
    ctx: typer.Context,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Baton: send commands to IoT devices and keep an exact, replayable record of each.

    Settings come from BATON_* environment variables (docs/operations.md); those unset come from the last `make run` (`baton dev run`), wherever it runs.

    Exit status: 0 done, 1 the API or the store said no, 2 nothing answered or a usage error. See docs/cli.md.
    """  # noqa: E501 - typer keeps a paragraph's line breaks
    # Run before any command's options are read: their envvars see what this fills.
    # Not for `baton dev ...`: it starts (or stops) a stack and sets its settings itself. Filled
    # from the last stack's record, a new `make run` would start its services on that one's
    # database, catalog and NATS credentials, long gone after a `make run-cluster`.
    if ctx.invoked_subcommand != "dev":
        apply_state()


# --- send ----------------------------------------------------------------------------------


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON when it parses as JSON (24, true, "x", [1]), else text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise typer.BadParameter(f"expected key=value, got {text!r}", param_hint="--param")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        return key, raw
    # Python's json reads NaN, Infinity and 1e400 (as infinity), which no JSON text holds.
    faults = json_faults(value, key)
    if faults:
        raise typer.BadParameter(f"{faults[0].field}: {faults[0].reason}", param_hint="--param")
    return key, value


def parse_params(items: list[str]) -> dict[str, Any]:
    return dict(parse_param(item) for item in items)


@app.command()
def send(
    device: Annotated[str, typer.Argument(help="Device id, e.g. demo-thermostat-1.")],
    name: Annotated[str, typer.Argument(help="Command name, e.g. set_temperature.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            help="A command parameter; repeat for more. VALUE is read as JSON when it is "
            'JSON (24, true, null, "24", [1,2]), else taken as text.',
        ),
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(min=1, help="Seconds the command may take in all (default: the catalog's)."),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Wait up to this many seconds for the execution to end, its status shown "
            "live on a terminal.",
        ),
    ] = None,
    expect_success: Annotated[
        bool,
        typer.Option(
            "--expect-success",
            help="Exit 3 unless the execution SUCCEEDED (4 if it had not ended when the wait "
            "ran out); without --wait, waits until its deadline.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the execution as JSON instead of a summary.")
    ] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Send a command to a device through the API and print the execution.

    Example: baton send demo-thermostat-1 set_temperature -p value=24 --wait 10

    Exit status: 0 accepted (with --expect-success: SUCCEEDED), 1 the API answered with a
    problem, 2 the API is unreachable or a usage error, 3 --expect-success and it ended
    otherwise, 4 --expect-success and it had not ended when the wait ran out.
    """
    body: dict[str, Any] = {"name": name, "params": parse_params(param or [])}
    if ttl is not None:
        body["ttl"] = ttl
    execution = answer(request("POST", api_url, f"/v1/devices/{device}/commands", api_key, body))
    if not isinstance(execution, dict):
        fail(f"error: unexpected answer from the API: {execution!r}"[:500])
    if wait is None and expect_success:
        wait = float(execution.get("ttl") or 0) + DEADLINE_GRACE
    if wait:
        execution = executions_cli.watch(execution, wait, api_url, api_key)
    typer.echo(dumps(execution) if as_json else execution_summary(execution))
    if expect_success:
        executions_cli.expect_success(execution)


DEADLINE_GRACE = 10.0  # --expect-success without --wait: past the ttl, time to record the end

app.command("list")(executions_cli.list_executions)
app.command()(executions_cli.get)
app.command()(executions_cli.cancel)
app.command()(executions_cli.retry)
app.command()(executions_cli.delete)
app.add_typer(devices_app, name="devices")
app.add_typer(types_app, name="types")


# --- events --------------------------------------------------------------------------------


@app.command()
def events(
    execution_id: Annotated[UUID, typer.Argument(help="The execution's id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of text.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Through the API: each change as it comes, to its end."
        ),
    ] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Print an execution's stored events, oldest first: time, type, data.

    Reads the event store (BATON_DATA_DIR/events.sqlite, or BATON_DATABASE_URL) directly,
    not the API. With --follow, follows the API's live feed of the execution instead
    (GET /v1/executions/ID/events) until the execution ends.
    """
    if follow:
        follow_execution(str(execution_id), api_url, api_key, as_json)
        return
    from baton_domain.errors import ExecutionNotFound
    from baton_platform.eventstore import open_executions
    from baton_platform.settings import Settings

    settings = Settings()
    check_event_store(settings)
    executions = open_executions(settings)
    try:
        stored = executions.events_of(execution_id)
    except ExecutionNotFound:
        fail(f"error: no execution {execution_id} in {settings.event_store}")
    finally:
        executions.close()
    for event in stored:
        typer.echo(event_line(event, as_json=as_json))


# --- replay --------------------------------------------------------------------------------


@app.command()
def replay() -> None:
    """Rebuild every view from the event store, from position 0.

    Empties the views (BATON_DATA_DIR/views.sqlite, or the schema `views` of
    BATON_DATABASE_URL) and projects every stored event again.

    One transaction: the api keeps serving the old rows until the new ones are complete.
    """
    from baton_platform.eventstore import open_executions
    from baton_platform.settings import Settings
    from baton_views import rebuild

    settings = Settings()
    check_event_store(settings)
    executions = open_executions(settings)
    reached = 0
    try:
        with progress_bar() as bar:
            task = bar.add_task("replaying", total=None)

            def progress(position: int, last: int) -> None:
                nonlocal reached
                reached = position
                bar.update(task, completed=position, total=last)

            applied = rebuild(executions, settings.views_database, progress)
        final = max(reached, executions.recorder.max_notification_id() or 0) if applied else 0
    finally:
        executions.close()
    typer.echo(f"replayed {applied} events into {settings.views_database}; position {final}")


def check_event_store(settings: Settings) -> None:
    """A SQLite event store must exist already (opening one would make an empty one); a
    PostgreSQL one is asked (an empty database has its tables made, and nothing in them),
    once its URL is one."""
    from baton_platform.sql import postgres_params

    if settings.postgres_url is not None:
        try:
            postgres_params(settings.postgres_url)
        except ValueError as exc:
            fail(f"error: {exc} ({origin('BATON_DATABASE_URL')})")
    elif not settings.event_store_path.exists():
        fail(
            f"error: no event store at {settings.event_store_path.resolve()} "
            f"({origin('BATON_DATA_DIR')}). Set BATON_DATA_DIR to the stack's data directory "
            "(or BATON_DATABASE_URL), or start one with `make run`."
        )


# --- simulate ------------------------------------------------------------------------------

SIMULATE_LABEL = "simulate"  # a device label naming the simulator's behaviour for it
DURATION_UNITS = {"ms": 0.001, "s": 1.0}


def parse_duration(text: str, hint: str) -> float:
    """`5ms`, `0.2s` or `1.5` (seconds)."""
    raw = text.strip()
    unit = next((u for u in ("ms", "s") if raw.endswith(u)), "")
    try:
        seconds = float(raw.removesuffix(unit)) * DURATION_UNITS.get(unit, 1.0)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # NaN too
        raise typer.BadParameter(f"not a duration: {text!r} (say 5ms, 0.2s or 1)", param_hint=hint)
    return seconds


def parse_delays(items: list[str], hint: str) -> dict[str, float]:
    """`[BEHAVIOUR=]DURATION` items: the delay by behaviour name, "" for every behaviour."""
    from baton_simulator import BEHAVIOURS

    delays: dict[str, float] = {}
    for item in items:
        name, sep, duration = item.rpartition("=")
        name = name.strip()
        if sep and name not in BEHAVIOURS:
            known = ", ".join(sorted(BEHAVIOURS))
            raise typer.BadParameter(f"no behaviour {name!r} (knows {known})", param_hint=hint)
        delays[name] = parse_duration(duration, hint)
    return delays


def timings(answer: list[str], progress: list[str]) -> dict[str, Any]:
    """The simulator Timing of each behaviour name ("" for every other behaviour)."""
    from baton_simulator import Timing

    answers = parse_delays(answer, "--answer-delay")
    progresses = parse_delays(progress, "--progress-delay")
    default = Timing(answers.get(""), progresses.get(""))
    found: dict[str, Any] = {"": default}
    for name in (set(answers) | set(progresses)) - {""}:
        found[name] = Timing(answers.get(name), progresses.get(name)).over(default)
    return found


def behaviour_named(name: str, by_name: dict[str, Any]) -> Any:
    """The behaviour `name`, with the answer times set for it (or for every behaviour)."""
    from baton_simulator import BEHAVIOURS

    return BEHAVIOURS[name].timed(by_name.get(name, by_name[""]))


def catalog_specs(
    path: Path, only: list[str], silent: list[str], by_name: dict[str, Any] | None = None
) -> list[Any]:
    """The simulator's device specs for the catalog at `path`: each device speaks its type's
    wire profile and follows the behaviour its `simulate` label names (`silent`, ...), else
    the one named like its type, else `generic`. `only`: just those devices (all if empty);
    `silent`: those stay silent whatever their label. `by_name`: answer times by behaviour
    name (`timings`)."""
    from baton_domain.catalog import Catalog, CatalogError
    from baton_simulator import BEHAVIOURS, DeviceSpec, DeviceWire, Timing

    try:
        catalog = Catalog.from_yaml(path)
    except CatalogError as exc:
        raise typer.BadParameter(str(exc), param_hint="--catalog") from None
    by_id = {device.id: device for device in catalog.devices}
    unknown = [d for d in [*only, *silent] if d not in by_id]
    if unknown:
        raise typer.BadParameter(f"not in the catalog: {', '.join(unknown)}", param_hint="--device")
    specs = []
    for device_id in [*only, *silent] or list(by_id):
        device = by_id[device_id]
        device_type = catalog.device_types[device.type]
        name = "silent" if device_id in silent else device.labels.get(SIMULATE_LABEL)
        if name is None:
            name = device.type if device.type in BEHAVIOURS else "generic"
        if name not in BEHAVIOURS:
            known = ", ".join(sorted(BEHAVIOURS))
            raise typer.BadParameter(
                f"device {device_id}: no behaviour {name!r} (knows {known})", param_hint="--catalog"
            )
        profile = device_type.wire_profile
        wire = DeviceWire(
            wire_id=device.id if profile == "baton" else device.wire_id,
            profile=profile,
            type_wire=device_type.wire,
            commands_wire={n: spec.wire for n, spec in device_type.commands.items()},
        )
        specs.append(DeviceSpec(device_id, wire, behaviour_named(name, by_name or {"": Timing()})))
    return specs


def fleet_specs(
    count: int, device_type: str, prefix: str, behaviour: str | None, by_name: dict[str, Any]
) -> list[Any]:
    """`count` devices of `device_type` on Baton's own profile, named as `baton catalog fleet`
    names them, following `behaviour` (default: the one named like the type, else
    `generic`)."""
    from baton_simulator import BEHAVIOURS, DeviceSpec, DeviceWire, fleet_ids

    name = behaviour or (device_type if device_type in BEHAVIOURS else "generic")
    if name not in BEHAVIOURS:
        known = ", ".join(sorted(BEHAVIOURS))
        raise typer.BadParameter(f"no behaviour {name!r} (knows {known})", param_hint="--behaviour")
    timed = behaviour_named(name, by_name)
    return [DeviceSpec(d, DeviceWire(d), timed) for d in fleet_ids(count, prefix)]


@app.command()
def simulate(
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="A device to simulate; repeat for more."),
    ] = None,
    silent: Annotated[
        list[str] | None,
        typer.Option(help="A device that receives commands but never answers; repeatable."),
    ] = None,
    mqtt_host: Annotated[
        str | None, typer.Option(help="MQTT broker host (default BATON_MQTT_HOST).")
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="MQTT broker port (default BATON_MQTT_PORT).")
    ] = None,
    mqtt_protocol: Annotated[
        str | None,
        typer.Option(help="MQTT protocol: 5 or 3.1.1 (default BATON_MQTT_PROTOCOL)."),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Simulate the devices of this catalog, each in its type's wire profile "
            "(--device/--silent then pick among them)."
        ),
    ] = None,
    fleet: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Simulate N generated devices (sim-00001 ..., as `baton catalog fleet N` "
            "writes them), besides any --device/--silent.",
        ),
    ] = None,
    device_type: Annotated[
        str, typer.Option("--type", help="The device type of the --fleet devices.")
    ] = "thermostat",
    prefix: Annotated[str, typer.Option(help="The id prefix of the --fleet devices.")] = "sim-",
    behaviour: Annotated[
        str | None,
        typer.Option(
            help="The behaviour of the --fleet devices (default: the one named like --type, "
            "else generic)."
        ),
    ] = None,
    answer_delay: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[BEHAVIOUR=]DURATION",
            help="Time from a request to a device's first answer (5ms, 0.2s, 1); with "
            "BEHAVIOUR= only for that behaviour's devices. Repeatable.",
        ),
    ] = None,
    progress_delay: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[BEHAVIOUR=]DURATION",
            help="Time before each later answer (progress, final) or state report; with "
            "BEHAVIOUR= only for that behaviour's devices. Repeatable.",
        ),
    ] = None,
    connect_batch: Annotated[
        int | None,
        typer.Option(min=1, help="How many devices may be connecting at once (default 100)."),
    ] = None,
    journal: Annotated[
        Path | None,
        typer.Option(
            envvar="BATON_SIMULATOR_JOURNAL",
            help="Append every request a device receives and every answer it sends to this "
            "file, one JSON object per line, flushed per line.",
        ),
    ] = None,
) -> None:
    """Run simulated devices that answer commands over MQTT, until Ctrl-C.

    Without --device or --silent: demo-thermostat-1..5, and demo-silent-1 that stays silent.
    With --catalog: every device of the catalog; a device labelled `simulate: silent` stays
    silent, `simulate: charger` answers and reports its state (docs/wire-profiles.md). Each
    device publishes `online` (retained) on its status topic when it connects, leaves its
    last will `offline`, and says `offline` before it disconnects on Ctrl-C or SIGTERM.
    With --fleet N: N generated devices (10,000 fit in one process), connected a batch at a
    time; --answer-delay and --progress-delay set how fast every device answers. With
    --journal FILE: what each device received and answered, as JSON lines (make chaos
    compares Baton's record with it).
    """
    from baton_platform.logs import configure_logging
    from baton_platform.settings import Settings
    from baton_simulator import Access, Journal, Timing, TooManyDevices

    if mqtt_protocol not in (None, "5", "3.1.1"):
        raise typer.BadParameter("must be 5 or 3.1.1", param_hint="--mqtt-protocol")
    try:
        run_simulator: Callable[..., Awaitable[None]] = importlib.import_module(
            "baton_simulator"
        ).run_simulator
    except (ImportError, AttributeError) as exc:
        fail(f"the simulator is not available: {exc}")

    settings = Settings()
    configure_logging("simulator", settings.log_level, settings.log_format)
    devices, silent_devices = list(device or []), list(silent or [])
    by_name = timings(answer_delay or [], progress_delay or [])
    options: dict[str, Any] = {}  # only what differs from run_simulator's defaults
    specs: list[Any] = []
    if catalog is not None:
        if fleet is not None:
            raise typer.BadParameter(
                "simulate a catalog or a fleet, not both (`baton catalog fleet` writes a "
                "catalog of a fleet)",
                param_hint="--fleet",
            )
        specs = catalog_specs(catalog, devices, silent_devices, by_name)
        devices, silent_devices = [], []
    else:
        if fleet is not None:
            specs = fleet_specs(fleet, device_type, prefix, behaviour, by_name)
        elif not devices and not silent_devices:
            devices, silent_devices = list(DEMO_DEVICES), list(DEMO_SILENT)
        if len(by_name) > 1 or specs:
            # Timings differ by behaviour (or a fleet is timed already): every device its own.
            specs = [
                *catalog_free_specs(devices, "thermostat", by_name),
                *catalog_free_specs(silent_devices, "silent", by_name),
                *specs,
            ]
            devices, silent_devices = [], []
        elif by_name[""] != Timing():
            options["timing"] = by_name[""]
    if specs:
        options["specs"] = specs
    if connect_batch is not None:
        options["connect_batch"] = connect_batch
    if journal is not None:
        options["journal"] = Journal(journal)
    password = settings.mqtt_password
    access = Access(
        settings.mqtt_username,
        password.get_secret_value() if password is not None else None,
        settings.mqtt_tls,
        settings.mqtt_ca_file,
    )
    if access != Access():
        options["access"] = access  # the simulator's account (docs/security.md)
    host = mqtt_host or settings.mqtt_host
    port = mqtt_port or settings.mqtt_port
    protocol = mqtt_protocol or settings.mqtt_protocol
    typer.echo(
        f"simulating {len(devices) + len(specs)} device(s) (+{len(silent_devices)} silent) on "
        f"mqtt://{host}:{port} (MQTT {protocol}); Ctrl-C stops",
        err=True,
    )

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_simulator(host, port, protocol, devices, silent_devices, stop, **options)

    try:
        asyncio.run(_run())
    except TooManyDevices as exc:
        fail(str(exc))
    finally:
        if journal is not None:
            options["journal"].close()


def catalog_free_specs(devices: list[str], behaviour: str, by_name: dict[str, Any]) -> list[Any]:
    """Devices named on the command line, on Baton's own profile."""
    from baton_simulator import DeviceSpec, DeviceWire

    timed = behaviour_named(behaviour, by_name)
    return [DeviceSpec(d, DeviceWire(d), timed) for d in devices]


def main() -> None:  # pragma: no cover - `python -m baton_cli.main`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
