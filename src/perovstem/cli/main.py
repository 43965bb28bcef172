"""The ``perovstem`` command.

Each topic lives in its own module (``cli/<topic>.py``) exposing a typer ``app`` or
commands; this file only assembles them and turns :class:`PerovstemError` into one
error line and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from perovstem.errors import PerovstemError

app = typer.Typer(
    name="perovstem",
    help="Quantitative HAADF-STEM, in-situ and tomography analysis of perovskite nanocrystals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Topic modules (cli/<topic>.py) register their commands on `app` when imported.
# To add a topic: append its module name here (one entry per line).
_TOPICS = [
    "files",  # info, convert
    "demo",
    "run",  # run CONFIG (pipeline)
    "atoms",  # atoms fit/count/track
    "counting",  # atoms count/track (on the atoms sub-app)
    "model3d",  # model3d TABLE
    "simulate",  # simulate image/series/tilt
    "simulate_series",  # simulate series (degradation KMC → in-situ series)
    "tomo",  # tomo align/reconstruct/facets, simulate tilt
    "insitu",  # insitu SERIES [--conditions LOG]
]


def _register() -> None:
    import importlib

    for topic in _TOPICS:
        importlib.import_module(f"perovstem.cli.{topic}")


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print PerovstemError as one line, exit 2."""
    from perovstem.cli._common import EXIT_USAGE, err_console

    try:
        app(args=argv, standalone_mode=False)
    except PerovstemError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/] interrupted")
        return 130
    except Exception as exc:  # click usage errors and friends
        usage, abort = _click_exception_types()
        if isinstance(exc, usage):
            exc.show()
            return EXIT_USAGE
        if isinstance(exc, abort):
            return 1
        raise
    return 0


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes: from click itself and from the copy of click
    that newer Typer releases vendor as ``typer._click`` (different classes, same names)."""
    usage: list[type] = []
    abort: list[type] = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        if hasattr(mod, "Abort"):
            abort.append(mod.Abort)
    if hasattr(typer, "Abort"):  # Typer >= 0.20 defines its own
        abort.append(typer.Abort)
    return tuple(usage), tuple(abort)


if __name__ == "__main__":  # pragma: no cover
    # Run through the importable module so that topic modules register on the same app.
    from perovstem.cli.main import main as _main

    sys.exit(_main())
