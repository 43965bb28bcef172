"""Steps of perovstem.insitu: drift registration, dose bookkeeping, Pb-cluster detection."""

from __future__ import annotations

import functools
from typing import Any

from perovstem.pipeline.registry import Param, api, register_step

REGISTER = "perovstem.insitu:register_drift|perovstem.insitu.register:register_drift"
APPLY = "perovstem.insitu:apply_drift|perovstem.insitu.register:apply_drift"
DETECT = "perovstem.insitu:detect_clusters|perovstem.insitu.clusters:detect_clusters"
TRACK = "perovstem.insitu:track_clusters|perovstem.insitu.track:track_clusters"


@register_step(
    "insitu.register",
    inputs=("series",),
    outputs=("drift", "series"),
    params={
        "max_lag": Param(int, 3, "frames compared with each frame (robust multi-lag fit)", min=1),
        "upsample": Param(int, 20, "sub-pixel upsampling of the phase correlation", min=1),
    },
    requires=(REGISTER, APPLY),
    section="kinetics",
    doc="Rigid drift of every frame (phase correlation) and the drift-corrected series.",
)
def insitu_register(ctx: Any, series: Any) -> dict[str, Any]:
    p = ctx.params
    drift = api(REGISTER)(series, max_lag=p["max_lag"], upsample=p["upsample"])
    corrected = api(APPLY)(series, drift)
    cols = [c for c in ("dx_A", "dy_A") if c in drift.columns] or [
        c for c in ("dx_px", "dy_px") if c in drift.columns
    ]
    if cols:
        from perovstem.plot.overview import plot_xy

        ax = plot_xy(drift, "frame", cols, marker=".", ylabel="drift")
        ctx.figure(
            "drift",
            ax.figure,
            title="Specimen drift",
            caption="Cumulative drift measured by phase correlation.",
        )
    return {"drift": drift, "series": corrected}


def _detect_one(item: tuple[int, Any], *, params: dict[str, Any]) -> Any:
    k, image = item
    return api(DETECT)(image, frame=k, **params)


@register_step(
    "insitu.clusters",
    inputs=("series",),
    outputs=("detections", "counts"),
    params={
        "threshold_sigma": Param(float, 5.0, "detection threshold, noise σ", min=0.5),
        "min_atoms": Param(float, 5.0, "smallest cluster kept, atoms", min=0.0),
        "max_diameter_A": Param(float, 16.0, "largest cluster diameter, Å", min=1.0),
    },
    requires=(DETECT,),
    section="kinetics",
    doc="Pb-cluster detection and atom counting in every frame (mapped over frames, serial or "
    "dask), then clusters and Pb⁰ atoms per frame vs cumulative dose.",
)
def insitu_clusters(ctx: Any, series: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    p = ctx.params
    items = [(k, series.frame(k)) for k in range(series.n_frames)]
    per_frame = ctx.map(
        functools.partial(_detect_one, params=dict(p)), items, description="cluster detection"
    )
    detections = pd.concat(per_frame, ignore_index=True)
    if "frame" not in detections.columns:
        detections["frame"] = np.repeat(np.arange(len(per_frame)), [len(d) for d in per_frame])
    frames = series.frames_table()
    g = detections.groupby("frame")
    counts = frames.assign(
        n_clusters=g.size().reindex(frames["frame"], fill_value=0).to_numpy(),
        n_Pb0_detected=(
            g["n_atoms"].sum().reindex(frames["frame"], fill_value=0).to_numpy()
            if "n_atoms" in detections.columns
            else np.nan
        ),
    )
    try:
        tracks = api(TRACK)(detections)
        detections = tracks if len(tracks) == len(detections) else detections
    except ImportError:
        pass
    from perovstem.plot.overview import plot_xy

    ax = plot_xy(
        counts,
        "cumulative_dose_e_per_A2",
        ["n_clusters"],
        marker=".",
        ylabel="Pb clusters detected",
    )
    ctx.figure(
        "clusters",
        ax.figure,
        title=f"Detected Pb clusters ({ctx.step_id})",
        caption="Clusters found per frame versus cumulative dose.",
    )
    return {"detections": detections, "counts": counts}
