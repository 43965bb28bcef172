"""Steps of perovstem.tomo: alignment, reconstruction, segmentation and facets."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, UpstreamOf, api, register_step

RECONSTRUCT = "perovstem.tomo:reconstruct|perovstem.tomo.reconstruct:reconstruct"
ALIGN = "perovstem.tomo:align|perovstem.tomo.align:align"
APPLY = "perovstem.tomo:apply_alignment|perovstem.tomo.align:apply_alignment"
SEGMENT = "perovstem.tomo:segment|perovstem.tomo.segment:segment"
VOLUMES = "perovstem.tomo:label_volumes|perovstem.tomo.segment:label_volumes"
FACETS = "perovstem.tomo:facet_fractions|perovstem.tomo.facets:facet_fractions"
MESH = "perovstem.tomo:surface_mesh|perovstem.tomo.surface:surface_mesh"
NOISE = "perovstem.tomo:volume_noise|perovstem.tomo.facets:volume_noise"
SIGMA = "perovstem.tomo:mesh_sigma_px|perovstem.tomo.facets:mesh_sigma_px"
BIN = "perovstem.tomo:bin_tilt_series|perovstem.tomo.reconstruct:bin_tilt_series"


#: what tomo.facet_change returns: every column (no `fraction`: not a facets table)
FACET_CHANGE_KIND = Kind(
    "table", ("family", "fraction_before", "fraction_after", "change"), may_have=()
)


@register_step(
    "tomo.bin",
    input_kinds={"tilt": Kind("tilt")},
    inputs=("tilt",),
    outputs=("tilt",),
    output_kinds={"tilt": Kind("tilt")},
    params={"factor": Param(int, 2, "bin factor (factor × factor pixels, mean)", min=1)},
    requires=(BIN,),
    section="facets",
    doc="Bin the projections of a tilt series (pixel size and shifts scaled).",
)
def tomo_bin(ctx: Any, tilt: Any) -> dict[str, Any]:
    return {"tilt": api(BIN)(tilt, ctx.params["factor"])}


@register_step(
    "tomo.align",
    input_kinds={"tilt": Kind("tilt")},
    inputs=("tilt",),
    outputs=("tilt",),
    output_kinds={"tilt": Kind("tilt")},
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
    input_kinds={"tilt": Kind("tilt")},
    inputs=("tilt",),
    outputs=("volume", "voxel_size_A"),
    output_kinds={"volume": Kind("volume"), "voxel_size_A": Kind("number")},
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
    from perovstem.errors import ParameterError

    p = ctx.params
    axis = float(getattr(tilt, "tilt_axis_deg", 0.0) or 0.0)
    if abs(axis) > 1e-6:  # the API's refusal names a Python function
        raise ParameterError(
            f"the tilt series' axis is at {axis:.4g}° (from its file); the reconstruction "
            "needs it along the image x: put a tomo.align step before this one"
        )
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
    return {"volume": vol, "voxel_size_A": float(rec.voxel_size_A)}


@register_step(
    "tomo.segment",
    input_kinds={
        "volume": Kind("volume", source="the `volume` output of tomo.reconstruct"),
        "voxel_size_A": Kind("number"),
    },
    inputs=("volume",),
    optional_inputs=("voxel_size_A",),
    outputs=("labels", "volumes"),
    output_kinds={"labels": Kind("volume"), "volumes": Kind("table")},
    params={
        "n_classes": Param(int, 3, "2: background/crystal; 3: + Pb clusters", min=2, max=5),
        "voxel_size_A": Param(
            float, None, "voxel edge, Å (default: from the reconstruction)", min=1e-3
        ),
        "label": Param(str, "", "label in the report (e.g. before/after)"),
    },
    requires=(SEGMENT, VOLUMES),
    section="facets",
    doc="Multi-Otsu segmentation of a reconstruction and the volume of every class.",
)
def tomo_segment(ctx: Any, volume: Any, voxel_size_A: Any = None) -> dict[str, Any]:
    import pandas as pd

    p = ctx.params
    dx = p["voxel_size_A"] or voxel_size_A or 1.0
    labels, thresholds = api(SEGMENT)(volume, n_classes=p["n_classes"])
    vols = api(VOLUMES)(labels, float(dx))
    label = p["label"] or ctx.step_id
    table = pd.DataFrame([{"label": label, **vols}])
    table.attrs["thresholds"] = [float(t) for t in np.ravel(thresholds)]
    names = {"object_A3": "object volume"}
    if p["n_classes"] == 3:
        names.update({"class_1_A3": "host-crystal volume", "class_2_A3": "bright-inclusion volume"})
    for k, v in vols.items():
        name = names.get(k, k.removesuffix("_A3").replace("_", " ") + " volume")
        ctx.metric(f"{name} ({label})", v, unit="Å³", caption=f"segmented ({k})", section="facets")
    return {"labels": labels.astype(np.uint8), "volumes": table}


@register_step(
    "tomo.facets",
    input_kinds={
        "volume": Kind("volume", source="the `volume` output of tomo.reconstruct"),
        "voxel_size_A": Kind("number"),
        "tilt": Kind("tilt"),
    },
    inputs=("volume",),
    optional_inputs=("voxel_size_A", "tilt"),
    outputs=("facets",),
    output_kinds={"facets": Kind("table", ("family", "fraction"))},
    params={
        "voxel_size_A": Param(
            float, None, "voxel edge, Å (default: from the reconstruction)", min=1e-3
        ),
        "tolerance_deg": Param(float, 10.0, "largest normal–family angle, degrees", min=0.1),
        "sigma_px": Param(
            float,
            None,
            "smoothing before meshing, voxels (default: from the volume's noise, "
            "perovstem.tomo.mesh_sigma_px)",
            min=0.0,
        ),
        "method": Param(
            str,
            "normals",
            "normals: area of mesh faces per family (edges and rounded surface are 'other'); "
            "polyhedron: low-index polyhedron fitted to the support distances (convex faceted "
            "crystals only, no 'other')",
            choices=("normals", "polyhedron"),
        ),
        "label": Param(str, "", "label in the report"),
        "view3d": Param(bool, True, "embed the surface mesh in the report"),
    },
    requires=(MESH, FACETS, NOISE, SIGMA),
    section="facets",
    doc="Surface mesh of the reconstruction and its {100}/{110}/{111} facet area fractions "
    "(missing-wedge flags from the tilt range; see perovstem.tomo.facet_fractions for the "
    "two methods).",
)
def tomo_facets(ctx: Any, volume: Any, voxel_size_A: Any = None, tilt: Any = None) -> dict:
    from perovstem.tomo.facets import ROUGH_FACETS_NOISE

    p = ctx.params
    dx = float(p["voxel_size_A"] or voxel_size_A or 1.0)
    noise = float(api(NOISE)(volume))
    sigma = p["sigma_px"] if p["sigma_px"] is not None else api(SIGMA)(noise=noise)
    mesh = api(MESH)(volume, voxel_size_A=dx, sigma_px=sigma)
    kw = {}
    if tilt is not None and hasattr(tilt, "angles_deg"):
        kw["tilt_range_deg"] = float(np.max(np.abs(tilt.angles_deg)))
    facets = api(FACETS)(mesh, tolerance_deg=p["tolerance_deg"], method=p["method"], **kw)
    label = p["label"] or ctx.step_id
    facets = facets.assign(label=label)
    facets.attrs.update(volume_noise=noise, sigma_px=float(sigma))
    caption = (
        f"Method: {p['method']}; mesh smoothing σ = {sigma:.2f} voxels; relative volume noise "
        f"{noise:.3g}."
    )
    if noise > ROUGH_FACETS_NOISE:
        ctx.text(
            f"Facets ({label}): a noisy volume (relative noise {noise:.3g}); on simulated "
            "crystals this noisy the fractions were off by up to 0.25 with the polyhedron "
            "method and 'other' took about half of the surface with the normals method: "
            "read them as rough.",
            section="facets",
        )
    if p["method"] == "polyhedron":
        # mesh volume / polyhedron volume per particle: well below 1 means the convex
        # low-index polyhedron does not describe the particle (hollow or concave)
        cv = ", ".join(f"{c:.2f}" for c in facets.attrs.get("convexity", []))
        caption += f" Convexity (mesh / polyhedron volume, per particle): {cv or 'n/a'}."
    ctx.table("facets", facets, title=f"Facet fractions ({label})", caption=caption)
    if p["view3d"]:
        from perovstem.report.plot3d import mesh_figure

        fig = mesh_figure(
            mesh.vertices_A, mesh.faces, intensity=mesh.vertices_A[:, 2], title=f"Surface ({label})"
        )
        ctx.plot3d(
            "surface",
            fig,
            title=f"Reconstructed surface ({label})",
            caption=f"Iso-surface mesh, {len(mesh.faces)} triangles, "
            f"volume {mesh.volume_A3:.3g} Å³.",
        )
    return {"facets": facets}


@register_step(
    "tomo.facet_change",
    input_kinds={
        "before": Kind("table", ("family", "fraction"), "the `facets` output of tomo.facets"),
        "after": Kind("table", ("family", "fraction"), "the `facets` output of tomo.facets"),
    },
    inputs=("before", "after"),
    outputs=("change",),
    output_kinds={"change": FACET_CHANGE_KIND},
    params={},
    section="facets",
    doc="Facet fractions before and after degradation, side by side (both tables from "
    "tomo.facets with the same method).",
)
def tomo_facet_change(ctx: Any, before: Any, after: Any) -> dict[str, Any]:
    import pandas as pd

    from perovstem.errors import ParameterError

    # the polyhedron method has no 'other' area: a change between methods is not a change
    mb, ma = before.attrs.get("method"), after.attrs.get("method")
    if mb is not None and ma is not None and mb != ma:
        raise ParameterError(
            f"`before` facets use method={mb!r} but `after` facets method={ma!r}; "
            "set the same `method` in both tomo.facets steps"
        )

    # noise-matched smoothing (tomo.facets' default) differs between a clean and a noisy
    # volume: a part of the change would then be the smoothing's (σ 1 → 2 moved 0.03-0.17 of
    # the area between families of the same clean 60 Å phantoms, session 27)
    sb, sa = before.attrs.get("sigma_px"), after.attrs.get("sigma_px")
    if sb is not None and sa is not None and abs(float(sb) - float(sa)) > 0.1 * min(sb, sa):
        ctx.text(
            f"Facet change: the two volumes were meshed with different smoothing (σ = "
            f"{float(sb):.2f} before, {float(sa):.2f} after voxels, each from its volume's "
            "noise); part of the change may be the smoothing's: set the same `sigma_px` in "
            "both tomo.facets steps to compare them.",
            section="facets",
        )
    cols = ["family", "fraction"] + (["fraction_err"] if "fraction_err" in before else [])
    b = before[cols].set_index("family")
    a = after[cols].set_index("family")
    change = pd.DataFrame({"fraction_before": b["fraction"], "fraction_after": a["fraction"]})
    change["change"] = change["fraction_after"] - change["fraction_before"]
    change = change.reset_index()
    from perovstem.plot.overview import plot_bars

    ax = plot_bars(change, "family", ["fraction_before", "fraction_after"], ylabel="area fraction")
    ctx.figure(
        "facets",
        ax.figure,
        title="Facet evolution",
        caption="Surface area fraction of each facet family before and after irradiation "
        f"(method: {mb or 'normals'}).",
    )
    ctx.table("change", change, title="Facet fractions before → after")
    return {"change": change}


SEQUENCE = "perovstem.tomo:reconstruct_sequence|perovstem.tomo.fourd:reconstruct_sequence"
CHECK_SEQUENCE = "perovstem.tomo:check_sequence|perovstem.tomo.fourd:check_sequence"


def _check_sequence(params: dict[str, Any], upstream: dict[str, UpstreamOf]) -> None:
    """One time and one dose per wired tilt series (a wrong count failed only after the
    steps producing the series had run)."""
    from perovstem.errors import ParameterError

    # (fewer than 2 series is refused when the step runs, so that with on_error = "continue"
    # the other steps still run)
    wired = upstream.get("series")
    n = len(wired) if isinstance(wired, list) else None
    given = {k: params[k] for k in ("times_s", "doses_e_per_A2") if params[k] is not None}
    for key, v in given.items():
        if n is not None and len(v) != n:
            raise ParameterError(
                f"`{key}` = {v!r} holds {len(v)} values for the {n} tilt series wired to "
                "`series`: give one per series, in their order"
            )
    if len(given) == 2 and len(given["times_s"]) != len(given["doses_e_per_A2"]):
        raise ParameterError(
            f"`times_s` = {given['times_s']!r} and `doses_e_per_A2` = "
            f"{given['doses_e_per_A2']!r} hold {len(given['times_s'])} and "
            f"{len(given['doses_e_per_A2'])} values: one of each per tilt series"
        )


@register_step(
    "tomo.sequence",
    input_kinds={"series": Kind("tilt")},
    inputs=("series",),
    list_inputs=("series",),
    outputs=("sequence",),
    output_kinds={"sequence": Kind("table")},
    params={
        "method": Param(
            str, "sirt", "algorithm", choices=("fbp", "wbp", "sirt", "sart", "cgls", "tv", "dart")
        ),
        "n_iter": Param(int, 100, "iterations of the first time point (iterative methods)", min=1),
        "n_iter_warm": Param(
            int, None, "iterations after a warm start (default n_iter // 3)", min=1
        ),
        "warm_start": Param(bool, True, "start each time point from the previous volume"),
        "align": Param(
            bool,
            False,
            "align every series first, with the first one's tilt axis for all (slow; "
            "default: the series are aligned)",
        ),
        "facet_method": Param(
            str,
            "normals",
            "normals: mesh face areas (edges are 'other'); polyhedron: low-index polyhedron "
            "from the support distances (convex crystals only)",
            choices=("normals", "polyhedron"),
        ),
        "tolerance_deg": Param(
            float, 10.0, "largest normal–family angle, degrees", min=0.1, max=44.9
        ),
        "sigma_px": Param(
            float,
            None,
            "smoothing before meshing, voxels (default: from the first volume's noise, kept "
            "for all)",
            min=0.0,
        ),
        "n_classes": Param(int, 3, "2: background/crystal; 3: + Pb clusters", min=2, max=3),
        "track_orientation": Param(
            bool, True, "re-estimate the lattice orientation at every time point"
        ),
        "times_s": Param(
            list, None, "time of every series, s (default: from metadata)", item_type=float
        ),
        "doses_e_per_A2": Param(
            list,
            None,
            "cumulative dose of every series, e⁻/Å² (default: from metadata)",
            item_type=float,
        ),
        "x": Param(
            str,
            "auto",
            "horizontal axis of the figure (auto: dose, else time, else index)",
            choices=("auto", "cumulative_dose_e_per_A2", "time_s", "step"),
        ),
        "label": Param(str, "", "label in the report"),
    },
    check_together=_check_sequence,
    requires=(SEQUENCE, CHECK_SEQUENCE),
    section="facets",
    doc="4-D tomography: reconstruct a time sequence of tilt series of one crystal (warm "
    "started) and track its volume, facet fractions and lattice orientation.",
)
def tomo_sequence(ctx: Any, series: Any) -> dict[str, Any]:
    from perovstem.errors import ParameterError
    from perovstem.plot.fourd import plot_facet_evolution

    p = ctx.params
    items = list(series)
    if len(items) < 2:
        raise ParameterError(
            f"`series` needs at least 2 tilt series in time order, got {len(items)}; wire them "
            'as inputs = { series = ["t0", "t1", ...] }'
        )
    # items wired from other steps carry no file name (metadata["source"] is the file io.load
    # read, if any), so errors name the position in the wired list
    names = [f"`series[{k}]` (entry {k + 1} of the wired list)" for k in range(len(items))]
    api(CHECK_SEQUENCE)(items, names=names)
    for name, ts in zip(names, items, strict=True):
        axis = float(getattr(ts, "tilt_axis_deg", 0.0) or 0.0)
        if not p["align"] and abs(axis) > 1e-6:  # the API's refusal names a Python function
            raise ParameterError(
                f"{name}: its tilt axis is at {axis:.4g}° (from its file); the reconstruction "
                "needs it along the image x: set `align = true` or align it first (tomo.align)"
            )
    for key in ("times_s", "doses_e_per_A2"):
        v = p[key]
        if v is not None and (
            len(v) != len(items)
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        ):
            raise ParameterError(f"`{key}` must hold {len(items)} numbers, got {v!r}")
    for k, ts in enumerate(items):
        md = dict(ts.metadata or {})
        if p["times_s"] is not None:
            md["time_s"] = float(p["times_s"][k])
        if p["doses_e_per_A2"] is not None:
            md["cumulative_dose_e_per_A2"] = float(p["doses_e_per_A2"][k])
        items[k] = ts.replace(metadata=md)
    if p["align"]:
        align, apply_alignment = api(ALIGN), api(APPLY)
        axis: bool | float = True  # the first series' tilt axis for all (see tomo sequence)
        for k in ctx.track(range(len(items)), total=len(items), description="aligning"):
            al = align(items[k], tilt_axis=axis)
            axis = float(al.tilt_axis_deg)
            items[k] = apply_alignment(items[k], al)
    kw = {} if p["method"] in ("fbp", "wbp") else {"n_iter": p["n_iter"]}
    if p["n_iter_warm"] is not None and p["method"] not in ("fbp", "wbp"):
        kw["n_iter_warm"] = p["n_iter_warm"]
    table, _ = api(SEQUENCE)(
        items,
        method=p["method"],
        warm_start=p["warm_start"],
        n_classes=p["n_classes"],
        tolerance_deg=p["tolerance_deg"],
        sigma_px=p["sigma_px"],
        track_orientation=p["track_orientation"],
        facet_method=p["facet_method"],
        **kw,
    )
    label = p["label"] or ctx.step_id
    axs = plot_facet_evolution(table, x=p["x"], title=f"Facet evolution ({label})")
    first, last = table.iloc[0], table.iloc[-1]
    caption = (
        f"{len(table)} time points; {p['method']}, warm start {p['warm_start']}; facet method "
        f"{p['facet_method']}. Volume {first.volume_A3:.4g} → {last.volume_A3:.4g} Å³ "
        f"({100 * (last.volume_A3 / first.volume_A3 - 1):+.1f} %); lattice rotation from the "
        f"first time point {last.rotation_deg:.1f}°."
    )
    if p["facet_method"] == "normals":
        caption += (
            " Normals method: rounded edges and the missing wedge count as 'other' and bias "
            "the low-index fractions low; the trend is more reliable than the level."
        )
    else:
        cv = ", ".join(f"{c:.2f}" for c in table["convexity"])
        caption += f" Convexity (mesh / polyhedron volume) per time point: {cv}."
    ctx.figure("sequence", axs[0].figure, title=f"Facets over time ({label})", caption=caption)
    ctx.table("sequence", table, title=f"4-D sequence ({label})", max_rows=50)
    ctx.metric(
        f"volume change ({label})",
        float(last.volume_A3 - first.volume_A3),
        unit="Å³",
        caption=f"{len(table)} time points",
    )
    return {"sequence": table}
