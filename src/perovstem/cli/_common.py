"""Helpers shared by the CLI modules: console, error exit, output paths."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

# upper ends of what an experiment can mean, shared with the API and the pipeline
from perovstem._limits import (  # noqa: F401  (re-exported for the commands)
    MAX_COUNTS_PER_A,
    MAX_CUMULATIVE_DOSE_E_PER_A2,
    MAX_CURRENT_PA,
    MAX_DOSE_E_PER_A2,
    MAX_IMAGE_PX,
    MAX_TEMPERATURE_K,
    check_at_most,
    check_current_pA,
    check_image_px,
    check_stack_px,
)

# plain text: results name series, files and conditions that may hold brackets ("[base]",
# "s[1]"), which console markup would swallow
console = Console(stderr=False, highlight=False, markup=False)
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
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def out_path(path: Path | str | None, default: Path) -> Path:
    """Resolve an output path (``default`` when not given)."""
    return Path(path) if path is not None else default


def quiet_flag() -> bool:
    return "--quiet" in sys.argv


def data_stem(path: Path | str) -> str:
    """A file's name without its data suffix, for the names of derived outputs: the last
    suffix only (``nc0.3.tif`` → ``nc0.3``: cutting at the first dot made ``nc0_truth``
    for it, the same as for ``nc0.1.tif``), with ``.ome`` of ``.ome.tif``."""
    stem, dot, _ = Path(path).name.rpartition(".")
    if not dot or not stem:
        return Path(path).name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def check_outputs(
    *paths: Path | None,
    overwrite: bool,
    suffixes: dict[str, tuple[tuple[str, ...], Path | None]] | None = None,
) -> None:
    """Refuse existing outputs before any work, so that a refused later output does not leave
    the earlier ones of the same command half written; also two outputs at one path and,
    per option in ``suffixes`` (``{"--truth": ((".json",), path)}``), a suffix the output is
    not written as (a JSON truth named .parquet, a table named .txt after the image was
    written)."""
    from perovstem.errors import OutputExistsError, ParameterError
    from perovstem.io._write import check_writable_place

    given = [Path(p) for p in paths if p is not None]
    for i, p in enumerate(given):
        if any(p.resolve() == q.resolve() for q in given[:i]):
            raise ParameterError(f"two outputs of this command are {str(p)!r}: give each its own")
    for option, (allowed, p) in (suffixes or {}).items():
        if p is None:
            continue
        name = Path(p).name.lower()
        if not any(name.endswith(a) for a in allowed):
            raise ParameterError(
                f"`{option}` {str(p)!r}: written as {' or '.join(allowed)}; give that suffix"
            )
    for p in paths:
        if p is not None and Path(p).exists() and not overwrite:
            raise OutputExistsError(f"{str(p)!r} exists (use --overwrite)")
    for p in paths:  # a typo in -o found now, not after the analysis
        if p is not None:
            check_writable_place(p)


def warning_line(text: str, category: type[Warning] | str = UserWarning) -> None:
    """Print one ``WARNING: <message> (<category>)`` line on stderr, once per command.

    The message is put on one line (its line breaks and runs of spaces made single
    spaces); a message already printed by this command (same text and category) is not
    printed again.
    """

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
    for w in records:
        warning_line(_reword_flags(str(w.message), flags), w.category)


def _reword_flags(text: str, flags: dict[str, str]) -> str:
    import re

    def reword(m: re.Match) -> str:
        return f"`{flags[m.group(1)]}`" if m.group(1) in flags else m.group(0)

    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", reword, text)


@contextlib.contextmanager
def flag_names(flags: dict[str, str]) -> Iterator[None]:
    """Name the command's options in a :class:`~perovstem.errors.ParameterError` raised
    inside the block, where the library named its Python parameters (`` `site` `` for
    ``--cluster-site``, `` `shape` `` for ``--size-px``)."""
    from perovstem.errors import ParameterError

    try:
        yield
    except ParameterError as exc:
        text = _reword_flags(str(exc), flags)
        if text == str(exc):
            raise
        raise type(exc)(text) from None


@contextlib.contextmanager
def about_file(path: Path | str, *, param: str | None = None) -> Iterator[None]:
    """Name ``path`` in a :class:`~perovstem.errors.DataError` raised inside the block.

    The library checks a table or image it is given (`` `scs` contains 3 non-finite
    value(s)``) without knowing which file it came from; the command knows.  ``param``:
    the library's name of the argument that the file's content was passed as (the
    message's `` `columns` `` becomes "the table").
    """
    from perovstem.errors import DataError

    try:
        yield
    except DataError as exc:
        text = str(exc)
        if param is not None:
            text = text.replace(f"`{param}` table", "the table").replace(f"`{param}`", "the table")
        if str(path) in text:
            raise DataError(text) from None
        raise DataError(f"{str(path)!r}: {text}") from None


def finite_columns(table: object, path: Path | str, names: tuple[str, ...]) -> None:
    """Refuse a table whose ``names`` columns (those present) hold NaN or inf, naming the
    file, the column and the rows."""
    import numpy as np

    from perovstem.errors import DataError

    for name in names:
        if name not in getattr(table, "columns", ()):
            continue
        v = np.asarray(table[name], dtype=float)  # type: ignore[index]
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise DataError(
                f"{str(path)!r}: column {name!r} has {bad.size} NaN/inf value(s) of {v.size} "
                f"(rows {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}; rows count from 0)"
            )


def nonempty_table(table: object, path: Path | str) -> None:
    """Refuse a table with no rows, naming the file."""
    from perovstem.errors import DataError

    if len(table) == 0:  # type: ignore[arg-type]
        cols = list(getattr(table, "columns", []))
        raise DataError(f"{str(path)!r}: the table has no rows (columns {cols})")


def detector_pair(spec: str) -> tuple[float, float]:
    """``--detector-mrad INNER,OUTER`` → ``(inner, outer)`` in mrad."""
    import numpy as np

    from perovstem.errors import ParameterError

    try:
        inner, outer = (float(v) for v in str(spec).split(","))
        ok = bool(np.isfinite(outer)) and 0 <= inner < outer
    except ValueError:
        ok = False
    if not ok:
        raise ParameterError(
            f"--detector-mrad must be INNER,OUTER with 0 <= INNER < OUTER (e.g. 65,131), "
            f"got {spec!r}"
        )
    return inner, outer
