"""Step of perovstem.atoms: lattice, displacement and strain maps of fitted columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, api, register_step
from perovstem.pipeline.steps.atoms import CELLS

STRAIN = "perovstem.atoms:strain_analysis|perovstem.atoms.lattice:strain_analysis"


@register_step(
    "atoms.strain",
    input_kinds={"columns": Kind("table", ("x_A", "y_A"), "the `columns` output of atoms.fit")},
    inputs=("columns",),
    outputs=("strain", "unit_cell"),
    output_kinds={"strain": Kind("table"), "unit_cell": Kind("table")},
    params={
        "cell": Param(
            str,
            None,
            "projected cell the columns are indexed to (default: the built-in cell whose "
            "column types the table has, i.e. the zone of atoms.fit)",
            choices=tuple(CELLS),
        ),
        "lattice_A": Param(float, 5.87, "pseudo-cubic lattice constant of the cell, Å", min=1.0),
        "reference_type": Param(
            str, "", "column type that defines the lattice ('' = the cell's first, the brightest)"
        ),
        "radius_A": Param(
            float, None, "neighbour radius of the local strain, Å (default 1.1·max(a, b))", min=0.1
        ),
        "frame": Param(
            str,
            "lattice",
            "axes of ε and ω: x along the lattice vector a of each crystal, or the image axes",
            choices=("lattice", "lab"),
        ),
    },
    requires=(STRAIN,),
    section="counting",
    doc="Lattice fit, displacements, local strain ε and rotation ω with errors propagated from "
    "the position CRLB, and the measured projected unit cell (StatSTEM-style strain maps); "
    "each crystal on its own lattice.",
)
def atoms_strain(ctx: Any, columns: Any) -> dict[str, Any]:
    from perovstem.atoms.lattice import unit_cell_table
    from perovstem.plot.atoms import plot_strain_maps

    p = ctx.params
    name = p["cell"]
    if name is None:  # the zone of the fit: [011] columns are typed Pb_011, Br_011, CsBr_011
        types = set(columns["type"].astype(str)) if "type" in columns.columns else set()
        name = next(
            (n for n in CELLS if types & set(api(CELLS[n])(p["lattice_A"]).types)),
            "cspbbr3_001",
        )
    cell = api(CELLS[name])(p["lattice_A"])
    strain, uc = api(STRAIN)(
        columns,
        cell,
        reference_type=p["reference_type"] or None,
        radius_A=p["radius_A"],
        frame=p["frame"],
    )
    n_ok = int((strain["site"] >= 0).sum())
    err = strain.attrs.get("lattice_vectors_err_A", [np.nan, np.nan])
    for name, val, e in (("lattice a", uc.a_A, err[0]), ("lattice b", uc.b_A, err[1])):
        ctx.metric(
            name, float(val), unit="Å", err=float(e), caption="fitted lattice (largest crystal)"
        )
    eps = strain[["eps_xx", "eps_yy"]].to_numpy(float)
    caption = (
        f"{n_ok} of {len(strain)} columns indexed; strain relative to the crystal's own fitted "
        f"lattice, {p['frame']} frame; spread of ε_xx {np.nanstd(eps[:, 0]):.2%}"
    )
    if "eps_xx_err" in strain.columns:
        caption += f", median error {np.nanmedian(strain['eps_xx_err']):.2%} (from the CRLB)"
    ctx.figure("strain", plot_strain_maps(strain), title="Strain maps", caption=caption)
    table = unit_cell_table(uc, lattice=strain)
    if "lattice_shear_xy" in strain.attrs:
        ctx.metric(
            "lattice shear",
            float(strain.attrs["lattice_shear_xy"]),
            err=float(strain.attrs["lattice_shear_xy_err"]),
            caption="mean ε_xy of the fitted lattice relative to the cell's angle (largest "
            "crystal): add to ε_xy to compare with a map referred to the cell (StatSTEM)",
        )
    ctx.table(
        "unit_cell",
        table[[c for c in ("site", "type", "u", "v", "u_err", "v_err", "n_columns") if c in table]],
        title="Measured projected unit cell",
        caption=f"a = {uc.a_A:.4f} Å, b = {uc.b_A:.4f} Å, angle {uc.angle_deg:.2f}°; site "
        "positions averaged over every indexed column (fractions of a, b).",
    )
    return {"strain": strain, "unit_cell": table}
