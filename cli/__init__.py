"""The ``scalingnote`` command: the root that assembles each package's own sub-commands.

It sits above every package (nothing imports it), so the dependency arrows point one way. Sub-commands
import their heavy dependencies lazily; ``serve``, whose options come from the service settings, is itself
loaded only when asked for.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

import scalingnote
from scalingnote.cli import models
from scalingnote.errors import UserError
from scalingnote.evaluation.cli import eval_command
from scalingnote.index.cli import app as index_app
from scalingnote.training.cli import app as train_app
from scalingnote.training.cli import export_command, pipeline_command


class _Root(TyperGroup):
    """The root group, with ``serve`` built on first use (its settings import pydantic-settings and FAISS)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*super().list_commands(ctx), "serve"]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        if cmd_name == "serve" and cmd_name not in self.commands:
            from scalingnote.service.cli import app as serve_app

            self.add_command(typer.main.get_command(serve_app), cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=_Root,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")
app.add_typer(models.app, name="models")
app.command("eval")(eval_command)
app.command("export")(export_command)
app.add_typer(train_app, name="train")
app.command("pipeline")(pipeline_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"scalingnote {scalingnote.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """ScalingNote dense retrieval: train LLM dual towers, distil the query tower, index, evaluate, serve."""


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
