"""Steps of perovstem.insitu: drift registration, dose bookkeeping, Pb-cluster detection."""

from __future__ import annotations

from typing import Any

from perovstem.pipeline.registry import Param, register_step


@register_step(
    "insitu.register",
    inputs=("series",),
    outputs=("drift", "series"),
    params={
        "max_lag": Param(int, 3, "frames compared with each frame (robust multi-lag fit)", min=1),
        "upsample": Param(int, 20, "sub-pixel upsampling of the phase correlation", min=1),
    },
    requires=("perovstem.insitu:register_drift", "perovstem.insitu:apply_drift"),
    section="kinetics",
    doc="Rigid drift of every frame (phase correlation) and the drift-corrected series.",
)
def insitu_register(ctx: Any, series: Any) -> dict[str, Any]:
    from perovstem.insitu import apply_drift, register_drift

    p = ctx.params
    drift = register_drift(series, max_lag=p["max_lag"], upsample=p["upsample"])
    corrected = apply_drift(series, drift)
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


@register_step(
    "insitu.clusters",
    inputs=("series",),
    outputs=("detections", "tracks"),
    params={},
    requires=("perovstem.insitu:detect_clusters", "perovstem.insitu:track_clusters"),
    section="kinetics",
    doc="Pb-cluster detection in every frame (map over frames) and tracking through the series.",
)
def insitu_clusters(ctx: Any, series: Any) -> dict[str, Any]:
    import pandas as pd

    from perovstem.insitu import detect_clusters, track_clusters

    frames = [series.frame(k) for k in range(series.n_frames)]
    per_frame = ctx.map(detect_clusters, frames, description="cluster detection")
    for k, df in enumerate(per_frame):
        df["frame"] = k
    detections = pd.concat(per_frame, ignore_index=True)
    tracks = track_clusters(detections)
    return {"detections": detections, "tracks": tracks}
