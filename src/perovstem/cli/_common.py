"""Helpers shared by the CLI modules: console, error exit, output paths."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_USAGE = 2

# Old spellings of options: still accepted, so that existing scripts keep working, but not
# shown in --help (units belong in option names, as in the Python API). main() rewrites an
# old spelling to the canonical one for a command that has the canonical option and no option
# of the old name; error messages name the spelling the user typed.
OPTION_ALIASES = {
    "--pixel-size": "--pixel-size-A",
    "--dose": "--dose-e-per-A2",
    "--dose-rate": "--dose-rate-e-per-A2-s",
    "--size": "--size-px",
    "--rho": "--rho-A",
    "--separation": "--separation-A",
    "--types": "--n-types",
    # side outputs: some commands name them with an "-out" suffix, some without; either
    # spelling works on every command (the canonical one is what --help shows)
    "--criteria": "--criteria-out",  # atoms count
    "--sites": "--sites-out",  # model3d
    "--summary": "--summary-out",  # model3d
    "--overlay-out": "--overlay",  # atoms fit, atoms map
    "--models-out": "--models",  # atoms map
    "--unit-cell-out": "--unit-cell",  # atoms strain
    "--plot-out": "--plot",  # atoms strain, tomo sequence
    "--mesh-out": "--mesh",  # tomo facets
    "--shifts-out": "--shifts",  # tomo align
    "--truth-out": "--truth",  # simulate image/series/tilt
}


def examples(*lines: str) -> str:
    """An ``Examples:`` block for a command's ``epilog`` (lines kept as written)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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


def warning_line(text: str, category: type[Warning] | str = UserWarning) -> None:
    """Print one ``WARNING: <message> (<category>)`` line on stderr, once per command.

    The message is put on one line (its line breaks and runs of spaces made single
    spaces); a message already printed by this command (same text and category) is not
    printed again.
    """
    from rich.markup import escape

    name = category if isinstance(category, str) else category.__name__
    text = " ".join(str(text).split())
    key = (name, text)
    if key in _SHOWN:
        return
    _SHOWN.add(key)
    err_console.print(f"[yellow]WARNING:[/] {escape(text)} ({name})", soft_wrap=True)


# (category, text) of the warnings printed by the running command (main() empties it)
_SHOWN: set[tuple[str, str]] = set()


def print_warnings(records: list, flags: dict[str, str]) -> None:
    """Print caught warnings as one ``WARNING:`` line each, naming command-line flags.

    Library warnings name Python parameters in backticks (`` `inclusion_radius_A` ``); on
    the command line they printed as a raw ``UserWarning`` with a source line.  ``flags``
    maps a parameter to the option of the running command that sets it.
    """
    import re

    def reword(m: re.Match) -> str:
        return f"`{flags[m.group(1)]}`" if m.group(1) in flags else m.group(0)

    for w in records:
        warning_line(re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", reword, str(w.message)), w.category)
