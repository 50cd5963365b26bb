"""`baton asyncapi`: the AsyncAPI 3.0 document of Baton's NATS subjects and MQTT topics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from baton_contracts.asyncapi import asyncapi_json


def asyncapi(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write it to this file instead of printing it."),
    ] = None,
) -> None:
    """Print the AsyncAPI 3.0 document of Baton's NATS subjects and MQTT topics.

    Generated from the contracts: docs/asyncapi.json is a copy, and the api serves it at
    /schema/asyncapi.json."""
    document = asyncapi_json()
    if output is None:
        typer.echo(document, nl=False)
        return
    output.write_text(document)
    typer.echo(f"wrote {output}", err=True)
