"""Steps of perovstem.tomo: reconstruction, surface and facets."""

from __future__ import annotations

from typing import Any

from perovstem.pipeline.registry import Param, register_step


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
    requires=("perovstem.tomo:reconstruct",),
    section="facets",
    doc="Tomographic reconstruction of an aligned tilt series.",
)
def tomo_reconstruct(ctx: Any, tilt: Any) -> dict[str, Any]:
    from perovstem.tomo import reconstruct

    p = ctx.params
    kw = {} if p["method"] in ("fbp", "wbp") else {"n_iter": p["n_iter"]}
    rec = reconstruct(tilt, method=p["method"], **kw)
    vol = rec.volume
    label = p["label"] or ctx.step_id
    if p["view3d"]:
        from perovstem.report.plot3d import volume_figure

        fig = volume_figure(vol, voxel_size_A=rec.voxel_size_A, title=f"Reconstruction ({label})")
        ctx.plot3d(
            "surface",
            fig,
            title=f"Reconstructed surface ({label})",
            caption=f"Iso-surface at half the maximum density; {rec.method}, "
            f"{rec.n_iter} iterations, voxel {rec.voxel_size_A:g} Å.",
        )
    import numpy as np

    ctx.metric(
        f"reconstructed volume ({label})",
        float((vol > 0.5 * np.percentile(vol, 99.9)).sum()) * rec.voxel_size_A**3,
        unit="Å³",
        caption="voxels above half the 99.9th-percentile density",
        section="facets",
    )
    return {"volume": np.asarray(vol, dtype=np.float32)}


@register_step(
    "tomo.facets",
    inputs=("volume",),
    outputs=("facets",),
    params={"label": Param(str, "", "label in the report")},
    requires=("perovstem.tomo:segment", "perovstem.tomo:facet_fractions"),
    section="facets",
    doc="Segment the reconstruction and measure its facet fractions ({100}, {110}, {111}).",
)
def tomo_facets(ctx: Any, volume: Any) -> dict[str, Any]:
    from perovstem.tomo import facet_fractions, segment

    mask = segment(volume)
    facets = facet_fractions(mask)
    ctx.table("facets", facets, title=f"Facet fractions ({ctx.params['label'] or ctx.step_id})")
    return {"facets": facets}
