"""The ``perovstem`` command.

Each topic lives in its own module (``cli/<topic>.py``) exposing a typer ``app`` or
commands; this file only assembles them, turns :class:`PerovstemError` into one
error line and exit status 2, and prints every Python warning (ours, numpy's, numba's,
dask's) and every library log record of level WARNING or above as one
``WARNING: <message> (<category>)`` line on stderr, once per command (``--debug`` / ``-v``
anywhere on the command line: Python's full form, with the source line).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import re
import sys
import warnings
from collections.abc import Iterator

import typer

from perovstem.errors import PerovstemError

app = typer.Typer(
    name="perovstem",
    help="Quantitative HAADF-STEM, in-situ and tomography analysis of perovskite nanocrystals.",
    epilog="Start with 'perovstem demo'; 'perovstem COMMAND --help' lists a command's options "
    "(units in their names: -A Å, -deg °, -px pixels, -s seconds, -e-per-A2 e⁻/Å²) and "
    "examples.",
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
    "atoms_composition",  # atoms composition (on the atoms sub-app)
    "model3d",  # model3d TABLE
    "simulate",  # simulate image/series/tilt
    "simulate_series",  # simulate series (degradation KMC → in-situ series)
    "tomo",  # tomo align/reconstruct/facets, simulate tilt
    "insitu",  # insitu SERIES [--conditions LOG]
    "kinetics",  # kinetics RUN_DIR... (several insitu runs -> one mechanism table)
]


@app.callback()
def _options(
    debug: bool = typer.Option(
        False,
        "--debug",
        "-v",
        "--verbose",
        help="Warnings in Python's full form (source line) and error tracebacks; also "
        "accepted after the command.",
    ),
) -> None:
    """Quantitative HAADF-STEM, in-situ and tomography analysis of perovskite nanocrystals."""
    # main() takes the flag off the command line (anywhere) before typer sees it


def _register() -> None:
    import importlib

    for topic in _TOPICS:
        importlib.import_module(f"perovstem.cli.{topic}")


def _flowing(text: str) -> str:
    """``text`` with the line breaks inside its plain paragraphs made spaces.

    Typer's rich help keeps a docstring's line breaks after its first paragraph, so text
    wrapped at 100 columns in the source broke mid-sentence in an 80-column terminal.
    Paragraphs with an indented, listed or quoted line keep their breaks (laid out on
    purpose, e.g. a command on its own line)."""

    def plain(par: str) -> bool:
        return not any(re.match(r"\s|[-*`$]|\d+\.\s", line) for line in par.splitlines())

    pars = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.splitlines()) if plain(p) else p for p in pars)


def _flow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        text = info.help or inspect.getdoc(info.callback)
        if text:
            info.help = _flowing(text)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _flow_help(group.typer_instance)


_register()
_flow_help(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print PerovstemError as one line, exit 2."""
    from perovstem.cli._common import EXIT_USAGE, err_console

    given = sys.argv[1:] if argv is None else list(argv)
    given, debug = debug_flag(given)
    try:
        args, _ = canonical_argv(given)
    except Exception:  # noqa: BLE001 - an unresolvable command line is click's to report
        args = given
    try:
        with warnings_as_lines(given, debug=debug):
            rv = app(args=args, standalone_mode=False)
        if isinstance(rv, int) and rv == 130:
            # Typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns the
            # code: ignored, an interrupted run exited 0 without a word
            raise KeyboardInterrupt
    except PerovstemError as exc:
        from rich.markup import escape

        if debug:  # a user reporting a bug sends this
            _print_traceback()
        msg = str(exc)
        try:
            msg = flag_wording(msg, given)
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
            _name_the_value(exc, args)
            exc.show()
            return EXIT_USAGE
        if isinstance(exc, abort):
            if isinstance(exc.__context__, KeyboardInterrupt):  # click's Ctrl-C
                err_console.print("[bold red]error:[/] interrupted")
                return 130
            return 1
        return _internal_error(exc, debug=debug)
    return 0


EXIT_INTERNAL = 1


def _name_the_value(exc: Exception, argv: list[str]) -> None:
    """Add the value typed to click's message about a bad option value (typer's own
    ``Input should be a valid number, ...`` does not say which text it could not read)."""
    param = getattr(exc, "param", None)
    opts = list(getattr(param, "opts", []) or []) if param is not None else []
    message = getattr(exc, "message", None)
    if not opts or not isinstance(message, str) or getattr(param, "is_flag", False):
        return
    n = max(int(getattr(param, "nargs", 1) or 1), 1)
    value = None
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok in opts:
            value = " ".join(argv[i + 1 : i + 1 + n])
        elif any(tok.startswith(o + "=") for o in opts if o.startswith("--")):
            value = tok.split("=", 1)[1]
    if value is not None and repr(value) not in message:
        exc.message = f"{message} (got {value!r})"


def _print_traceback() -> None:
    import traceback

    sys.stderr.write(traceback.format_exc())
    sys.stderr.flush()


def _internal_error(exc: BaseException, *, debug: bool) -> int:
    """An error that is not a :class:`PerovstemError` (a bug of ours or a library's): one
    line naming its type and message, and how to get the traceback (``--debug``); with
    ``--debug``, the traceback as well. Exit status 1."""
    from rich.markup import escape

    from perovstem.cli._common import err_console

    if debug:
        _print_traceback()
    if isinstance(exc, MemoryError):  # an input or option too large for this machine
        text = " ".join(str(exc).split()) or "MemoryError"
        err_console.print(
            f"[bold red]error:[/] not enough memory: {escape(text)} (a smaller input or "
            "output size, or --bin where the command has it)",
            soft_wrap=True,
        )
        return EXIT_INTERNAL
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    hint = "" if debug else " (run again with --debug for the traceback to report)"
    err_console.print(f"[bold red]error:[/] unexpected {escape(text)}{hint}", soft_wrap=True)
    return EXIT_INTERNAL


DEBUG_FLAGS = ("--debug", "-v", "--verbose")


def debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without the ``--debug`` / ``-v`` / ``--verbose`` tokens (accepted anywhere
    before ``--``) and whether one was given.

    A token that is the value of an option (``--title -v``, ``-o --debug``) is the
    option's value, not the flag: it is kept (click gives it to the option).
    """
    takes = _value_options(argv)
    out: list[str] = []
    debug = False
    skip = 0
    for i, tok in enumerate(argv):
        if skip:  # a value of the option before it
            skip -= 1
            out.append(tok)
            continue
        if tok == "--":
            out.extend(argv[i:])
            break
        if tok in DEBUG_FLAGS:
            debug = True
            continue
        out.append(tok)
        skip = takes.get(tok, 0)
    return out, debug


def _value_options(argv: list[str]) -> dict[str, int]:
    """``{option spelling: number of values}`` of the options of the command ``argv`` runs
    (and of the groups above it) that take values; old spellings too."""
    from typer.main import get_command

    from perovstem.cli._common import OPTION_ALIASES

    takes: dict[str, int] = {}
    try:
        cmds = [get_command(app)]
        for tok in argv:  # walk down to the sub-command being run
            sub = getattr(cmds[-1], "commands", {}).get(tok)
            if sub is not None:
                cmds.append(sub)
            elif getattr(cmds[-1], "commands", None) is not None and not tok.startswith("-"):
                break
        for cmd in cmds:
            for p in getattr(cmd, "params", []):
                if getattr(p, "param_type_name", "") != "option" or getattr(p, "is_flag", False):
                    continue
                for o in p.opts:
                    takes[o] = max(int(p.nargs), 1)
    except Exception:  # noqa: BLE001 - an unresolvable command line is click's to report
        return {}
    for old, new in OPTION_ALIASES.items():
        if new in takes:
            takes.setdefault(old, takes[new])
    return takes


class _LogLines(logging.Handler):
    """Library log records (level WARNING and above) as ``WARNING:`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        from perovstem.cli._common import warning_line

        try:
            warning_line(record.getMessage(), f"{record.levelname.lower()} from {record.name}")
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def warnings_as_lines(argv: list[str], *, debug: bool = False) -> Iterator[None]:
    """Show each warning issued while a command runs as one line on stderr.

    ``WARNING: <message> (<category>)``: no source line (``fit.py:244: UserWarning: ...``
    followed by ``return func(*args, **kwargs)`` told the user where in our code, not what
    to do), the message on one line, Python parameter names given as the command's flags
    that the user typed (:func:`flag_wording`), each text once per command.  The warning
    filters are left as they are (a library's ``ignore`` stays ignored).  Log records of
    level WARNING or above that reach the root logger print the same way.  ``debug``:
    Python's own form (source line), every warning category shown (``default`` filter).
    """
    from perovstem.cli import _common

    _common._SHOWN.clear()
    if debug:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        text = str(message)
        try:
            text = flag_wording(text, argv)
        except Exception:  # noqa: BLE001 - the rewording must never hide the warning
            pass
        _common.warning_line(text, category)

    root = logging.getLogger()
    handler = _LogLines(logging.WARNING)
    old_show = warnings.showwarning
    warnings.showwarning = show
    root.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = old_show
        root.removeHandler(handler)


# Library parameters that a command's option feeds under another name
# (library name → name of the command's parameter).
_FED_BY = {
    "pixel_size": ("pixel_size_A",),
    "pixel_size_A": ("pixel_size",),
    "dose_e_per_A2": ("dose",),
    "dose_rate_e_per_A2_s": ("dose_rate",),
    "factor": ("bin_factor",),  # bin_tilt_series(factor) behind `tomo reconstruct --bin`
    "separation_A": ("separation",),  # atoms fit --separation-A
    "rho_A": ("rho",),  # atoms fit --rho-A
    "max_tilt_deg": ("tilt_range_deg",),  # simulate tilt --tilt-range-deg → tilt_scheme
    "n_components": ("components",),  # atoms count -k/--components
    "min_distance_A": ("min_distance",),  # atoms map --min-distance-A
    "n_chains": ("chains",),  # model3d --chains
    "n_sweeps": ("sweeps",),  # model3d --sweeps
    "temperature_K": ("temperature_end_K",),  # simulate series: the ramp is one array
    "radius_A": ("radius",),  # atoms strain --radius-A
    "eta_range": ("eta_min",),  # atoms map --eta-min: (eta_min, image max)
    "shape": ("size",),  # simulate tilt --size-px → tilt_series(shape=(size, size))
    "n_inclusions": ("inclusions",),  # simulate tilt --inclusions
}


def flag_wording(message: str, argv: list[str]) -> str:
    """Name command-line flags instead of Python parameters in an error message.

    Library errors name the parameter in backticks (`` `edge_A` must be > 0``). When the
    command being run has an option for that parameter (same name, or one of
    ``_FED_BY``) and the user gave that option, the message names the flag
    (`` `--edge-A` ``), spelled as the user typed it (an old spelling of
    ``_common.OPTION_ALIASES`` stays old). Names of options the user did not give stay as they
    are: the bad value then came from a file or a default, not from the flag.
    """
    import re

    argv, typed = canonical_argv(argv)
    cmd = _command_of(argv)
    given: dict[str, str] = {}
    flags: dict[str, str] = {}  # every option of the command: its long spelling
    for param in getattr(cmd, "params", []):
        opts = list(getattr(param, "opts", []))
        if getattr(param, "param_type_name", "") != "option" or not opts:
            continue
        if not getattr(param, "is_flag", False):
            flags[param.name] = next((o for o in opts if o.startswith("--")), opts[0])
        used = [t.split("=", 1)[0] for t in argv if t.split("=", 1)[0] in opts]
        if used:  # the spelling typed: "-k" stays "-k"
            given[param.name] = used[0]
    for lib, cands in _FED_BY.items():
        for cand in cands:
            if cand in flags:
                flags.setdefault(lib, flags[cand])

    def call(m: re.Match) -> str:
        # a Python keyword in the message (`width='fixed'`, pass tilt_axis='com', library=...):
        # the command's option and value, whether the user gave it or not (it is advice)
        name, value = m.group(2), m.group(3) or ""
        before = m.string[max(0, m.start() - 8) : m.start()]
        if name not in flags or m.group(1) != m.group(4) or before.endswith("Python: "):
            return m.group(0)  # unknown, half-quoted, or the Python spelling given on purpose
        value = value[1:-1] if value[:1] == value[-1:] == "'" and len(value) > 1 else value
        return f"`{flags[name]}{' ' + value if value else ''}`"

    message = re.sub(
        # not an argument of a call written out (count_atoms(method='ladder'))
        r"(`?)(?<![\w.-])(?<!\w\()([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|\.\.\.|[\w.+-]+)?(`?)",
        call,
        message,
    )

    def reword(m: re.Match) -> str:
        name = m.group(1)
        for cand in (name, *_FED_BY.get(name, ())):
            if cand in given:
                return f"`{typed.get(given[cand], given[cand])}`"
        return m.group(0)

    message = re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", reword, message)
    for canonical, old in typed.items():  # a flag the CLI code names itself, typed the old way
        message = message.replace(f"`{canonical}`", f"`{old}`")
    return message


def _command_of(argv: list[str]):
    """The click command that ``argv`` runs (the deepest sub-command named in it)."""
    from typer.main import get_command

    cmd = get_command(app)
    for tok in argv:  # walk down to the sub-command being run
        sub = getattr(cmd, "commands", {}).get(tok)
        if sub is None and getattr(cmd, "commands", None) is not None and not tok.startswith("-"):
            break
        if sub is not None:
            cmd = sub
    return cmd


def canonical_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Rewrite old option spellings (``_common.OPTION_ALIASES``) to the canonical ones.

    Only for the command being run, and only where it has the canonical option and none of
    the old name; tokens after ``--`` are left alone. Returns the new argument list and
    ``{canonical flag: spelling typed}`` of the rewritten options.
    """
    from perovstem.cli._common import OPTION_ALIASES

    argv = list(argv)
    if not any(t.split("=", 1)[0] in OPTION_ALIASES for t in argv):
        return argv, {}
    cmd = _command_of(argv)
    names = {o for p in getattr(cmd, "params", []) for o in (*p.opts, *p.secondary_opts)}
    out: list[str] = []
    typed: dict[str, str] = {}
    for i, tok in enumerate(argv):
        if tok == "--":
            out.extend(argv[i:])
            break
        flag, eq, value = tok.partition("=")
        new = OPTION_ALIASES.get(flag)
        if new is not None and new in names and flag not in names:
            typed[new] = flag
            tok = new + eq + value
        out.append(tok)
    return out, typed


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
