"""Usage errors (an unknown option or command, a missing argument, a bad value) printed as
every other error of the `baton` command is: one line on stderr starting `error:`, exit 2
(docs/cli.md, "Output and exit status"), rather than typer's boxed panel, which scripts
reading stderr would have to unwrap."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

# typer vendors click and re-exports neither class.
from typer._click import Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup


def usage_error_line(exc: UsageError) -> str:
    """`error: No such option: --bogus; see 'baton send --help'`: click's message, on one
    line, and where the command's options are described."""
    lines = (line.strip() for line in exc.format_message().splitlines())
    said = " ".join(line for line in lines if line).removesuffix(".")
    ctx = exc.ctx
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        said += f"; see '{ctx.command_path} {ctx.help_option_names[0]}'"
    return f"error: {said}"


@contextmanager
def usage_errors_on_one_line() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `baton devices` alone: its help, as typer prints it
    except UsageError as exc:
        typer.echo(usage_error_line(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


class BatonGroup(TyperGroup):
    """The top `baton` group. Its own arguments are parsed in `make_context`; every command
    and group below it is parsed and run within its `invoke`: between them, every usage
    error of the command line passes here."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        with usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Context) -> Any:
        with usage_errors_on_one_line():
            return super().invoke(ctx)
