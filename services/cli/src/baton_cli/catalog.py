"""`baton catalog import|export FILE`: the catalog document as YAML, through the API;
`baton catalog fleet N`: a catalog with a generated fleet, for `baton simulate --fleet`.

Import replaces the key's tenant's whole catalog (checked first: a wrong file changes
nothing and the problem names each wrong field); export writes what that tenant has. Both
need the api running and, for import, the admin role (BATON_API_KEY; `make run`'s key is
the owner's). `fleet` needs
nothing running: it reads a catalog file and writes YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, call, fail

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
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Replace the whole catalog with FILE (checked first; nothing changes if it is wrong)."""
    document = _read_catalog(file)
    stored = call("PUT", api_url, "/v1/catalog", api_key, document)
    typer.echo(
        f"imported {len(stored.get('device_types', {}))} device type(s) and "
        f"{len(stored.get('devices', []))} device(s) from {file}"
    )


def _read_catalog(file: Path) -> dict[str, Any]:
    """A catalog document from a YAML file, or exit naming what is wrong with it."""
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {file}: {exc}")
    if not isinstance(document, dict):
        fail(f"{file} is not a catalog: expected a mapping, got {type(document).__name__}")
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
