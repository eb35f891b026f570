"""The ``scalingnote`` command. Sub-commands import their heavy dependencies lazily."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from evaluation.cli import eval_command
from index.cli import app as index_app
from scalingnote.errors import UserError
from service.cli import serve_command
from training.cli import app as train_app
from training.cli import export_command, pipeline_command

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ScalingNote dense retrieval: train LLM dual towers, distil the query tower, index, evaluate, serve.",
)
models_app = typer.Typer(no_args_is_help=True, help="Built-in models shipped inside PyPI packages.")
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")
app.command("eval")(eval_command)
app.command("export")(export_command)
app.add_typer(train_app, name="train")
app.command("pipeline")(pipeline_command)
app.command("serve")(serve_command)


@models_app.command("list")
def models_list() -> None:
    """List built-in model names and where they resolve."""
    from scalingnote.encoders import BUILTINS, builtin_path

    for name, builtin in BUILTINS.items():
        try:
            path = builtin_path(name)
            state = "ready" if (path / "config.json").is_file() else "not prepared"
        except UserError as exc:
            path, state = builtin.package, str(exc)
        typer.echo(f"{name:14} {state:14} {path}")


@models_app.command("prepare")
def models_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="Built-ins to prepare (default: all).")] = None,
) -> None:
    """Make built-in models loadable offline (converts the GGUF LLM once into the cache)."""
    from modeling.builtin import prepare
    from scalingnote.encoders import BUILTINS

    for name in names or list(BUILTINS):
        if name not in BUILTINS:
            raise UserError(f"unknown built-in model {name!r} (known: {', '.join(BUILTINS)})")
        typer.echo(f"{name}: {prepare(name)}")


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
