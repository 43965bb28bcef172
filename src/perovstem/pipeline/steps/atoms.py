"""Steps of perovstem.atoms: column fitting and atom counting."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Param, api, register_step

FIT = "perovstem.atoms:fit_columns|perovstem.atoms.fit:fit_columns"
NORMALIZE = "perovstem.atoms:normalize_image|perovstem.atoms.normalize:normalize_image"
FIND = "perovstem.atoms:find_columns|perovstem.atoms.find:find_columns"
COUNT = "perovstem.atoms:count_atoms|perovstem.atoms.count:count_atoms"


@register_step(
    "atoms.fit",
    inputs=("image",),
    optional_inputs=("positions",),
    outputs=("columns",),
    params={
        "normalize": Param(
            bool,
            True,
            "convert counts to fraction of the beam first (needs dose/gain/offset metadata)",
        ),
        "width": Param(
            str,
            "type",
            "one width per type, per column, or fixed",
            choices=("type", "column", "fixed"),
        ),
        "background": Param(
            str, "constant", "background model", choices=("constant", "planar", "poly2", "none")
        ),
        "noise": Param(
            str, "gaussian", "least squares or Poisson ML", choices=("gaussian", "poisson")
        ),
    },
    requires=(FIT,),
    section="counting",
    doc="Joint Gaussian fit of all atom columns (positions, widths, cross-sections, CRLB errors).",
)
def atoms_fit(ctx: Any, image: Any, positions: Any = None) -> dict[str, Any]:
    import perovstem.atoms as atoms

    p = ctx.params
    img = image
    if p["normalize"] and hasattr(atoms, "normalize_image"):
        img = atoms.normalize_image(image)
    if positions is None:
        if not hasattr(atoms, "find_columns"):
            from perovstem.errors import ParameterError

            raise ParameterError("no `positions` input and no column finder in this version")
        positions = atoms.find_columns(img)
    cols = ["x_A", "y_A"] + (["type"] if "type" in positions.columns else [])
    columns = atoms.fit_columns(
        img, positions[cols], width=p["width"], background=p["background"], noise=p["noise"]
    )
    from perovstem.plot.overview import plot_image

    ax = plot_image(
        img.data,
        pixel_size_A=img.pixel_size_A,
        points=columns[["x_A", "y_A"]].to_numpy(),
        title="fitted columns",
    )
    ctx.figure(
        "columns",
        ax.figure,
        title="Fitted atom columns",
        caption=f"{len(columns)} columns; {int(columns['converged'].sum())} converged.",
    )
    ctx.metric(
        "median position precision",
        float(np.nanmedian(columns["x_err_A"])) * 1.0,
        unit="Å",
        caption="median CRLB σ_x of the fitted columns",
        section="counting",
    )
    return {"columns": columns}


@register_step(
    "atoms.count",
    inputs=("columns",),
    optional_inputs=("truth",),
    outputs=("counts",),
    params={
        "max_components": Param(int, 30, "largest number of GMM components", min=1),
        "criterion": Param(str, "icl", "order selection criterion", choices=("icl", "aic", "bic")),
    },
    requires=(COUNT,),
    section="counting",
    doc="Atoms per column from the cross-sections (Gaussian mixture, ICL order selection).",
)
def atoms_count(ctx: Any, columns: Any, truth: Any = None) -> dict[str, Any]:
    p = ctx.params
    types = columns["type"].to_numpy() if "type" in columns.columns else None
    counts = api(COUNT)(
        columns["scs"].to_numpy(float),
        types=types,
        max_components=p["max_components"],
        criterion=p["criterion"],
    )
    out = columns.reset_index(drop=True).copy()
    for c in counts.columns:
        if c not in out.columns:
            out[c] = counts[c].to_numpy()
    if truth is not None and "n_atoms" in truth.columns and len(truth) == len(out):
        ok = float(np.mean(out["n_atoms"].to_numpy() == truth["n_atoms"].to_numpy()))
        ctx.metric(
            "counting accuracy vs truth",
            100.0 * ok,
            unit="%",
            section="counting",
            caption="columns whose count equals the simulated number of atoms",
        )
    from perovstem.plot.overview import plot_hist

    n = out["n_atoms"].to_numpy() if "n_atoms" in out.columns else None
    ax = plot_hist(out["scs"], groups=n, xlabel="scattering cross-section")
    ctx.figure(
        "scs_histogram",
        ax.figure,
        title="Cross-section histogram",
        caption="Coloured by the assigned number of atoms.",
    )
    if n is not None:
        ctx.metric("columns counted", len(out), caption="atom columns", section="counting")
        ctx.metric("atoms in the counted columns", float(np.sum(n)), section="counting")
    return {"counts": out}
