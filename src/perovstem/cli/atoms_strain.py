"""``perovstem atoms strain``: lattice, displacement and strain maps of fitted columns."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import data_stem, examples
from perovstem.cli.atoms import _cell_arg, atoms_app


def _table_cell(attrs: dict) -> tuple[str, str]:
    """The ``--cell`` a column table was fitted with and where that came from: ``atoms fit``
    records it (``cell_spec``); older tables name the cell in ``cell_check``; else the [001]
    cell, said by an empty source."""
    spec = attrs.get("cell_spec")
    if spec:
        return str(spec), "the cell of the fit"
    from perovstem.atoms.find import _ZONES

    name = str((attrs.get("cell_check") or {}).get("cell", ""))
    for zone, (cli, *_) in _ZONES.items():
        if zone != "[001]" and name.startswith(f"CsPbBr3 {zone}"):
            return cli, f"the fit's cell was {name!r}"
    return "cspbbr3", ""


@atoms_app.command(
    "strain",
    epilog=examples("perovstem atoms strain nc_columns.parquet -o nc_strain.parquet"),
)
def strain(
    columns: Path = typer.Argument(
        ..., help="Fitted columns (x_A, y_A, type[, x_err_A, y_err_A]), e.g. 'atoms fit' output."
    ),
    cell: str = typer.Option(
        None,
        "--cell",
        help="'cspbbr3[:a_A]' ([001] zone), 'cspbbr3_011[:a_A]' ([011]), 'cspbbr3_111[:a_A]' "
        "([111]) or a StatSTEM unit-cell .txt (default: the cell the table was fitted with, "
        "else cspbbr3).",
    ),
    reference_type: str = typer.Option(
        None,
        "--reference-type",
        help="Column type that defines the lattice (default: the cell's first).",
    ),
    radius: float = typer.Option(
        None, "--radius-A", help="Neighbour radius of the local strain, Å (default 1.1·max(a, b))."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Strain table (.parquet/.csv). Missing parent folders are created.",
    ),
    cell_out: Path = typer.Option(
        None, "--unit-cell", help="Measured projected unit cell table (default: <out>_cell.csv)."
    ),
    plot: Path = typer.Option(None, "--plot", help="Strain maps figure (.png/.pdf/.svg)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Local strain (ε, ω with errors) of fitted columns; writes it, the unit cell and maps.

    The columns are indexed to the cell's lattice; the displacement of every column from it
    gives the strain.
    """
    import numpy as np

    from perovstem.atoms import strain_analysis, unit_cell_table
    from perovstem.cli._common import (
        about_file,
        check_outputs,
        console,
        finite_columns,
        nonempty_table,
    )
    from perovstem.io import read_table, save_figure, save_table
    from perovstem.plot.atoms import plot_strain_maps

    stem = data_stem(columns)
    out = out if out is not None else Path(f"{stem}_strain.parquet")
    cell_out = cell_out if cell_out is not None else out.with_name(data_stem(out) + "_cell.csv")
    plot = plot if plot is not None else out.with_suffix(".png")
    check_outputs(out, cell_out, plot, overwrite=overwrite)
    table = read_table(columns)
    nonempty_table(table, columns)
    finite_columns(table, columns, ("x_A", "y_A"))
    if cell is None:
        cell, cell_from = _table_cell(table.attrs)
        if cell_from:
            console.print(f"cell: {cell} ({cell_from})")
    with about_file(columns):
        st, uc = strain_analysis(
            table, _cell_arg(cell), reference_type=reference_type, radius_A=radius
        )
    st.attrs["source"] = str(columns)
    save_table(st, out)
    save_table(unit_cell_table(uc, lattice=st), cell_out)
    fig = plot_strain_maps(st)
    save_figure(fig, plot)
    err = st.attrs.get("lattice_vectors_err_A")
    # standard error of each lattice vector's components (fit_lattice)
    a_err = f" ± {float(err[0]):.4f}" if err is not None else ""
    b_err = f" ± {float(err[1]):.4f}" if err is not None else ""
    n_ok = int((st["site"] >= 0).sum())
    grains = st.attrs.get("grains")
    where = f" in {len(grains)} crystals (largest shown)" if grains else ""
    ang_err = st.attrs.get("angle_err_deg")
    msg = (
        f"{n_ok} of {len(st)} columns indexed{where}; a = {uc.a_A:.4f}{a_err} Å, "
        f"b = {uc.b_A:.4f}{b_err} Å, angle {uc.angle_deg:.2f}"
        f"{f' ± {ang_err:.2f}' if ang_err is not None else ''}°"
    )
    if "lattice_shear_xy" in st.attrs:
        # ε_xy is relative to the fitted lattice; its own shear vs the cell, for comparison
        # with maps referred to the cell's angle (StatSTEM's square reference)
        msg += (
            f"; mean shear of the lattice vs the cell ε_xy = {st.attrs['lattice_shear_xy']:+.4f}"
            f" ± {st.attrs['lattice_shear_xy_err']:.4f} (add to ε_xy for the cell's frame)"
        )
    if "eps_xx_err" in st.columns:
        msg += f"; median σ(ε_xx) {np.nanmedian(st['eps_xx_err']):.2%}"
    console.print(f"{msg} → {out}, {cell_out}, {plot}")
