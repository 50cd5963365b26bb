"""`baton catalog import|export FILE`: the catalog document as YAML, through the API;
`baton catalog fleet N`: a catalog with a generated fleet, for `baton simulate --fleet`.

Import replaces the key's tenant's whole catalog (checked first: a wrong file changes
nothing and the problem names each wrong field); export writes what that tenant has. Both
need the api running and, for import, the admin role (BATON_API_KEY; `make run`'s key is
the owner's). `fleet` needs
nothing running: it reads a catalog file and writes YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, call, fail
from baton_cli.output import progress_bar
from baton_domain.json_values import json_faults

catalog_app = typer.Typer(
    help="Import or export the device catalog (YAML), or write one with a generated fleet.",
    no_args_is_help=True,
)


@catalog_app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="Where to write the catalog; - for stdout.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Write the stored catalog to FILE as YAML."""
    document = call("GET", api_url, "/v1/catalog", api_key)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if str(file) == "-":
        typer.echo(text, nl=False)
        return
    file.write_text(text)
    typer.echo(
        f"exported {len(document.get('device_types', {}))} device type(s) and "
        f"{len(document.get('devices', []))} device(s) to {file}"
    )


@catalog_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A catalog YAML file (as `export` writes).")],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Change nothing: check FILE, print what would change and every error with "
            "its field path (exit 1 if there is one).",
        ),
    ] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Replace the whole catalog with FILE (checked first; nothing changes if it is wrong)."""
    if dry_run:
        _dry_run(file, api_url, api_key)
        return
    with steps(2) as step:
        document = _read_catalog(file)
        step("checking")
        # The rest is the dispatcher's to check; what JSON cannot carry could not be sent.
        _refuse(file, [(e.field, e.reason) for e in json_faults(document)])
        step("importing")
        stored = call("PUT", api_url, "/v1/catalog", api_key, document, timeout=300)
        step("done")
    typer.echo(
        f"imported {len(stored.get('device_types', {}))} device type(s) and "
        f"{len(stored.get('devices', []))} device(s) from {file}"
    )


def _dry_run(file: Path, api_url: str, api_key: str) -> None:
    """Print what importing FILE would change and each of its errors; change nothing."""
    with steps(3) as step:
        document = _read_catalog(file)
        step("checking")
        errors = catalog_errors(document)
        step("reading the stored catalog")
        stored = call("GET", api_url, "/v1/catalog", api_key)
        step("done")
    for line in catalog_diff(stored, document):
        typer.echo(line)
    _refuse(file, errors)
    typer.echo(f"{file} is valid; nothing changed (dry run)")


def _refuse(file: Path, errors: list[tuple[str, str]]) -> None:
    """Exit 1 printing each error with its field path, when there is one."""
    for field, reason in errors:
        typer.echo(f"error: {field}: {reason}", err=True)
    if errors:
        fail(f"error: {file} is not a valid catalog ({len(errors)} error(s)); nothing changed")


@contextmanager
def steps(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr, on a terminal only: `step(what)` ends a step."""
    with progress_bar() as bar:
        task = bar.add_task("reading", total=total)
        yield lambda what: bar.update(task, advance=1, description=what)


def catalog_errors(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every error of a catalog document, each with its field path (the check an import
    makes); [] for a valid one."""
    from baton_domain.catalog_document import checked
    from baton_domain.errors import InvalidCatalog
    from baton_platform.commands import WIRE

    try:
        checked(document, WIRE)
    except InvalidCatalog as exc:
        return [(e.field, e.reason) for e in exc.errors]
    return []


def catalog_diff(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What importing `new` over `stored` changes: `+ added`, `- removed`, `~ changed`, per
    device type and device; one line saying so when nothing would."""
    lines: list[str] = []
    stored, new = _normal(stored), _normal(new)
    for what, old_items, new_items in (
        ("device type", _by_key(stored, "device_types"), _by_key(new, "device_types")),
        ("device", _by_key(stored, "devices"), _by_key(new, "devices")),
    ):
        for key in sorted(old_items.keys() | new_items.keys()):
            if key not in old_items:
                lines.append(f"+ {what} {key}")
            elif key not in new_items:
                lines.append(f"- {what} {key}")
            elif old_items[key] != new_items[key]:
                lines.append(f"~ {what} {key}")
    return lines or ["no change to the stored catalog"]


def _normal(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the store keeps it (defaults left out), when it is valid; so a file
    that spells a default out does not differ from the stored catalog."""
    from baton_domain.catalog_document import build, document_of
    from baton_domain.errors import InvalidCatalog

    try:
        return document_of(build(document, stored=True))
    except InvalidCatalog:
        return document


def _by_key(document: dict[str, Any], part: str) -> dict[str, Any]:
    """A part's items by name (device types) or id (devices), without the tenant Baton sets."""
    items = document.get(part) or {}
    if isinstance(items, dict):
        pairs = [(str(k), v) for k, v in items.items()]
    elif isinstance(items, list):
        # An entry without an id changes nothing nameable: the check refuses it.
        pairs = [
            (d["id"], d) for d in items if isinstance(d, dict) and isinstance(d.get("id"), str)
        ]
    else:
        pairs = []
    return {
        k: {f: x for f, x in v.items() if f != "tenant"} if isinstance(v, dict) else v
        for k, v in pairs
    }


def _read_catalog(file: Path) -> dict[str, Any]:
    """A catalog document from a YAML file, or exit naming what is wrong with it."""
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"error: cannot read {file}: {exc}")
    if not isinstance(document, dict):
        fail(f"error: {file} is not a catalog: expected a mapping, got {type(document).__name__}")
    if not document.keys() & {"device_types", "devices"}:
        # An empty file (a failed export, a wrong path's blank template) would replace the
        # catalog with nothing: every device gone. Emptying it must be said in so many words.
        fail(
            f"error: {file} holds no catalog (neither device_types nor devices); to remove "
            "everything, import a file that says `device_types: {}` and `devices: []`"
        )
    return document


@catalog_app.command("fleet")
def fleet(
    count: Annotated[int, typer.Argument(min=1, help="How many devices to generate.")],
    device_type: Annotated[
        str, typer.Option("--type", help="Their device type (declared in --base).")
    ] = "thermostat",
    prefix: Annotated[str, typer.Option(help="Their id prefix.")] = "sim-",
    base: Annotated[
        Path,
        typer.Option(
            envvar="BATON_CATALOG_PATH",
            help="The catalog the fleet is added to: its device types and devices are kept.",
        ),
    ] = Path("deploy/catalog/demo.yaml"),
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write it; - for stdout.")
    ] = Path("-"),
) -> None:
    """Write a catalog: --base plus COUNT devices of --type named PREFIX00001 ..., the devices
    `baton simulate --fleet COUNT` (same --type and --prefix) simulates.

    Example: baton catalog fleet 1000 -o fleet.yaml, then BATON_CATALOG_PATH=fleet.yaml
    make run, or baton catalog import fleet.yaml.
    """
    from baton_domain.catalog import Catalog, CatalogError
    from baton_simulator import fleet_ids

    document = _read_catalog(base)
    if device_type not in (document.get("device_types") or {}):
        fail(f"{base} declares no device type {device_type!r}")
    devices = list(document.get("devices") or [])
    devices += [{"id": d, "type": device_type} for d in fleet_ids(count, prefix)]
    document["devices"] = devices
    try:
        Catalog.model_validate(document)
    except (CatalogError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        fail(f"the fleet does not make a valid catalog: {exc}")
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"wrote {len(devices)} device(s), {count} of them generated, to {output}")
