"""The ``perovstem`` command.

Each topic lives in its own module (``cli/<topic>.py``) exposing a typer ``app`` or
commands; this file only assembles them and turns :class:`PerovstemError` into one
error line and exit status 2.
"""

from __future__ import annotations

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


def _register() -> None:
    # Topic modules register their commands on `app` (or add sub-apps) at import.
    from perovstem.cli import files  # noqa: F401  (info, convert)
    from perovstem.cli import demo  # noqa: F401
    from perovstem.cli import atoms  # noqa: F401  (atoms fit/count/track)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print PerovstemError as one line, exit 2."""
    from perovstem.cli._common import EXIT_USAGE, err_console

    try:
        app(args=argv, standalone_mode=False)
    except PerovstemError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return EXIT_USAGE
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/] interrupted")
        return 130
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return EXIT_USAGE
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
