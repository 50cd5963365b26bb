"""`baton catalog import|export FILE`: the catalog document as YAML, through the API.

Import replaces the whole catalog (checked first: a wrong file changes nothing and the
problem names each wrong field); export writes what is stored. Both need the api running
and, for import, an admin key (BATON_API_KEY; `make run`'s key is one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml

from baton_cli.output import problem_lines

catalog_app = typer.Typer(help="Import or export the device catalog (YAML).", no_args_is_help=True)

ApiUrl = Annotated[str, typer.Option(envvar="BATON_API_URL", help="Base URL of the Baton API.")]
ApiKey = Annotated[
    str, typer.Option(envvar="BATON_API_KEY", help="API key (an admin key for import).")
]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _call(method: str, url: str, key: str, body: Any = None) -> Any:
    import httpx

    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the Baton API at {url}: {exc}", 2)
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.is_error:
        _fail("\n".join(problem_lines(response.status_code, response.reason_phrase, payload)))
    return payload


@catalog_app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="Where to write the catalog; - for stdout.")],
    api_url: ApiUrl = "http://127.0.0.1:8080",
    api_key: ApiKey = "dev-admin-key",
) -> None:
    """Write the stored catalog to FILE as YAML."""
    document = _call("GET", f"{api_url.rstrip('/')}/v1/catalog", api_key)
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
    api_url: ApiUrl = "http://127.0.0.1:8080",
    api_key: ApiKey = "dev-admin-key",
) -> None:
    """Replace the whole catalog with FILE (checked first; nothing changes if it is wrong)."""
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"cannot read {file}: {exc}")
    if not isinstance(document, dict):
        _fail(f"{file} is not a catalog: expected a mapping, got {type(document).__name__}")
    stored = _call("PUT", f"{api_url.rstrip('/')}/v1/catalog", api_key, document)
    typer.echo(
        f"imported {len(stored.get('device_types', {}))} device type(s) and "
        f"{len(stored.get('devices', []))} device(s) from {file}"
    )
