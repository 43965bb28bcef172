"""Steps on the data model itself: frame bookkeeping and per-frame quality statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, register_step


def _frame_stats(k: int, series: Any) -> dict[str, float]:
    a = np.asarray(series.data[k], dtype=float)
    return {
        "frame": k,
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "p99": float(np.percentile(a, 99.0)),
    }


@register_step(
    "series.frames",
    input_kinds={"series": Kind("series")},
    inputs=("series",),
    outputs=("frames",),
    output_kinds={"frames": Kind("table", ("frame",))},
    section="mechanism",
    requires=("perovstem._data:Series",),
    doc="Per-frame bookkeeping of an in-situ series: time, dose, cumulative dose, conditions.",
)
def series_frames(ctx: Any, series: Any) -> dict[str, Any]:
    table = series.frames_table()
    table.attrs["pixel_size_A"] = series.pixel_size_A
    return {"frames": table}


@register_step(
    "series.frame_stats",
    input_kinds={"series": Kind("series")},
    inputs=("series",),
    outputs=("stats",),
    output_kinds={"stats": Kind("table")},
    params={"plot": Param(bool, True, "add a plot of mean intensity vs cumulative dose")},
    section="mechanism",
    doc="Per-frame intensity statistics (mean, std, min, max, 99th percentile); a quality check "
    "for beam current drift and detector saturation.",
)
def series_frame_stats(ctx: Any, series: Any) -> dict[str, Any]:
    import pandas as pd

    n = series.n_frames
    rows = ctx.map(_frame_stats, range(n), shared=series, description="frame statistics")
    table = pd.DataFrame(rows)
    dose = series.cumulative_dose_e_per_A2
    table["cumulative_dose_e_per_A2"] = dose if dose is not None else np.nan
    if ctx.params["plot"] and n > 1:
        from perovstem.plot.overview import plot_xy

        x = "cumulative_dose_e_per_A2" if dose is not None else "frame"
        ax = plot_xy(table, x, ["mean"], yerr=["std"], ylabel="mean intensity (counts)")
        ctx.figure(
            "mean_intensity",
            ax.figure,
            title="Mean frame intensity",
            caption="Mean ± std of each frame; a drift flags beam-current changes.",
        )
    return {"stats": table}
