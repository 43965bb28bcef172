"""``perovstem atoms composition``: Cd fraction x of CsCd_xPb_(1-x)Br3 from counted columns."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import data_stem, examples
from perovstem.cli.atoms import atoms_app

# fewer Pb-Br columns than this behind x are said
COMPOSITION_MIN_COLUMNS = 5


@atoms_app.command(
    "composition",
    epilog=examples(
        "perovstem atoms composition nc_counts.parquet -o nc_cd.parquet",
        "perovstem atoms composition nc_counts.parquet --thickness map.parquet",
    ),
)
def composition(
    counts: Path = typer.Argument(
        ..., help="Counted [001] columns (type, scs in Å², n_atoms), e.g. 'atoms count' output."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Per-column Cd table (.parquet/.csv). Missing parent folders are created.",
    ),
    thickness: Path = typer.Option(
        None,
        "--thickness",
        help="Cells per Pb-Br column from another measurement (x_A, y_A, n_atoms table).",
    ),
    thickness_from: str = typer.Option(
        "Cs",
        "--thickness-from",
        help="Without --thickness: Cs (the four Cd-free Cs neighbours' counts) | counted (the "
        "Pb-Br counts themselves, biased by Cd).",
    ),
    termination: str = typer.Option(
        "CsBr",
        "--termination",
        help="Entrance/exit faces: CsBr (Pb-Br columns one cell shorter than their Cs "
        "neighbours) | PbBr2 (one longer) | mixed.",
    ),
    scale_from: str = typer.Option(
        "Cs",
        "--scale-from",
        help="Column type whose library scale calibrates the cross-sections ('' : none).",
    ),
    voltage_kV: float = typer.Option(
        None, "--voltage-kV", help="Beam energy, kV (default: the table's, else 300)."
    ),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of the interval."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Cd fraction x (with its interval) and Cd per Pb-Br column; writes a table.

    Count the fitted columns first, with
    `atoms count --library simulate --method hybrid --termination CsBr`:
    its Cs counts give the Pb-Br columns' thickness and the scale.
    """
    from perovstem.atoms import composition_from_counts
    from perovstem.cli._common import about_file, check_outputs, console, nonempty_table
    from perovstem.cli.counting import need_normalised
    from perovstem.errors import DataError, ParameterError
    from perovstem.io import read_table, save_table
    from perovstem.simulate.scs import _check_voltage

    if not 0.5 <= confidence < 1.0:  # NaN fails too
        raise ParameterError(f"`--confidence` must be in [0.5, 1), got {confidence}")
    out = out if out is not None else Path(f"{data_stem(counts)}_cd.parquet")
    check_outputs(out, overwrite=overwrite)
    table = read_table(counts)
    nonempty_table(table, counts)
    if "n_atoms" not in table.columns:
        raise DataError(
            f"{str(counts)!r} has no 'n_atoms': count it first (`perovstem atoms count "
            "--library simulate --method hybrid`)"
        )
    need_normalised(counts, table.attrs, "the composition model")
    kv = float(voltage_kV if voltage_kV is not None else table.attrs.get("voltage_kV") or 300.0)
    _check_voltage(kv)
    th = read_table(thickness) if thickness is not None else None
    with about_file(counts):
        res = composition_from_counts(
            table,
            thickness=th,
            thickness_from=thickness_from,
            termination=termination,
            scale_from=scale_from,
            voltage_kV=kv,
            confidence=confidence,
        )
    cols = res.result.columns
    cols.attrs.update(source=str(counts), voltage_kV=kv, confidence=confidence)
    save_table(cols, out)
    r = res.result
    lo, hi = r.x_ci
    left = (
        f", {res.n_dropped} left out: their Cs neighbours disagree (steps, edges or noisy counts)"
        if res.n_dropped
        else ""
    )
    scale = (
        f"scale c = {res.scale:.3f} from the {res.scale_source}"
        if res.scale_source
        else "scale c = 1 (uncalibrated)"
    )
    # a ± beside an interval it contradicts (x at 0 with [0, 0.89]) is left out: the
    # interval is the statement
    sym = abs((hi - r.x) - (r.x - lo)) <= 0.5 * (hi - lo)
    pm = f" ± {r.x_err:.3f}" if sym else ""
    console.print(
        f"x(Cd) = {r.x:.3f}{pm} [{lo:.3f}, {hi:.3f}] ({100 * confidence:g} %), "
        f"{res.n_columns} Pb-Br columns (thickness: {res.thickness_source}{left}); {scale}; "
        f"{kv:g} kV → {out}"
    )
    if res.n_columns < COMPOSITION_MIN_COLUMNS:
        console.print(
            f"WARNING: x rests on {res.n_columns} Pb-Br column(s): a column's Cd count is "
            "an integer with its own noise, so x is as coarse as its interval says (count a "
            "larger field, or at a higher dose)"
        )
    if res.thickness_source == "counted":
        console.print(
            "WARNING: the thickness was counted from the same Pb-Br cross-sections, which Cd "
            "also lowers: x can be off by more than its interval (simulated 55 Å cubes: 0.25 "
            "for 0.12; a 60 Å cube of x = 0.3: 0.000); use --thickness-from Cs or --thickness"
        )
