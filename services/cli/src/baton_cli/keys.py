"""`baton keys create|list|revoke` and `baton tenants create|list`, through the API.

Keys need the admin role (your own tenant's keys, up to your own role); tenants need the
owner's key (`make run`'s `dev-admin-key`). A new key is printed once: keep it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from baton_cli.api_client import DEFAULT_KEY, DEFAULT_URL, ApiKey, ApiUrl, call
from baton_contracts.nats import RoleName

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
tenants_app = typer.Typer(help="Create and list tenants (the owner only).", no_args_is_help=True)


@keys_app.command("create")
def create(
    role: Annotated[RoleName, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="What the key is for (shown in `keys list`).")],
    tenant: Annotated[
        str | None, typer.Option(help="The owner only: a key of another tenant.")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Create a key and print it (this once; only its hash is stored)."""
    body: dict[str, str] = {"role": role, "name": name}
    if tenant is not None:
        body["tenant"] = tenant
    created = call("POST", api_url, "/v1/keys", api_key, body)
    typer.echo(f"{created['key']}")
    typer.echo(
        f"key {created['id']}: {created['role']} of tenant {created['tenant']} "
        f"({created['name']}); it is shown only now",
        err=True,
    )


@keys_app.command("list")
def list_(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY) -> None:
    """The keys of your tenant (every tenant's for the owner); never the keys themselves."""
    page = call("GET", api_url, "/v1/keys", api_key)
    for item in page["items"]:
        typer.echo(
            f"{item['id']}  {item['role']:<8}  {item['tenant']:<16}  "
            f"{item['created_at']}  {item['name']}"
        )
    if not page["items"]:
        typer.echo("no managed keys", err=True)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Revoke a key: every api replica refuses it from then on."""
    call("DELETE", api_url, f"/v1/keys/{key_id}", api_key)
    typer.echo(f"revoked key {key_id}")


@tenants_app.command("create")
def create_tenant(
    tenant_id: Annotated[str, typer.Argument(help="Lower-case letters, digits and `-`.")],
    name: Annotated[str, typer.Option(help="Its display name.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = DEFAULT_KEY,
) -> None:
    """Create a tenant; then `baton keys create --tenant ID --role admin` gives it a key."""
    created = call("POST", api_url, "/v1/tenants", api_key, {"id": tenant_id, "name": name})
    typer.echo(f"created tenant {created['id']} ({created['name']})")


@tenants_app.command("list")
def list_tenants(api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = DEFAULT_KEY) -> None:
    """Every tenant but `default` (which always exists)."""
    page = call("GET", api_url, "/v1/tenants", api_key)
    for item in page["items"]:
        typer.echo(f"{item['id']:<16}  {item['created_at']}  {item['name']}")
