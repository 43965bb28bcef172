"""``perovstem atoms map``: number and positions of the columns of a low-dose image (MAP)."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import data_stem, examples
from perovstem.cli.atoms import atoms_app, load_image_arg


@atoms_app.command(
    "map",
    epilog=examples(
        "perovstem atoms map low_dose.tif -o low_dose_map.parquet --max-columns 100",
    ),
)
def map_(
    image: Path = typer.Argument(..., help="Low-dose HAADF image in raw counts."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Column table (.parquet/.csv). Missing parent folders are created.",
    ),
    models_out: Path = typer.Option(
        None, "--models", help="Table of every model order tried (χ², ln det H, log10 P)."
    ),
    overlay: Path = typer.Option(None, "--overlay", help="Overlay figure (.png/.pdf/.svg)."),
    start: Path = typer.Option(
        None, "--start", help="Start from these columns (x_A, y_A table), e.g. 'atoms fit' output."
    ),
    max_columns: int = typer.Option(50, "--max-columns", help="Largest number of columns tried."),
    eta_min: float = typer.Option(
        0.0,
        "--eta-min",
        help="Lower end of the height prior (image units): about half the weakest column "
        "you expect; 0 (StatSTEM) lets faint columns fit the probe's tails at high dose.",
    ),
    min_distance: float = typer.Option(
        1.0, "--min-distance-A", help="No new column closer than this to another, Å."
    ),
    pixel_size: float = typer.Option(None, "--pixel-size-A", help="Pixel size in Å (override)."),
    frame: int = typer.Option(0, "--frame", help="Frame of a series to analyse."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Columns of a low-dose image by posterior probability (MAP); writes tables and an overlay."""
    import numpy as np

    from perovstem.atoms import map_columns
    from perovstem.cli._common import check_outputs, console
    from perovstem.io import read_table, save_figure, save_table

    out = out if out is not None else Path(f"{data_stem(image)}_map.parquet")
    models_out = (
        models_out
        if models_out is not None
        else out.with_name(data_stem(out) + "_models" + out.suffix)
    )
    overlay = overlay if overlay is not None else out.with_suffix(".png")
    check_outputs(out, models_out, overlay, overwrite=overwrite)
    obj = load_image_arg(image, pixel_size, frame)
    res = map_columns(
        obj,
        start=read_table(start) if start is not None else None,
        max_columns=max_columns,
        eta_range=(eta_min, float(np.max(obj.data))),
        min_distance_A=min_distance,
    )
    res.columns.attrs["source"] = str(image)
    save_table(res.columns, out, overwrite=overwrite)
    save_table(res.models, models_out, overwrite=overwrite)
    from perovstem.plot.atoms import plot_columns

    ax = plot_columns(obj, res.columns, title=f"{image.name}: {res.n_columns} columns (MAP)")
    save_figure(ax.figure, overlay)
    m = res.models
    p = float(m.loc[m["n_columns"] == res.n_columns, "probability"].iloc[0])
    console.print(
        f"{res.n_columns} columns (posterior probability {p:.2f}; orders "
        f"{int(m['n_columns'].min())}–{int(m['n_columns'].max())} tried), ρ = "
        f"{res.columns.attrs['rho_A']:.3f} Å → {out}, {models_out}, {overlay}"
    )
    console.print(_detection_note(res.columns.attrs, obj))


def _detection_note(attrs: dict, obj) -> str:
    """The detection limit of the MAP rule in this image, in counts and, with a known dose
    and gain, in cross-section (Å²): fewer columns than expected is then said, not silent."""
    import math

    lim = float(attrs.get("detection_limit_counts", math.nan))
    if not math.isfinite(lim):
        return "detection limit: not estimated (no column height pays the model's cost)"
    text = f"detection limit: an isolated column needs about {lim:.3g} counts (integrated)"
    dose, gain = obj.dose_e_per_A2, obj.metadata.get("gain")
    if dose is not None and gain:
        sigma = lim / (float(gain) * float(dose))
        text += f" = a cross-section of {sigma:.3g} Å² at {float(dose):.4g} e⁻/Å²"
    return (
        text + "; fainter columns cannot be told from the shot noise at this dose (a limit "
        "of the data, not of the search: raise the dose or sum frames)"
    )
