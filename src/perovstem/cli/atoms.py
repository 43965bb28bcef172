"""``perovstem atoms ...``: atom-column commands (fit; count and track by the counting module).

The sub-app :data:`atoms_app` is registered on the main app as ``atoms``; other modules add
commands to it with ``@atoms_app.command()``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import data_stem, examples
from perovstem.cli.main import app

atoms_app = typer.Typer(
    name="atoms",
    help="Atom columns: find, fit (Gaussian model, SCS, CRLB), count, track.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(atoms_app, name="atoms")


def _cell_arg(spec: str | None):
    """``cspbbr3`` / ``cspbbr3_001`` (built-in [001] cell, optional ``cspbbr3:5.85`` lattice
    constant), ``cspbbr3_011`` / ``cspbbr3_111`` (the [011] / [111] zone) or a StatSTEM
    database ``.txt`` file."""
    from pathlib import Path as _P

    from perovstem.errors import ParameterError

    if spec is None:
        return None
    name, _, a = spec.partition(":")
    if name.lower() in ("cspbbr3", "cspbbr3_001", "cspbbr3_011", "cspbbr3_111"):
        from perovstem.atoms import cspbbr3_001_cell, cspbbr3_011_cell, cspbbr3_111_cell

        make = {"011": cspbbr3_011_cell, "111": cspbbr3_111_cell}.get(
            name.lower()[-3:], cspbbr3_001_cell
        )
        try:
            return make(float(a)) if a else make()
        except ValueError:
            raise ParameterError(f"--cell: bad lattice constant in {spec!r}") from None
    if _P(spec).suffix.lower() == ".txt":
        from perovstem.io.statstem_db import read_statstem_cell

        return read_statstem_cell(spec)
    raise ParameterError(
        "--cell must be 'cspbbr3[:a_A]' ([001]), 'cspbbr3_011[:a_A]', 'cspbbr3_111[:a_A]' "
        f"or a StatSTEM unit-cell .txt file, got {spec!r}"
    )


@atoms_app.command(
    "fit",
    epilog=examples(
        "perovstem atoms fit nc.tif --cell cspbbr3 --normalize -o nc_columns.parquet",
        "perovstem atoms fit frame.dm4 --cell CsPbBr3_100.txt --normalize --gain auto",
    ),
)
def fit(
    image: Path = typer.Argument(..., help="HAADF image (dm3/dm4/emd/ser/tif/npz/...)."),
    cell: str = typer.Option(
        None,
        "--cell",
        help="'cspbbr3[:a_A]' ([001] zone), 'cspbbr3_011[:a_A]' ([011]), 'cspbbr3_111[:a_A]' "
        "([111]) or a StatSTEM unit-cell .txt (sublattice-aware).",
    ),
    positions: Path = typer.Option(
        None,
        "--positions",
        help="Start from this table (x_A, y_A, optional type) instead of finding.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Column table (.parquet/.csv). Missing parent folders are created.",
    ),
    overlay: Path = typer.Option(None, "--overlay", help="Overlay figure (.png/.pdf/.svg)."),
    pixel_size: float = typer.Option(None, "--pixel-size-A", help="Pixel size in Å (override)."),
    frame: int = typer.Option(0, "--frame", help="Frame of a series to analyse."),
    width: str = typer.Option("type", "--width", help="type | column | fixed."),
    rho: float = typer.Option(None, "--rho-A", help="Start (or fixed) width ρ, Å."),
    background: str = typer.Option("constant", "--background", help="constant|planar|poly2|none."),
    noise: str = typer.Option("gaussian", "--noise", help="gaussian | poisson."),
    estimator: str | None = typer.Option(
        None,
        "--estimator",
        help="joint | statstem (default: statstem for StatSTEM inputs, joint otherwise).",
    ),
    normalize: bool = typer.Option(
        False, "--normalize", help="Counts → fraction of the beam (needs the dose): SCS in Å²."
    ),
    dose: float = typer.Option(
        None,
        "--dose-e-per-A2",
        help="Electron dose of the image, e⁻/Å² (--normalize; overrides the file's, needed "
        "where the file has none).",
    ),
    gain: str = typer.Option(
        None,
        "--gain",
        help="Detector counts per detected electron (--normalize, --noise poisson; overrides "
        "the file's), or 'auto': measured from the image's shot noise "
        "(perovstem.atoms.estimate_noise_model; refused when the image cannot identify it).",
    ),
    offset: float = typer.Option(
        None, "--offset", help="Detector counts of no signal (overrides the file's)."
    ),
    separation: float = typer.Option(
        None, "--separation-A", help="Smallest peak separation, Å (no cell)."
    ),
    n_types: int = typer.Option(1, "--n-types", help="Intensity classes when no cell is given."),
    scs: str = typer.Option(
        "gauss",
        "--scs",
        help="gauss: Gaussian-model fit (positions, widths, SCS, CRLB); voronoi: sums over "
        "the Voronoi cells of the found (or --positions) sites, no fit "
        "(perovstem.atoms.voronoi_intensities; use with --normalize for Å², and count with "
        "the Voronoi library: 'atoms count --library simulate' picks it).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Find and fit atom columns; writes a table (positions, widths, SCS, errors) and an overlay."""
    from perovstem._validation import check_int, check_positive
    from perovstem.atoms import find_columns, fit_columns, normalize_image
    from perovstem.cli._common import check_outputs, console
    from perovstem.errors import CalibrationError, OutputExistsError, ParameterError
    from perovstem.io import read_table, save_figure, save_table

    if scs not in ("gauss", "voronoi"):
        raise ParameterError(f"--scs must be gauss or voronoi, got {scs!r}")
    if separation is not None:
        check_positive("--separation-A", separation)
    check_int("--n-types", n_types, 1)
    # options of the column search that --cell / --positions make it ignore: said, not silent
    for flag, given, by in (
        ("--cell", cell is not None, positions is not None and "--positions"),
        ("--separation-A", separation is not None, positions is not None and "--positions"),
        ("--separation-A", separation is not None, cell is not None and "--cell"),
        ("--n-types", n_types != 1, positions is not None and "--positions"),
        ("--n-types", n_types != 1, cell is not None and "--cell"),
    ):
        if given and by:
            raise ParameterError(
                f"`{flag}` is not used with {by} (the columns "
                f"{'are read from it' if by == '--positions' else 'and their types come from it'}"
                f"): leave one of them out"
            )
    if dose is not None:
        check_positive("--dose-e-per-A2", dose)
        if not normalize:
            raise ParameterError(
                "`--dose-e-per-A2` is used by --normalize (counts → fraction of the beam): "
                "add --normalize or leave it out"
            )
    obj = _apply_detector(load_image_arg(image, pixel_size, frame), gain, offset)
    if normalize:
        if dose is None and obj.dose_e_per_A2 is None:
            raise CalibrationError(
                f"{str(image)!r} records no electron dose, which --normalize needs (counts → "
                "fraction of the beam): give it with --dose-e-per-A2"
            )
        obj = normalize_image(obj, dose_e_per_A2=dose)
    out = out if out is not None else Path(f"{data_stem(image)}_columns.parquet")
    overlay = overlay if overlay is not None else out.with_suffix(".png")
    for p in (out, overlay):
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists (use --overwrite)")
    check_outputs(out, overlay, overwrite=overwrite)  # also a typo in the folder, before the fit
    if positions is not None:
        start = read_table(positions)
    else:
        start = find_columns(obj, cell=_cell_arg(cell), separation_A=separation, n_types=n_types)
        _refuse_other_zone(image, cell, start.attrs.get("cell_check"))
    if scs == "voronoi":
        from perovstem.atoms import voronoi_intensities

        df = voronoi_intensities(obj, start)
    else:
        import time

        t0 = time.perf_counter()
        df = fit_columns(
            obj,
            start,
            width=width,
            rho_A=rho,
            background=_bg(background),
            noise=noise,
            estimator=estimator,
        )
        seconds = time.perf_counter() - t0
    df.attrs["source"] = str(image)
    md = getattr(obj, "metadata", None) or {}
    if md.get("frame") is not None:  # a series' frame: `atoms track` checks the time order
        df.attrs["frame"] = int(md["frame"])
    if getattr(obj, "time_s", None) is not None:
        df.attrs["time_s"] = float(obj.time_s)
    if cell is not None:  # atoms strain indexes the table to the same cell by default
        df.attrs["cell_spec"] = str(cell)
    if "cell_check" in start.attrs:  # does the cell explain the image (find_columns)
        df.attrs["cell_check"] = start.attrs["cell_check"]
    save_table(df, out)
    from perovstem.plot.atoms import plot_columns

    ax = plot_columns(obj, df, title=f"{image.name}: {len(df)} columns")
    save_figure(ax.figure, overlay)
    if "cell_check" in df.attrs:
        from perovstem.atoms.find import _describe

        chk = df.attrs["cell_check"]
        console.print(f"cell {chk['cell']!r}: {_describe(chk)}")
    if scs == "voronoi":
        unit = "Å²" if df.attrs["normalized"] else "image units·Å² (not normalised)"
        console.print(
            f"{len(df)} Voronoi cells ({int(df.edge.sum())} cut by the border or the radius), "
            f"median SCS {df.scs.median():.4g} {unit} → {out}, {overlay}"
        )
        return
    rho_txt = ", ".join(f"{t} {v:.4f} Å" for t, v in df.attrs["rho_A_by_type"].items())
    n_grains = int(df["grain"].nunique()) if "grain" in df.columns else 1
    where = (
        f" in {n_grains} crystals (column 'grain', each its own lattice)" if n_grains > 1 else ""
    )
    console.print(
        f"{len(df)} columns{where} ({df.converged.mean():.1%} converged, {df.attrs['n_iter']} sweeps, "
        f"{seconds:.2f} s); ρ: {rho_txt}; median position error "
        f"{df.x_err_A.median():.4f} Å → {out}, {overlay}"
    )


def _refuse_other_zone(image: Path, cell: str | None, check: dict | None) -> None:
    """Stop when another built-in CsPbBr3 zone axis explains the image and the given cell
    does not (``find_columns`` warned and named it)."""
    from perovstem.atoms.find import _other_zone_error

    err = _other_zone_error(
        check,
        f"--cell {cell}",
        f"rerun with --cell {(check or {}).get('suggested')}",
        where=f"{str(image)!r}: ",
    )
    if err is not None:
        raise err


def load_image_arg(image: Path, pixel_size: float | None, frame: int):
    """The 2-D image of a command's IMAGE argument: ``--frame`` of a series, else the image."""
    from perovstem._data import Image, Series
    from perovstem.errors import DataError
    from perovstem.io import load

    obj = load(image, pixel_size=pixel_size)
    if isinstance(obj, Series):
        if not 0 <= frame < obj.data.shape[0]:
            raise DataError(f"--frame {frame} outside the series (0…{obj.data.shape[0] - 1})")
        obj = obj.frame(frame)
    elif frame != 0:
        raise DataError(f"--frame {frame} given but {image} is a single image, not a series")
    if not isinstance(obj, Image):
        raise DataError(f"{image}: not a 2-D image (got {type(obj).__name__})")
    import numpy as np

    lo, hi = float(np.min(obj.data)), float(np.max(obj.data))
    if lo == hi:  # fit: "no lattice periodicity found in the image power spectrum"
        where = f" (frame {frame})" if isinstance(obj.metadata.get("frame"), int) else ""
        raise DataError(
            f"{str(image)!r}{where}: every pixel is {lo:g}: a constant image has no atom "
            "columns (a blank frame, or the detector saturated or switched off?)"
        )
    return obj


def _apply_detector(obj, gain: str | None, offset: float | None):
    """The image with ``--gain`` (a number or 'auto') and ``--offset`` in its metadata."""
    import numpy as np

    from perovstem.atoms.noise import parse_gain
    from perovstem.errors import ParameterError

    meta = dict(obj.metadata)
    gain = parse_gain(gain, name="--gain")
    if gain == "auto":
        from perovstem.atoms.noise import auto_detector

        nm = auto_detector(obj, what="--gain auto")
        meta["gain"] = nm.gain
        meta["noise_model"] = nm.as_dict()
        if offset is None:
            meta["offset"] = nm.offset
        from perovstem.cli._common import console

        console.print(f"detector measured from the shot noise: {nm.describe()}")
    elif gain is not None:
        meta["gain"] = gain
    if offset is not None:
        if not np.isfinite(offset):
            raise ParameterError(f"`--offset` must be finite, got {offset!r}")
        meta["offset"] = float(offset)
    changed = gain is not None or offset is not None
    return obj.replace(metadata=meta) if changed else obj


def _bg(text: str):
    try:
        return float(text)
    except ValueError:
        return text
