"""Step of perovstem.atoms: the number of columns of a low-dose image (MAP model order)."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, api, register_step
from perovstem.pipeline.steps.atoms import POSITIONS_KIND

MAP = "perovstem.atoms:map_columns|perovstem.atoms.map:map_columns"


@register_step(
    "atoms.map",
    input_kinds={
        "image": Kind("image"),
        "positions": POSITIONS_KIND,
    },
    inputs=("image",),
    optional_inputs=("positions",),
    outputs=("positions", "models"),
    output_kinds={"positions": Kind("table", ("x_A", "y_A")), "models": Kind("table")},
    params={
        "max_columns": Param(int, 50, "largest number of columns tried", min=1, max=2000),
        "eta_min": Param(
            float,
            0.0,
            "lower end of the uniform prior on column heights, image units (about half the "
            "weakest column expected; 0 as StatSTEM, which lets faint columns fit the "
            "probe's tails at high dose)",
            min=0.0,
        ),
        "stop_drop": Param(float, 1.0, "stop once log10 P is this far below its maximum", min=0.01),
        "min_distance_A": Param(
            float, 1.0, "no new column closer than this to another, Å", min=0.0
        ),
        "rho_A": Param(float, 0.5, "starting common column width, Å", min=0.01),
    },
    requires=(MAP,),
    section="counting",
    doc="Number and positions of atom columns of a low-dose image by their posterior "
    "probability (MAP model-order selection, Fatermans et al. 2018); feeds atoms.fit.",
)
def atoms_map(ctx: Any, image: Any, positions: Any = None) -> dict[str, Any]:
    p = ctx.params
    data = np.asarray(image.data, dtype=float)
    res = api(MAP)(
        image,
        start=positions,
        max_columns=p["max_columns"],
        eta_range=(p["eta_min"], float(data.max())),
        stop_drop=p["stop_drop"],
        min_distance_A=p["min_distance_A"],
        rho_A=p["rho_A"],
    )
    models = res.models
    best = models.loc[models["n_columns"] == res.n_columns]
    ctx.metric(
        "columns (MAP)",
        float(res.n_columns),
        unit="",
        caption=f"posterior probability {float(best['probability'].iloc[0]):.2f} among "
        f"{len(models)} model orders tried ({int(models['n_columns'].min())}–"
        f"{int(models['n_columns'].max())} columns)",
        section="counting",
    )
    from perovstem.plot.overview import plot_image

    ax = plot_image(
        data,
        pixel_size_A=image.pixel_size_A,
        points=res.columns[["x_A", "y_A"]].to_numpy(),
        title=f"MAP: {res.n_columns} columns",
    )
    ctx.figure(
        "map_columns",
        ax.figure,
        title="Columns selected by their posterior probability",
        caption="Positions of the maximum a posteriori model; the models table holds χ², "
        "ln det H and log10 P of every order tried.",
    )
    return {"positions": res.columns, "models": models}
