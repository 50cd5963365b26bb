"""`baton nats-setup DIR`: the NATS users of a deployment (compose.yaml runs it first).

Writes `DIR/credentials.json` (every service's, `ops`' and each tenant client's password,
generated once and kept) and `DIR/nats.conf`: the base config (listen, JetStream) followed
by the users and their permissions (`baton_platform.nats_access`), so nats-server admits
Baton's users only. Both readable by their owner only. The services read their password
from the same file (BATON_NATS_CREDENTIALS), or take it from BATON_NATS_PASSWORD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from baton_contracts.nats import DEFAULT_TENANT
from baton_platform.nats_access import authorization_block, ensure_credentials, write_private


def write_nats_config(folder: Path, base: Path, tenants: list[str]) -> Path:
    """The credentials and nats-server's config under `folder`; returns the config's path."""
    passwords = ensure_credentials(folder / "credentials.json", tenants)
    config = folder / "nats.conf"
    write_private(config, f"{base.read_text().rstrip()}\n{authorization_block(passwords)}\n")
    return config


def nats_setup(
    folder: Annotated[Path, typer.Argument(help="Where to write credentials.json and nats.conf.")],
    base: Annotated[
        Path, typer.Option(help="nats-server's config without users (listen, JetStream).")
    ] = Path("deploy/nats/nats.conf"),
    tenant: Annotated[
        list[str] | None, typer.Option(help="A client bound to this tenant (repeatable).")
    ] = None,
) -> None:
    """Generate the NATS users of a deployment and nats-server's config with them."""
    try:
        config = write_nats_config(folder, base, tenant or [DEFAULT_TENANT])
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"NATS users in {folder / 'credentials.json'}; nats-server config {config}")
