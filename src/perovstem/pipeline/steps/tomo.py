"""Steps of perovstem.tomo: alignment, reconstruction, segmentation and facets."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Param, api, register_step

RECONSTRUCT = "perovstem.tomo:reconstruct|perovstem.tomo.reconstruct:reconstruct"
ALIGN = "perovstem.tomo:align|perovstem.tomo.align:align"
APPLY = "perovstem.tomo:apply_alignment|perovstem.tomo.align:apply_alignment"
SEGMENT = "perovstem.tomo:segment|perovstem.tomo.segment:segment"
VOLUMES = "perovstem.tomo:label_volumes|perovstem.tomo.segment:label_volumes"
FACETS = "perovstem.tomo:facet_fractions|perovstem.tomo.facets:facet_fractions"


@register_step(
    "tomo.align",
    inputs=("tilt",),
    outputs=("tilt",),
    params={},
    requires=(ALIGN, APPLY),
    section="facets",
    doc="Align a tilt series (cross-correlation, centre of mass, tilt axis, projection matching).",
)
def tomo_align(ctx: Any, tilt: Any) -> dict[str, Any]:
    alignment = api(ALIGN)(tilt)
    return {"tilt": api(APPLY)(tilt, alignment)}


@register_step(
    "tomo.reconstruct",
    inputs=("tilt",),
    outputs=("volume",),
    params={
        "method": Param(
            str, "sirt", "algorithm", choices=("fbp", "wbp", "sirt", "sart", "cgls", "tv", "dart")
        ),
        "n_iter": Param(int, 50, "iterations (iterative methods)", min=1),
        "label": Param(str, "", "label in the report"),
        "view3d": Param(bool, True, "embed an iso-surface in the report"),
    },
    requires=(RECONSTRUCT,),
    section="facets",
    doc="Tomographic reconstruction of an aligned tilt series.",
)
def tomo_reconstruct(ctx: Any, tilt: Any) -> dict[str, Any]:
    p = ctx.params
    kw = {} if p["method"] in ("fbp", "wbp") else {"n_iter": p["n_iter"]}
    rec = api(RECONSTRUCT)(tilt, method=p["method"], **kw)
    vol = np.asarray(rec.volume, dtype=np.float32)
    label = p["label"] or ctx.step_id
    if p["view3d"]:
        from perovstem.report.plot3d import volume_figure

        fig = volume_figure(vol, voxel_size_A=rec.voxel_size_A, title=f"Reconstruction ({label})")
        ctx.plot3d(
            "surface",
            fig,
            title=f"Reconstructed surface ({label})",
            caption=f"Iso-surface at half the 99.9th-percentile density; {rec.method}, "
            f"{rec.n_iter} iterations, voxel {rec.voxel_size_A:g} Å.",
        )
    return {"volume": vol}


@register_step(
    "tomo.segment",
    inputs=("volume",),
    outputs=("labels", "volumes"),
    params={
        "n_classes": Param(int, 3, "2: background/crystal; 3: + Pb clusters", min=2, max=5),
        "voxel_size_A": Param(float, 1.0, "voxel edge, Å", min=1e-3),
        "label": Param(str, "", "label in the report (e.g. before/after)"),
    },
    requires=(SEGMENT, VOLUMES),
    section="facets",
    doc="Multi-Otsu segmentation of a reconstruction and the volume of every class.",
)
def tomo_segment(ctx: Any, volume: Any) -> dict[str, Any]:
    import pandas as pd

    p = ctx.params
    labels, thresholds = api(SEGMENT)(volume, n_classes=p["n_classes"])
    vols = api(VOLUMES)(labels, p["voxel_size_A"])
    label = p["label"] or ctx.step_id
    table = pd.DataFrame([{"label": label, **vols}])
    table.attrs["thresholds"] = [float(t) for t in np.ravel(thresholds)]
    for k, v in vols.items():
        ctx.metric(f"{k} ({label})", v, unit="", caption="segmented volume, Å³", section="facets")
    return {"labels": labels.astype(np.uint8), "volumes": table}


@register_step(
    "tomo.facets",
    inputs=("labels",),
    outputs=("facets",),
    params={
        "voxel_size_A": Param(float, 1.0, "voxel edge, Å", min=1e-3),
        "label": Param(str, "", "label in the report"),
    },
    requires=(FACETS,),
    section="facets",
    doc="Facet fractions ({100}, {110}, {111}) of the segmented crystal surface.",
)
def tomo_facets(ctx: Any, labels: Any) -> dict[str, Any]:
    facets = api(FACETS)(labels > 0, voxel_size_A=ctx.params["voxel_size_A"])
    ctx.table("facets", facets, title=f"Facet fractions ({ctx.params['label'] or ctx.step_id})")
    return {"facets": facets}
