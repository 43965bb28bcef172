"""Steps of perovstem.insitu: drift registration, dose bookkeeping, Pb-cluster detection."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, api, register_step

REGISTER = "perovstem.insitu:register_drift|perovstem.insitu.register:register_drift"
APPLY = "perovstem.insitu:apply_drift|perovstem.insitu.register:apply_drift"
DETECT = "perovstem.insitu:detect_clusters|perovstem.insitu.clusters:detect_clusters"
TRACK = "perovstem.insitu:track_clusters|perovstem.insitu.tracking:track_clusters"
EVENTS = "perovstem.insitu:lineage_events|perovstem.insitu.tracking:lineage_events"
NC_METRICS = "perovstem.insitu:nanocrystal_metrics|perovstem.insitu.nanocrystal:nanocrystal_metrics"


@register_step(
    "insitu.register",
    input_kinds={"series": Kind("series")},
    inputs=("series",),
    outputs=("drift", "series"),
    output_kinds={"drift": Kind("table", ("frame",)), "series": Kind("series")},
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


def _calibration(series: Any) -> dict[str, float]:
    """The series' detector calibration from its metadata: ``gain``/``offset`` where given."""
    md = series.metadata or {}
    return {key: float(md[key]) for key in ("gain", "offset") if md.get(key) is not None}


def _detect_frame(k: int, series: Any, *, params: dict[str, Any], image: Any = None) -> Any:
    """Detect clusters in frame ``k`` with the series' calibration (gain/offset metadata);
    ``image``: the frame already read (``series.frame(k)``)."""
    image = series.frame(k) if image is None else image
    calib = _calibration(series)
    return api(DETECT)(image, dose_e_per_A2=image.dose_e_per_A2, frame=k, **calib, **params)


def _redetect_frame(item: tuple[int, float], series: Any, *, params: dict[str, Any]) -> Any:
    """Detect frame ``item[0]`` again with the carried host ratio ``item[1]``."""
    k, kappa = item
    return _detect_frame(k, series, params={**params, "host_reference": kappa})


def _carry_host_reference(
    series: Any,
    per_frame: list[Any],
    params: dict[str, Any],
    *,
    map_frames: Callable[[Callable[..., Any], list[Any]], list[Any]] | None = None,
) -> list[Any]:
    """The host reference rule of ``analyze_series`` over the mapped detections, in frame
    order: a frame whose clusters cover the crystal (``"no_reference"``) is detected again
    with the host's empty-site ratio of the earlier frames where
    :class:`~perovstem.insitu._host.HostReference` says so, and flagged where it says so.

    The rule runs in frame order; the frames it detects again (a third of a small
    crystal's series) are then mapped like the first pass (serial or dask).  This gives
    the sequential result: a frame detected again with a valid ratio is a ``"lattice"``
    frame with ``host_reference_used``, which leaves the rule's state (lattice reference,
    measured ratios, "after a measured frame") as its first, ``"no_reference"`` detection
    does; the lattice is estimated before the host model, so both carry the same one.
    ``map_frames(func, items)``: ``[func(item, series) for item in items]`` (the default)
    or the step's ``ctx.map``."""
    from perovstem.insitu._host import HostReference

    calib = _calibration(series)
    gain, offset = calib.get("gain", 1.0), calib.get("offset", 0.0)
    host = HostReference(pixel_size_A=series.pixel_size_A)
    out: list[Any] = []
    again: list[tuple[int, float]] = []
    for k, det in enumerate(per_frame):
        if not host.needs_frame(det):  # (a lazy series' frames are not read again)
            out.append(host.update(det, None))
            continue
        image = series.frame(k)
        raw = np.asarray(image.data, float) - offset
        dose = image.dose_e_per_A2
        scale = None if dose is None else gain * float(dose)
        kappa = host.reference(det, raw, scale=scale)
        updated = host.update(det, raw, scale=scale)
        if kappa is None:
            out.append(updated)
        else:  # the state as after the frame detected again (docstring); result below
            again.append((k, kappa))
            out.append(None)
    if again:
        func = functools.partial(_redetect_frame, params=params)
        if map_frames is None:
            redone = [func(item, series) for item in again]
        else:
            redone = map_frames(func, again)
        for (k, _), det in zip(again, redone, strict=True):
            if det.attrs.get("host_model") == "no_reference":  # cannot happen (docstring)
                raise RuntimeError(f"frame {k}: detected again without its host ratio")
            out[k] = det
    return out


def _detect_in_order(
    series: Any, params: dict[str, Any], *, frames: Iterable[int] | None = None
) -> list[Any]:
    """Serial path of :func:`_carry_host_reference`: the frames in order, each detected
    once, with the ratio the rule would carry into it (:meth:`HostReference.ratio_to_carry`)
    passed as ``host_reference``.  ``detect_clusters`` uses it only where the frame cannot
    measure its own ratio ("no_reference" alone), exactly where the rule detects the frame
    again with that ratio; elsewhere the detection is the one without it.  The rule's state
    after a frame detected with the carried ratio is the one after its "no_reference"
    detection (neither measures kappa_h; same lattice), so the detections are the two-pass
    ones (test_cluster_host), without detecting a third of a small crystal's frames twice.
    ``frames``: ``range(series.n_frames)``, or it wrapped in a progress bar."""
    from perovstem.insitu._host import KAPPA_MAX, HostReference

    calib = _calibration(series)
    gain, offset = calib.get("gain", 1.0), calib.get("offset", 0.0)
    host = HostReference(pixel_size_A=series.pixel_size_A)
    out: list[Any] = []
    for k in range(series.n_frames) if frames is None else frames:
        image = series.frame(k)
        dose = image.dose_e_per_A2
        scale = None if dose is None else gain * float(dose)
        # (the rule reads the pixels on some frames only, as it decides; the frame is in
        # memory, and converting it costs < 1 % of its detection)
        raw = np.asarray(image.data, float) - offset
        kappa = host.ratio_to_carry(raw, scale=scale)
        if kappa is not None and not 0.0 <= kappa < KAPPA_MAX:
            kappa = None  # (refused by detect_clusters: the two-pass path below raises)
        opts = params if kappa is None else {**params, "host_reference": kappa}
        det = _detect_frame(k, series, params=opts, image=image)
        if det.attrs.get("host_reference_used", False):
            out.append(host.update(det, raw, scale=scale))
            continue
        again = host.reference(det, raw, scale=scale)
        updated = host.update(det, raw, scale=scale)
        if again is not None:
            updated = _redetect_frame((k, again), series, params=params)
            if updated.attrs.get("host_model") == "no_reference":  # cannot happen
                raise RuntimeError(f"frame {k}: detected again without its host ratio")
        out.append(updated)
    return out


@register_step(
    "insitu.clusters",
    input_kinds={"series": Kind("series")},
    inputs=("series",),
    optional_inputs=("truth",),
    outputs=("detections", "counts"),
    output_kinds={"detections": Kind("table", ("frame",)), "counts": Kind("table", ("frame",))},
    params={
        "threshold_sigma": Param(float, 6.0, "detection threshold, noise σ", min=0.5),
        "min_atoms": Param(float, 5.0, "smallest cluster kept, atoms", min=0.0),
        "max_diameter_A": Param(float, 16.0, "largest cluster diameter, Å", min=1.0),
        "max_step_A": Param(
            float, 8.0, "largest displacement between frames (tracking), Å", min=0.1
        ),
    },
    requires=(DETECT,),
    section="kinetics",
    doc="Pb-cluster detection and atom counting in every frame (mapped over frames, serial or "
    "dask), tracking with merges, and births/clusters/Pb⁰ atoms per frame vs dose.",
)
def insitu_clusters(ctx: Any, series: Any, truth: Any = None) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    p = ctx.params
    det_params = {k: p[k] for k in ("threshold_sigma", "min_atoms", "max_diameter_A")}
    serial = getattr(ctx, "maps_serially", None)  # (a bare context maps only)
    if serial is not None and serial(series.n_frames):
        # in frame order, each frame once with the host ratio the rule carries into it
        n = series.n_frames
        frames = ctx.track(range(n), total=n, description="cluster detection")
        per_frame = _detect_in_order(series, det_params, frames=frames)
    else:
        per_frame = ctx.map(
            functools.partial(_detect_frame, params=det_params),
            range(series.n_frames),
            shared=series,
            description="cluster detection",
        )
        # the frames are detected independently (mapped); the host reference of the earlier
        # frames is carried in frame order afterwards (the frames it detects again are
        # mapped too)
        per_frame = _carry_host_reference(
            series,
            list(per_frame),
            det_params,
            map_frames=lambda func, items: ctx.map(
                func, items, shared=series, description="cluster detection, carried host ratio"
            ),
        )
    detections = pd.concat(per_frame, ignore_index=True)
    if "frame" not in detections.columns:
        detections["frame"] = np.repeat(np.arange(len(per_frame)), [len(d) for d in per_frame])
    frames = series.frames_table()
    idx = frames["frame"]
    g = detections.groupby("frame")
    counts = frames.assign(n_clusters=g.size().reindex(idx, fill_value=0).to_numpy())
    has_counts = "n_atoms" in detections.columns and detections["n_atoms"].notna().any()
    if "n_atoms" in detections.columns:
        # min_count: without a dose the clusters have no atom counts -> NaN, not 0 atoms
        counts["n_Pb0_detected"] = (
            g["n_atoms"].sum(min_count=1).reindex(idx, fill_value=0).to_numpy()
        )
    try:
        size = {} if has_counts or "area_A2" not in detections else {"size_column": "area_A2"}
        tracks, lineage = api(TRACK)(detections, max_step_A=p["max_step_A"], **size)
        events = api(EVENTS)(lineage, frames)
        births = events[events["kind"] == "birth"].groupby("frame").size()
        merges = events[events["kind"] == "merge"].groupby("frame").size()
        counts["cumulative_births"] = np.cumsum(births.reindex(idx, fill_value=0).to_numpy())
        counts["cumulative_merges"] = np.cumsum(merges.reindex(idx, fill_value=0).to_numpy())
        detections = tracks
        ctx.metric(
            f"clusters nucleated ({ctx.step_id})",
            float(counts["cumulative_births"].iloc[-1]),
            caption="tracked cluster births over the series",
            section="kinetics",
        )
    except ImportError:
        pass
    from perovstem.insitu.analysis import imaging_check
    from perovstem.insitu.lattice import FOURFOLD_MIN

    # a host that is not a [001] projection (the step counted its columns as Pb0, silently),
    # else imaging outside the range on-crystal detection was validated for: in the report
    ratio, sigma, note = imaging_check(series.frame(0).data, series.pixel_size_A)
    if ratio < FOURFOLD_MIN:
        counts.attrs["host_not_001"] = {"frame": 0, "ratio": ratio}
        ctx.text(note, section="kinetics", title=f"Host lattice ({ctx.step_id})")
    else:
        counts.attrs["column_sigma_A"] = sigma
        if note:
            ctx.text(note, section="kinetics", title=f"Imaging ({ctx.step_id})")
    if isinstance(truth, dict) and "clusters" in truth:
        tc = truth["clusters"]
        if "in_view" in tc.columns:
            tc = tc[tc["in_view"].astype(bool)]
        counts["n_clusters_truth"] = (
            tc.groupby("frame").size().reindex(idx, fill_value=0).to_numpy()
        )
        if "n_atoms" in tc.columns:
            counts["n_Pb0_clusters_truth"] = (
                tc.groupby("frame")["n_atoms"].sum().reindex(idx, fill_value=0).to_numpy()
            )
        err = counts["n_clusters"] - counts["n_clusters_truth"]
        ctx.metric(
            f"cluster-count error vs truth ({ctx.step_id})",
            float(np.mean(np.abs(err))),
            caption="mean |detected − simulated| clusters per frame",
            section="kinetics",
        )
    from perovstem.plot.overview import plot_xy

    ys = [
        c
        for c in ("n_clusters", "n_clusters_truth", "cumulative_births", "cumulative_merges")
        if c in counts
    ]
    ax = plot_xy(counts, "cumulative_dose_e_per_A2", ys, marker=".", ylabel="number")
    ctx.figure(
        "clusters",
        ax.figure,
        title=f"Detected Pb clusters ({ctx.step_id})",
        caption="Clusters per frame, cumulative births and merges (tracking) versus "
        "cumulative dose.",
    )
    return {"detections": detections, "counts": counts}


@register_step(
    "insitu.nanocrystal",
    input_kinds={"series": Kind("series")},
    inputs=("series",),
    outputs=("metrics",),
    output_kinds={"metrics": Kind("table", ("frame",))},
    params={"lattice_A": Param(float, 5.87, "pseudo-cubic lattice parameter, Å", min=1.0)},
    requires=(NC_METRICS,),
    section="kinetics",
    doc="Nanocrystal outline per frame: projected area, shrinkage, voids, phase (FFT check).",
)
def insitu_nanocrystal(ctx: Any, series: Any) -> dict[str, Any]:
    metrics = api(NC_METRICS)(series, lattice_A=ctx.params["lattice_A"])
    dose = series.cumulative_dose_e_per_A2
    if dose is not None and "frame" in metrics.columns:
        metrics = metrics.assign(cumulative_dose_e_per_A2=dose[metrics["frame"].to_numpy()])
    from perovstem.plot.overview import plot_xy

    x = "cumulative_dose_e_per_A2" if "cumulative_dose_e_per_A2" in metrics else "frame"
    if "shrinkage" in metrics.columns:
        ax = plot_xy(metrics, x, ["shrinkage"], marker=".", ylabel="shrinkage (1 − A/A₀)")
        ctx.figure(
            "shrinkage",
            ax.figure,
            title=f"Nanocrystal shrinkage ({ctx.step_id})",
            caption="Projected-area loss of the nanocrystal versus cumulative dose.",
        )
        _report_area_change(ctx, metrics)
    return {"metrics": metrics}


AREA_CHANGE = "perovstem.insitu:area_change|perovstem.insitu.nanocrystal:area_change"


def _report_area_change(ctx: Any, metrics: Any) -> None:
    """Area change first → last frame with its noise; shrinkage only when significant."""
    from perovstem.errors import PerovstemError

    try:
        ch = api(AREA_CHANGE)(metrics)
    except (ImportError, AttributeError, PerovstemError):
        return
    ctx.metric(
        f"projected-area change ({ctx.step_id})",
        ch["delta_area_A2"] / 100.0,
        err=ch["delta_area_err_A2"] / 100.0 if np.isfinite(ch["delta_area_err_A2"]) else None,
        unit="nm²",
        section="kinetics",
        caption="last − first usable frame, ±1σ segmentation noise (from the frame-to-frame "
        "scatter of the area)",
    )
    if ch["significant"]:
        ctx.metric(
            f"final shrinkage ({ctx.step_id})",
            100.0 * ch["shrinkage"],
            err=100.0 * ch["shrinkage_err"],
            unit="%",
            section="mechanism",
            caption="projected-area loss at the end of the series (> 2σ of the noise), ±1σ",
        )
    else:  # within noise (or an increase): no shrinkage number is reported
        ctx.text(f"Nanocrystal ({ctx.step_id}): {ch['text']}.", section="mechanism")
