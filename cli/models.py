"""``scalingnote models …``: the built-in models shipped inside PyPI packages."""

from __future__ import annotations

from typing import Annotated

import typer

from scalingnote.errors import UserError

app = typer.Typer(no_args_is_help=True, help="Built-in models shipped inside PyPI packages.")


@app.command("list")
def models_list() -> None:
    """List built-in model names and where they resolve."""
    from scalingnote.specs import BUILTINS, builtin_path

    for name, builtin in BUILTINS.items():
        try:
            path = builtin_path(name)
            state = "ready" if (path / "config.json").is_file() else "not prepared"
        except UserError as exc:
            path, state = builtin.package, str(exc)
        typer.echo(f"{name:14} {state:14} {path}")


@app.command("prepare")
def models_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="Built-ins to prepare (default: all).")] = None,
) -> None:
    """Make built-in models loadable offline: unpack or convert them once into the cache, check their hashes.

    Without names, every built-in whose packages are installed (the others are listed with their install line)."""
    from scalingnote.modeling.builtin import prepare
    from scalingnote.specs import BUILTINS, installed

    for name in names or list(BUILTINS):
        if name not in BUILTINS:
            raise UserError(f"unknown built-in model {name!r} (known: {', '.join(BUILTINS)})")
        if not names and not installed(BUILTINS[name]):
            typer.echo(f"{name}: not installed ({BUILTINS[name].install})")
            continue
        typer.echo(f"{name}: {prepare(name)}")
