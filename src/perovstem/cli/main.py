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
    "atoms_map",  # atoms map (on the atoms sub-app)
    "atoms_strain",  # atoms strain (on the atoms sub-app)
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

        msg = str(exc)
        try:
            msg = flag_wording(msg, sys.argv[1:] if argv is None else list(argv))
        except Exception:  # noqa: BLE001 - the rewording must never hide the error itself
            pass
        err_console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
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


# Library parameters that a command's option feeds under another name
# (library name → name of the command's parameter).
_FED_BY = {
    "pixel_size": ("pixel_size_A",),
    "pixel_size_A": ("pixel_size",),
    "dose_e_per_A2": ("dose",),
    "dose_rate_e_per_A2_s": ("dose_rate",),
    "factor": ("bin_factor",),  # bin_tilt_series(factor) behind `tomo reconstruct --bin`
}


def flag_wording(message: str, argv: list[str]) -> str:
    """Name command-line flags instead of Python parameters in an error message.

    Library errors name the parameter in backticks (`` `edge_A` must be > 0``). When the
    command being run has an option for that parameter (same name, or one of
    ``_FED_BY``) and the user gave that option, the message names the flag
    (`` `--edge-A` ``). Names of options the user did not give stay as they are: the bad
    value then came from a file or a default, not from the flag.
    """
    import re

    from typer.main import get_command

    cmd = get_command(app)
    for tok in argv:  # walk down to the sub-command being run
        sub = getattr(cmd, "commands", {}).get(tok)
        if sub is None and getattr(cmd, "commands", None) is not None and not tok.startswith("-"):
            break
        if sub is not None:
            cmd = sub
    given: dict[str, str] = {}
    for param in getattr(cmd, "params", []):
        opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if getattr(param, "param_type_name", "") != "option" or not opts:
            continue
        if any(t in opts or t.split("=", 1)[0] in opts for t in argv):
            given[param.name] = opts[0]

    def reword(m: re.Match) -> str:
        name = m.group(1)
        for cand in (name, *_FED_BY.get(name, ())):
            if cand in given:
                return f"`{given[cand]}`"
        return m.group(0)

    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", reword, message)


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
