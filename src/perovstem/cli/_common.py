"""Helpers shared by the CLI modules: console, error exit, output paths."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_USAGE = 2


def fail(message: str) -> None:
    """Print one error line (no traceback) and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def out_path(path: Path | str | None, default: Path) -> Path:
    """Resolve an output path (``default`` when not given)."""
    return Path(path) if path is not None else default


def quiet_flag() -> bool:
    return "--quiet" in sys.argv


def check_outputs(*paths: Path | None, overwrite: bool) -> None:
    """Refuse existing outputs before any work, so that a refused later output does not leave
    the earlier ones of the same command half written."""
    from perovstem.errors import OutputExistsError

    for p in paths:
        if p is not None and Path(p).exists() and not overwrite:
            raise OutputExistsError(f"{str(p)!r} exists (use --overwrite)")
