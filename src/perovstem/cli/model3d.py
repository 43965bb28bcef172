"""``perovstem model3d TABLE``: 3D atomic model from per-column counts (lattice-gas MC)."""

from __future__ import annotations

from pathlib import Path

import typer

from perovstem.cli._common import examples
from perovstem.cli.main import app


@app.command(
    "model3d",
    epilog=examples(
        "perovstem model3d nc_columns_counts.parquet -o nc.xyz --summary-out nc.json",
    ),
)
def model3d(
    table: Path = typer.Argument(
        ...,
        help="Counted column table: x_A, y_A, type, n_atoms (optional n_atoms_mean, n_atoms_std).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Model file (.xyz, .cif or .pdb). Missing parent folders are created.",
    ),
    start: str = typer.Option("center", "--start", help="center | bottom | random."),
    support_energy: float = typer.Option(
        0.0,
        "--support-energy",
        help="Adhesion per bottom-layer atom (crystal on a support), in the units of the "
        "bond energies (Pb–Br bond = −1).",
    ),
    chains: int = typer.Option(16, "--chains", help="Independent Monte Carlo chains."),
    sweeps: int = typer.Option(200, "--sweeps", help="Sweeps per chain."),
    lattice_A: float = typer.Option(5.87, "--lattice-A", help="Pseudo-cubic lattice, Å."),
    count_moves: bool = typer.Option(
        False,
        "--count-moves",
        help="Allow ±1 count changes weighted by the count posterior (needs n_atoms_std). "
        "Experimental: counts drift upward (~18 % more atoms on a test crystal); keep it off "
        "for quantitative models.",
    ),
    composition: Path = typer.Option(
        None,
        "--composition",
        help="Cd per Pb-Br column (x_A, y_A, n_cd: the table of 'atoms composition'); Cd "
        "replaces that many Pb of each column, at random depths.",
    ),
    sites_out: Path = typer.Option(
        None, "--sites-out", help="Site-occupation probabilities (.parquet/.csv)."
    ),
    summary_out: Path = typer.Option(
        None, "--summary-out", help="JSON with facet fractions, energies, parameters."
    ),
    seed: int = typer.Option(None, "--seed", min=0, help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Build a 3-D atomic model from atom counts; writes it as XYZ/CIF/PDB (+ sites, summary)."""
    import numpy as np

    from perovstem.cli._common import about_file, check_outputs, console
    from perovstem.io import read_table, save_json, save_table
    from perovstem.io.structures import STRUCTURE_SUFFIXES, save_structure
    from perovstem.io.write import TABLE_SUFFIXES
    from perovstem.quantify import model_from_counts

    check_outputs(
        out,
        sites_out,
        summary_out,
        overwrite=overwrite,
        suffixes={
            "--out": (tuple(STRUCTURE_SUFFIXES), out),
            "--sites-out": (TABLE_SUFFIXES, sites_out),
            "--summary-out": ((".json",), summary_out),
        },
    )
    df = read_table(table)
    left_out = 0
    if "n_atoms" in df:
        # `atoms count` leaves the columns it could not count (``counted`` False) without a
        # count: they are not in the model, and the note says how many
        blank = df["n_atoms"].isna().to_numpy()
        if blank.any() and not blank.all():
            left_out = int(blank.sum())
            df = df[~blank].reset_index(drop=True)
    comp = None
    if composition is not None:
        from perovstem.cli._common import nonempty_table

        comp = read_table(composition)
        nonempty_table(comp, composition)
        from perovstem.quantify.model3d import _check_composition

        # (checked here to name its own file; errors inside the model name the counts table)
        with about_file(composition, param="composition"):
            _check_composition(comp)
    with about_file(table, param="columns"):
        model = model_from_counts(
            df,
            lattice_A=lattice_A,
            start=start,
            n_chains=chains,
            n_sweeps=sweeps,
            support_energy=support_energy,
            count_moves=count_moves,
            composition=comp,
            rng=seed,
        )
    save_structure(model.atoms, out, overwrite=overwrite)
    facets = model.facet_fractions(lattice_A=lattice_A)
    if sites_out is not None:
        save_table(model.sites[model.sites["p_occupied"] > 0], sites_out, overwrite=overwrite)
    if summary_out is not None:
        save_json(
            {
                "n_atoms": len(model.atoms),
                "facet_fractions": facets,
                "energies": model.energies.tolist(),
                "charges_e": model.charges.tolist(),
                "params": model.params,
            },
            summary_out,
            overwrite=overwrite,
        )
    p = model.sites["p_occupied"].to_numpy()
    unsure = int(np.sum((p > 0.05) & (p < 0.95)))
    console.print(
        f"{len(model.atoms)} atoms; facets {{100}} {facets['100']:.0%}, {{110}} "
        f"{facets['110']:.0%}, {{111}} {facets['111']:.0%}, other {facets['other']:.0%} "
        f"of {facets['n_surface']} surface cations; {unsure} sites with 0.05 < p < 0.95"
    )
    if comp is not None:
        pr = model.params
        n_pbbr = pr["cd_columns_matched"] + pr["cd_columns_unmatched"]
        console.print(
            f"Cd: {pr['cd_atoms']} atoms in {pr['cd_columns_matched']} of {n_pbbr} Pb-Br "
            f"columns of {str(composition)!r}, at random depths (one projection does not "
            "tell where along the beam)"
        )
        if pr["cd_columns_unmatched"]:
            console.print(
                f"note: {pr['cd_columns_unmatched']} Pb-Br columns have no row in "
                f"{str(composition)!r} within 0.5 Å and hold no Cd"
            )
        if pr["cd_clipped"]:
            console.print(
                f"note: {pr['cd_clipped']} Cd atoms of {str(composition)!r} exceed their "
                "columns' Pb count (the composition took its thickness elsewhere) and are "
                "left out"
            )
    if left_out:
        console.print(
            f"note: {left_out} of {left_out + len(df)} columns of {str(table)!r} have no count "
            "(not counted by `atoms count`) and are left out of the model: its surface there "
            "is missing columns"
        )
    console.print(f"wrote {out}")
