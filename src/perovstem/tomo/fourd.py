"""4-D (time-resolved) tomography: a sequence of tilt series along a degradation trajectory."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import TiltSeries
from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["reconstruct_sequence", "check_sequence"]


def check_sequence(series: Any, *, names: Sequence[str] | None = None) -> list[TiltSeries]:
    """Check that tilt series can form one 4-D sequence and return them as a list.

    Every time point must be a :class:`~perovstem.TiltSeries` with the shape, tilt angles
    (within 0.05°), pixel size (within 0.1 %) and tilt-axis direction (within 0.5°) of the
    first: warm starts reuse the previous volume voxel for voxel, and a different angle set
    or sampling would change the missing-wedge bias from one time point to the next.

    Parameters
    ----------
    series : sequence of TiltSeries
    names : sequence of str, optional
        Labels used in error messages (e.g. file names); default ``series[k]``.

    Raises
    ------
    ParameterError
        Names the offending time point, the value and the expected one; no time point at
        all, or one TiltSeries instead of a list of them.
    """
    refuse_text_numbers(locals())
    if isinstance(series, TiltSeries) or isinstance(series, (str, bytes)):
        raise ParameterError(
            f"`series` must be a list of TiltSeries (one per time point), got "
            f"{type(series).__name__}"
        )
    try:
        items = list(series)
    except TypeError:
        raise ParameterError(
            f"`series` must be a list of TiltSeries (one per time point), got "
            f"{type(series).__name__}"
        ) from None
    if not items:  # returned [] and a 4-D reconstruction of nothing went on
        raise ParameterError("`series` is empty: give at least one TiltSeries (time point)")
    labels = (
        [str(n) for n in names]
        if names is not None
        else [f"`series[{k}]`" for k in range(len(items))]
    )
    if len(labels) != len(items):
        raise ParameterError(f"`names` has {len(labels)} entries for {len(items)} series")
    for k, ts in enumerate(items):
        if not isinstance(ts, TiltSeries):
            raise ParameterError(f"{labels[k]} must be a TiltSeries, got {type(ts).__name__}")
    ref, first = items[0], labels[0]
    for k, ts in enumerate(items[1:], start=1):
        if ts.shape != ref.shape:
            raise ParameterError(
                f"{labels[k]} has shape {ts.shape} (angles, rows, columns), expected "
                f"{ref.shape} like {first}"
            )
        d = np.abs(ts.angles_deg - ref.angles_deg)
        if np.any(d > 0.05):
            j = int(np.argmax(d))
            raise ParameterError(
                f"{labels[k]} has tilt angle {ts.angles_deg[j]:.4g}° at projection {j}, "
                f"expected {ref.angles_deg[j]:.4g}° like {first} (every time point needs the "
                "same tilt angles)"
            )
        if abs(ts.pixel_size_A / ref.pixel_size_A - 1.0) > 1e-3:
            raise ParameterError(
                f"{labels[k]} has pixel size {ts.pixel_size_A:.6g} Å, expected "
                f"{ref.pixel_size_A:.6g} Å like {first}"
            )
        if abs(ts.tilt_axis_deg - ref.tilt_axis_deg) > 0.5:
            raise ParameterError(
                f"{labels[k]} has tilt axis {ts.tilt_axis_deg:.4g}°, expected "
                f"{ref.tilt_axis_deg:.4g}° like {first} (align every series the same way)"
            )
    return items


def _normal_summary(mesh: Any, step_deg: float = 1.0) -> Any:
    """The mesh's normals binned on a ~``step_deg`` grid (area-weighted mean normal and summed
    area per bin), as a SurfaceMesh for the orientation functions, which use only normals
    and areas.  Their cost grows with the number of faces (Nelder–Mead evaluates every
    face hundreds of times: 20 k faces took 1–2 s per time point, a 256³ volume would take
    minutes); the bins cap it at ~4π/step² ≈ 41 k and are far fewer on faceted crystals,
    while the binning error (≤ step/2) is below the 5° kernel of the final refinement."""
    from perovstem.tomo.surface import SurfaceMesh

    n = np.asarray(mesh.normals, float)
    w = np.asarray(mesh.areas_A2, float)
    q = 1.0 / np.deg2rad(step_deg)
    _, first, inv = np.unique(
        np.round(n * q).astype(np.int64), axis=0, return_index=True, return_inverse=True
    )
    inv = inv.ravel()
    sums = np.zeros((len(first), 3))
    np.add.at(sums, inv, n * w[:, None])
    norm = np.linalg.norm(sums, axis=1)
    ok = norm > 0
    return SurfaceMesh(
        mesh.vertices_A,
        np.asarray(mesh.faces)[first[ok]],
        sums[ok] / norm[ok, None],
        np.bincount(inv, weights=w, minlength=len(first))[ok],
        mesh.volume_A3,
        mesh.level,
    )


def _number(value: Any) -> float:
    """A metadata value as float; NaN when absent or not a number (0 stays 0: `x or nan`
    turned a first time point at t = 0 s into NaN)."""
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def reconstruct_sequence(
    series: Any,
    *,
    method: str = "sirt",
    n_iter: int = 100,
    n_iter_warm: int | None = None,
    warm_start: bool = True,
    n_classes: int = 3,
    tolerance_deg: float = 10.0,
    orientation: Any = None,
    calibration: Any = None,
    sigma_px: float | None = None,
    track_orientation: bool = True,
    facet_method: str = "normals",
    return_volumes: bool = False,
    reconstruct_kwargs: dict | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Reconstruct and quantify every time point of a 4-D tomography experiment.

    Each tilt series is reconstructed (``method``); with ``warm_start`` the previous volume
    is the starting point and only ``n_iter_warm`` iterations (default ``n_iter // 3``) are
    run (SIRT/SART/CGLS/TV), exploiting the small change between time points.  Each volume is
    segmented into ``n_classes`` classes by multi-Otsu (background / crystal / Pb clusters)
    and meshed at the higher of the lower multi-Otsu and the 2-class Otsu threshold; facet
    fractions use the lattice orientation of each time point.

    Orientation tracking: a crystal can turn on its support between time points (beam-induced
    rotation), and classifying its facets with the orientation of an earlier time point
    misassigns them.  With ``track_orientation`` the orientation is estimated at every time
    point (:func:`~perovstem.tomo.estimate_orientation`) and expressed as the cubic-symmetry
    equivalent nearest the previous one (continuity); the new estimate replaces the previous
    orientation only if it explains at least as much surface area with {100}/{110}/{111}
    normals (a rounded, late-stage crystal gives poor estimates; then the previous one is kept).

    Parameters
    ----------
    series : sequence of TiltSeries
        Aligned tilt series (axis along x) in time order, with the same shape, tilt angles
        and pixel size (:func:`check_sequence`); metadata may carry ``time_s``,
        ``dose_e_per_A2`` and ``cumulative_dose_e_per_A2``.
    orientation : (3, 3) array_like, optional
        Crystal → lab rotation at the first time point (e.g. from HRSTEM); estimated when None.
    sigma_px : float, optional
        Gaussian smoothing before meshing, voxels.  Default: from the first time point's
        noise (:func:`~perovstem.tomo.mesh_sigma_px`), kept for all time points so that a
        change of the facet fractions is not a change of smoothing.
    track_orientation : bool
        Re-estimate the orientation at every time point (see above); False keeps the first
        one for all time points.
    facet_method : {"normals", "polyhedron"}
        See :func:`~perovstem.tomo.facet_fractions` (``calibration`` applies to "normals").
    on_step : callable, optional
        Called as ``on_step(k, row)`` after time point ``k`` with its table row (progress).

    Returns
    -------
    table : DataFrame
        step, time_s, cumulative_dose_e_per_A2, n_iter, volume_A3 (crystal + clusters),
        cluster_volume_A3 (NaN where the clusters do not form a grey-level class of their
        own, i.e. the top multi-Otsu class is most of the object), surface_A2, n_particles (mesh parts with ≥ 5 % of the area; with
        several, and no ``orientation`` given, every particle is classified with its own
        orientation and the largest one's is tracked), rotation_deg (misorientation from the
        first time point, degrees), volume_noise (:func:`~perovstem.tomo.volume_noise`),
        frac_100, frac_110, frac_111, frac_other (calibrated when
        ``calibration`` is given, with the calibration scatter as err_100 … err_other),
        wedge_100, wedge_110, wedge_111 (area fraction of that family's normals in the
        missing wedge: under-counted), and with ``facet_method="polyhedron"`` convexity (mesh
        volume over polyhedron volume of the largest particle; well below 1: the polyhedron
        does not describe it).  ``attrs["orientations"]``: the orientation used at every
        time point; ``attrs["sigma_px"]``: the smoothing used.
    volumes : list of ndarray
        Reconstructions (empty unless ``return_volumes``).
    """
    refuse_text_numbers(locals())
    from perovstem.tomo.facets import (
        _face_components,
        estimate_orientation,
        facet_fractions,
        mesh_sigma_px,
        misorientation_deg,
        nearest_equivalent,
        refine_orientation,
        volume_noise,
    )
    from perovstem.tomo.reconstruct import reconstruct
    from perovstem.tomo.segment import multi_otsu_thresholds, otsu_threshold
    from perovstem.tomo.surface import surface_mesh

    if facet_method not in ("normals", "polyhedron"):
        raise ParameterError(
            f"`facet_method` must be 'normals' or 'polyhedron', got {facet_method!r}"
        )
    if facet_method == "polyhedron" and calibration is not None:
        raise ParameterError("`calibration` corrects the 'normals' facet method, not 'polyhedron'")
    items = check_sequence(series)
    if not items:
        raise ParameterError("`series` is empty")
    n_warm = int(n_iter_warm if n_iter_warm is not None else max(1, n_iter // 3))
    rows, vols = [], []
    prev = None
    rot = None if orientation is None else np.asarray(orientation, float)
    if rot is not None and (
        rot.shape != (3, 3) or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3)
    ):
        raise ParameterError(f"`orientation` must be a 3×3 rotation matrix, got {orientation!r}")
    rot0 = rot
    rots = []
    for k, ts in enumerate(items):
        kw = dict(reconstruct_kwargs or {})
        warm = warm_start and prev is not None and method in ("sirt", "sart", "cgls", "tv")
        if warm:
            kw["x0"] = prev
        if method not in ("fbp", "wbp"):  # direct methods take no iteration count
            kw["n_iter"] = n_warm if warm else int(n_iter)
        rec = reconstruct(ts, method=method, **kw)
        v = rec.volume
        prev = v
        px = ts.pixel_size_A
        # surface: never below the 2-class (background / object) Otsu threshold.  The lower
        # multi-Otsu boundary falls below the object when the classes split something else:
        # the blur shell when the inclusions are too small to form a class (+14-20 % volume on
        # 2 of 3 tune seeds), FBP's negative lobes vs background (3× the volume)
        level = otsu_threshold(v)
        try:
            th = multi_otsu_thresholds(v, n_classes=n_classes)
            level = max(level, float(th[0]))
        except ValueError:  # fewer grey levels than classes (a DART volume has 2)
            th = np.array([level])
        # clusters: the top class, when it is a minority of the object (else it is the crystal)
        n_obj = np.count_nonzero(v > level)
        clusters_resolved = (
            n_classes > 2
            and len(th) > 1
            and th[-1] > level
            and np.count_nonzero(v > th[-1]) <= 0.5 * n_obj
        )
        v3 = px**3
        noise = volume_noise(v)
        if sigma_px is None:  # one smoothing for the whole sequence, from its first volume
            sigma_px = mesh_sigma_px(noise=noise)
        mesh = surface_mesh(v, voxel_size_A=px, level=level, sigma_px=sigma_px)
        nm = _normal_summary(mesh)  # normals only, for the orientation search (fast)
        if rot is None:
            rot = estimate_orientation(nm)
            if track_orientation:
                rot = refine_orientation(nm, rot)[0]
        elif track_orientation and k > 0:
            # continuity: refine the previous orientation; a fresh estimate competes (large
            # turns between time points), as the equivalent nearest the previous one
            cands = [refine_orientation(nm, rot)]
            try:
                cands.append(
                    refine_orientation(nm, nearest_equivalent(estimate_orientation(nm), rot))
                )
            except DataError:
                pass
            rot = max(cands, key=lambda c: c[1])[0]
        # several particles in the field: each has its own lattice (one orientation for two
        # differently oriented cubes gave {100} 0.37 instead of 1); then every particle's
        # orientation is estimated at every time point and the largest one's is tracked
        comp_area = np.bincount(_face_components(mesh), weights=mesh.areas_A2)
        n_part = int(np.count_nonzero(comp_area >= 0.05 * comp_area.sum()))
        several = n_part > 1 and orientation is None
        ff = facet_fractions(
            mesh,
            orientation=None if several else rot,
            tolerance_deg=tolerance_deg,
            tilt_range_deg=float(np.max(np.abs(ts.angles_deg))),
            calibration=calibration,
            method=facet_method,
        )
        if several:
            largest = np.asarray(ff.attrs["orientation"], float)
            rot = largest if k == 0 else nearest_equivalent(largest, rot)
        if rot0 is None:
            rot0 = rot
        rots.append(rot)
        col = "fraction_corrected" if calibration is not None else "fraction"
        fr = ff.set_index("family")[col]
        md = ts.metadata or {}
        extra: dict[str, float] = {}
        if calibration is not None:
            err = ff.set_index("family")["fraction_err"]
            extra.update({f"err_{f}": float(err[f]) for f in ("100", "110", "111", "other")})
        wf = ff.set_index("family")["wedge_fraction"]
        extra.update({f"wedge_{f}": float(wf[f]) for f in ("100", "110", "111")})
        if facet_method == "polyhedron":
            cv = ff.attrs.get("convexity") or [np.nan]
            extra["convexity"] = float(cv[0])
        rows.append(
            {
                "step": k,
                "time_s": _number(md.get("time_s")),
                "cumulative_dose_e_per_A2": _number(md.get("cumulative_dose_e_per_A2")),
                "n_iter": rec.n_iter,
                "volume_A3": mesh.volume_A3,
                "cluster_volume_A3": float(np.count_nonzero(v > th[-1]) * v3)
                if clusters_resolved
                else np.nan,
                "surface_A2": mesh.area_A2,
                "n_particles": n_part,
                "rotation_deg": misorientation_deg(rot, rot0),
                "volume_noise": noise,
                "frac_100": fr["100"],
                "frac_110": fr["110"],
                "frac_111": fr["111"],
                "frac_other": fr["other"],
                **extra,
            }
        )
        if on_step is not None:
            on_step(k, rows[-1])
        if return_volumes:
            vols.append(v)
    df = pd.DataFrame(rows)
    cal_noise = float((getattr(calibration, "settings", None) or {}).get("volume_noise", np.nan))
    if np.isfinite(cal_noise) and df["volume_noise"].max() > 1.5 * cal_noise:
        # as `tomo facets --calibrate`: the phantoms' bias holds for volumes as noisy as theirs
        worst = int(df["volume_noise"].idxmax())
        warnings.warn(
            f"time point {worst} is noisier than the calibration phantoms (relative noise "
            f"{df['volume_noise'].iloc[worst]:.3g} against {cal_noise:.3g}, "
            "perovstem.tomo.volume_noise): its calibrated fractions are still biased "
            "(towards 'other') and their errors too small",
            UserWarning,
            stacklevel=2,
        )
    df.attrs.update(
        method=method,
        warm_start=warm_start,
        orientation=None if rot0 is None else rot0.tolist(),
        orientations=[r.tolist() for r in rots],
        facet_method=facet_method,
        sigma_px=None if sigma_px is None else float(sigma_px),
        units={"volume_A3": "A^3", "surface_A2": "A^2", "cumulative_dose_e_per_A2": "e-/A^2"},
    )
    return df, vols
