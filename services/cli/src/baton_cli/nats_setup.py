"""`baton nats-setup DIR`: the NATS users of a deployment (compose.yaml runs it first).

Writes `DIR/credentials.json` (every service's, `ops`' and each tenant client's password,
generated once and kept) and `DIR/nats.conf`: the base config (listen, JetStream) followed
by the users and their permissions (`baton_platform.nats_access`), so nats-server admits
Baton's users only. Both readable by their owner only. The services read their password
from the same file (BATON_NATS_CREDENTIALS), or take it from BATON_NATS_PASSWORD.

With `--node HOST` for each node of a JetStream cluster, it writes one config per node
instead, `DIR/<name>.conf` (the name: the host's first label), each with its `server_name`
and the `cluster` block the local stack's nodes have (`nats_cluster`): every node's route,
and a route password generated once into `DIR/route-password` and kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from baton_cli.nats_cluster import cluster_block, route_url
from baton_contracts.nats import DEFAULT_TENANT
from baton_platform.nats_access import (
    authorization_block,
    ensure_credentials,
    new_password,
    write_private,
)

ROUTE_PORT = 6222
ROUTE_PASSWORD_FILE = "route-password"


def write_nats_config(folder: Path, base: Path, tenants: list[str]) -> Path:
    """The credentials and nats-server's config under `folder`; returns the config's path."""
    passwords = ensure_credentials(folder / "credentials.json", tenants)
    config = folder / "nats.conf"
    write_private(config, f"{base.read_text().rstrip()}\n{authorization_block(passwords)}\n")
    return config


def node_name(host: str) -> str:
    """A node's `server_name` and config file name: its host's first label."""
    return host.split(".", 1)[0]


def route_password(folder: Path) -> str:
    """The cluster's route password: made once, then read back, so nodes configured at
    different times agree."""
    path = folder / ROUTE_PASSWORD_FILE
    if path.exists():
        return path.read_text().strip()
    password = new_password()
    write_private(path, password + "\n")
    return password


def write_cluster_configs(
    folder: Path, base: Path, tenants: list[str], hosts: list[str]
) -> list[Path]:
    """The credentials and one config per node of `hosts` under `folder`; their paths."""
    if len({node_name(host) for host in hosts}) != len(hosts):
        raise ValueError(f"nodes {hosts}: each needs a host whose first label is its own")
    passwords = ensure_credentials(folder / "credentials.json", tenants)
    password = route_password(folder)
    routes = [route_url(password, host, ROUTE_PORT) for host in hosts]
    configs = []
    for host in hosts:
        name = node_name(host)
        config = folder / f"{name}.conf"
        text = [
            base.read_text().rstrip(),
            f'server_name: "{name}"',
            cluster_block(f"0.0.0.0:{ROUTE_PORT}", password, routes),
            authorization_block(passwords),
        ]
        write_private(config, "\n".join(text) + "\n")
        configs.append(config)
    return configs


def nats_setup(
    folder: Annotated[Path, typer.Argument(help="Where to write credentials.json and nats.conf.")],
    base: Annotated[
        Path, typer.Option(help="nats-server's config without users (listen, JetStream).")
    ] = Path("deploy/nats/nats.conf"),
    tenant: Annotated[
        list[str] | None, typer.Option(help="A client bound to this tenant (repeatable).")
    ] = None,
    node: Annotated[
        list[str] | None,
        typer.Option(
            help="A node of a JetStream cluster, by the host the others reach it at "
            "(repeatable): one config per node, <first label>.conf, with the cluster block."
        ),
    ] = None,
) -> None:
    """Generate the NATS users of a deployment and nats-server's config with them."""
    tenants = tenant or [DEFAULT_TENANT]
    try:
        if node:
            configs = write_cluster_configs(folder, base, tenants, node)
        else:
            configs = [write_nats_config(folder, base, tenants)]
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    names = ", ".join(str(config) for config in configs)
    typer.echo(f"NATS users in {folder / 'credentials.json'}; nats-server config {names}")
