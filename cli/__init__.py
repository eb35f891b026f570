"""The ``scalingnote`` command: the root that assembles each package's own sub-commands.

It sits above every package (nothing imports it), so the dependency arrows point one way. Sub-commands
import their heavy dependencies lazily.
"""

from __future__ import annotations

import sys

import typer

from scalingnote.cli import models
from scalingnote.errors import UserError
from scalingnote.evaluation.cli import eval_command
from scalingnote.index.cli import app as index_app
from scalingnote.service.cli import serve_command
from scalingnote.training.cli import app as train_app
from scalingnote.training.cli import export_command, pipeline_command

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ScalingNote dense retrieval: train LLM dual towers, distil the query tower, index, evaluate, serve.",
)
app.add_typer(index_app, name="index")
app.add_typer(models.app, name="models")
app.command("eval")(eval_command)
app.command("export")(export_command)
app.add_typer(train_app, name="train")
app.command("pipeline")(pipeline_command)
app.command("serve")(serve_command)


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
