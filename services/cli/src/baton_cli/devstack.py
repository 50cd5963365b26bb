"""`baton dev run|stop`: the local stack behind `make run` (filled in by the dev-stack work)."""

from __future__ import annotations

import typer

dev_app = typer.Typer(help="Run the whole stack locally (what `make run` does).", no_args_is_help=True)
