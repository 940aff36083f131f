"""`lens bulk ...`: registered on the `lens` command through the `lens.cli` entry point."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds `lens bulk` to the `lens` command (the commands are added as they are built)."""
    bulk = typer.Typer(help="Embed whole datasets on Ray Data.", no_args_is_help=True)
    app.add_typer(bulk, name="bulk")
