"""Temporal gap filling of Pb-cluster detections over a series (hysteresis in time).

A Pb cluster persists and grows over many frames; in one frame of a degrading crystal
its count on the host-free map can collapse below ``min_atoms`` (the host under it read
negative) or its integrated excess fall just below the detection threshold, and
:func:`~perovstem.insitu.detect_clusters` drops it.  Host patches and noise peaks that
are dropped the same way are rarely *kept* detections at the same place in the
neighbouring frames.  :func:`temporal_clusters` keeps a dropped segment of frame k (the
second table of ``detect_clusters(..., return_candidates=True)``) when kept detections lie at the same sample position (after
the drift) in at least ``min_support`` of the frames k − w … k + w: the low threshold
of a hysteresis in time, as the spatial hysteresis of the detector keeps pixels above
half the threshold that touch a pixel above it (Canny, IEEE PAMI 8, 679 (1986)); in the
language of tracking, a track-before-detect step that lets a track's own history
confirm a weak measurement (Salmond & Birch, Proc. ACC 2001, 3755).

The count of a kept candidate is not its own (that collapsed count is why it was
dropped) but the median of the linked detections' counts in the window, with an error
that adds their median error and their spread (growth over the window) in quadrature.

Measured on the KMC series of ``benchmarks/bench_clusters.py`` (split mode, tune280
41–46, true drift): of the dropped segments that kept detections support in ≥ 2 of the
frames k − 2 … k + 2 (significance ≥ 3 where measured), 8 lie on a missed ≥ 10-atom
object, 6 on a < 10-atom one, 1 on a matched object and 0 on nothing; with ≥ 1 supporting
frame it was 21 / 26 / 4 / 15 (time separates them only with two frames of kept
support).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["temporal_clusters"]

PB_FCC_A = 4.95  # Å, fcc Pb lattice parameter (equal-volume cluster radius)

#: drop reasons of :data:`~perovstem.insitu.clusters.CANDIDATE_COLUMNS` that the pass
#: may keep (segments that were significant peaks of a cluster size or just below the
#: integrated threshold; not "peak", "texture", "compact")
TEMPORAL_REASONS = ("min_atoms", "significance", "host_patch")


def _drift_table(drift: Any, frames: np.ndarray) -> tuple[dict, set]:
    """{frame: (dx_A, dy_A)} and the frames whose drift is unreliable."""
    if drift is None:
        return {int(f): (0.0, 0.0) for f in frames}, set()
    if not isinstance(drift, pd.DataFrame) or not {"frame", "dx_A", "dy_A"} <= set(drift.columns):
        raise DataError(
            "`drift` must be a DataFrame with columns frame, dx_A, dy_A "
            "(register_drift's table), got "
            + (
                str(list(drift.columns))
                if isinstance(drift, pd.DataFrame)
                else type(drift).__name__
            )
        )
    sh = {
        int(f): (float(x), float(y))
        for f, x, y in zip(drift["frame"], drift["dx_A"], drift["dy_A"], strict=True)
    }
    bad = set()
    if "drift_reliable" in drift.columns:
        bad = {int(f) for f, ok in zip(drift["frame"], drift["drift_reliable"], strict=True)
               if not bool(ok)}  # fmt: skip
    bad |= {int(f) for f, (x, y) in sh.items() if not (np.isfinite(x) and np.isfinite(y))}
    missing = sorted(set(int(f) for f in frames) - set(sh))
    if missing:
        raise DataError(f"`drift` has no row for frame(s) {missing[:5]}")
    return sh, bad


def temporal_clusters(
    clusters: pd.DataFrame,
    candidates: pd.DataFrame,
    *,
    drift: pd.DataFrame | None = None,
    window: int = 2,
    min_support: int = 2,
    both_sides: bool = True,
    reach_A: float = 5.0,
    min_significance: float = 3.0,
    reasons: tuple[str, ...] = TEMPORAL_REASONS,
) -> pd.DataFrame:
    """Keep dropped cluster segments that kept detections confirm in neighbouring frames.

    Parameters
    ----------
    clusters : DataFrame
        Kept detections of a series (:func:`~perovstem.insitu.detect_clusters` of every
        frame, concatenated; at least ``frame, x_A, y_A, n_atoms, n_atoms_err``),
        positions in each frame's own coordinates (Å).
    candidates : DataFrame
        The dropped segments of the same frames (the second table of
        ``detect_clusters(..., return_candidates=True)``, concatenated;
        :data:`~perovstem.insitu.clusters.CANDIDATE_COLUMNS`).
    drift : DataFrame, optional
        ``frame, dx_A, dy_A`` (Å): the content of frame k lies at its frame-0 position plus
        ``(dx_A, dy_A)`` (:func:`~perovstem.insitu.register_drift`'s table).  A frame whose
        ``drift_reliable`` is False (or whose shift is not finite) neither gets nor gives
        support.  None: the positions are already registered.
    window : int
        Half width w of the window k − w … k + w of frames searched for support (≥ 1).
    min_support : int
        Smallest number of other frames in the window that hold a kept detection within
        ``reach_A`` of the candidate's position (≥ 1).  The first and last frames have
        a one-sided window (w frames), so they need the same number of supporting frames
        out of fewer.
    both_sides : bool
        The supporting frames must lie on both sides of frame k (an interpolation inside
        a track: a cluster seen before and after frame k was there in frame k).  One-sided
        support extrapolates before a cluster's birth or after it merged or vanished, and
        the first and last frames of the series are then never filled.
    reach_A : float
        Largest distance (Å) between the candidate and a supporting detection, after the
        drift (the scoring's match distance for a 10–40-atom cluster).
    min_significance : float
        Candidates whose integrated excess over its error is below this are not kept
        (the detector's hysteresis low threshold, ``threshold_sigma / 2``; candidates
        without a measured significance are not tested).
    reasons : tuple of str
        Drop reasons (the ``reason`` column) that may be kept.

    Returns
    -------
    DataFrame
        ``clusters`` with the kept candidates appended (sorted by frame, index reset), a
        bool column ``temporal`` (True for the rows this pass added) and ``n_support``
        (supporting frames; NaN for the detector's own rows).  An added row has the
        candidate's position, ``n_atoms`` the median count of the supporting detections
        (one per supporting frame, the nearest), ``n_atoms_err`` the hypot of their
        median ``n_atoms_err`` and their standard deviation, ``n_atoms_err_stat`` the
        same with their ``n_atoms_err_stat``, ``radius_A`` / ``area_A2`` / ``scs_A2``
        their medians and ``host_fraction`` the candidate's; columns without a
        counterpart are NaN.  ``attrs`` of ``clusters`` are kept.

    Notes
    -----
    A candidate within ``reach_A`` of a kept detection of its own frame is not kept (that
    cluster is already reported), and of several candidates of one frame within
    ``reach_A`` of each other only the one with the most support (then the highest
    significance) is.
    """
    refuse_text_numbers(locals())
    need = {"frame", "x_A", "y_A", "n_atoms", "n_atoms_err"}
    for name, df in (("clusters", clusters), ("candidates", candidates)):
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"`{name}` must be a DataFrame, got {type(df).__name__}")
        miss = sorted(need - set(df.columns))
        if miss:
            raise DataError(f"`{name}` lacks column(s) {miss} (has {list(df.columns)})")
    if "reason" not in candidates.columns:
        raise DataError(
            "`candidates` lacks column 'reason' (detect_clusters(..., return_candidates=True))"
        )
    for name, v in (("window", window), ("min_support", min_support)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ParameterError(f"`{name}` must be an integer >= 1, got {v!r}")
    window, min_support = int(window), int(min_support)
    check_positive("reach_A", reach_A)
    check_positive("min_significance", min_significance, allow_zero=True)
    out = clusters.copy()
    out["temporal"] = False
    out["n_support"] = np.nan
    frames = np.union1d(clusters["frame"].to_numpy(int), candidates["frame"].to_numpy(int))
    sh, bad = _drift_table(drift, frames)
    cand = candidates[candidates["reason"].isin(list(reasons))]
    if "significance" in cand.columns:
        sig = cand["significance"].to_numpy(float)
        cand = cand[~(sig < float(min_significance))]
    if len(cand) == 0 or len(clusters) == 0:
        return out.sort_values("frame", kind="stable").reset_index(drop=True)

    def sample_xy(df: pd.DataFrame) -> np.ndarray:
        s = np.array([sh[int(f)] for f in df["frame"]], float).reshape(-1, 2)
        return df[["x_A", "y_A"]].to_numpy(float) - s

    det_f = clusters["frame"].to_numpy(int)
    # a candidate within a kept detection's own reach in its frame is part of that
    # cluster: max(reach_A, R + 2 Å), R the equal-volume fcc radius of its count
    n_det = np.clip(np.nan_to_num(clusters["n_atoms"].to_numpy(float)), 0, None)
    own_reach = np.maximum(reach_A, (3 * n_det * PB_FCC_A**3 / (16 * np.pi)) ** (1 / 3) + 2.0)
    det_xy = sample_xy(clusters)
    by_frame = {int(f): np.flatnonzero(det_f == f) for f in np.unique(det_f)}
    c_xy = sample_xy(cand)
    c_f = cand["frame"].to_numpy(int)
    c_sig = cand["significance"].to_numpy(float) if "significance" in cand.columns else None
    picks: list[tuple[int, int, list[int]]] = []  # (candidate row, support, detection rows)
    for j in range(len(cand)):
        k = int(c_f[j])
        if k in bad:
            continue
        own = by_frame.get(k, np.zeros(0, int))
        if len(own) and np.any(np.hypot(*(det_xy[own] - c_xy[j]).T) < own_reach[own]):
            continue
        linked = []
        sides = set()
        for kk in range(k - window, k + window + 1):
            if kk == k or kk in bad or kk not in by_frame:
                continue
            idx = by_frame[kk]
            d = np.hypot(*(det_xy[idx] - c_xy[j]).T)
            if d.min() < reach_A:
                linked.append(int(idx[np.argmin(d)]))
                sides.add(kk > k)
        if len(linked) >= min_support and (len(sides) == 2 or not both_sides):
            picks.append((j, len(linked), linked))
    if not picks:
        return out.sort_values("frame", kind="stable").reset_index(drop=True)
    # one candidate per place and frame: most support, then most significant
    order = sorted(
        picks,
        key=lambda p: (-p[1], -(c_sig[p[0]] if c_sig is not None and np.isfinite(c_sig[p[0]])
                                else -np.inf)),
    )  # fmt: skip
    chosen: list[tuple[int, int, list[int]]] = []
    for p in order:
        if all(
            c_f[q[0]] != c_f[p[0]] or np.hypot(*(c_xy[q[0]] - c_xy[p[0]])) >= reach_A
            for q in chosen
        ):
            chosen.append(p)
    rows = []
    for j, n_sup, linked in chosen:
        sup = clusters.iloc[linked]
        n = sup["n_atoms"].to_numpy(float)
        spread = float(np.std(n, ddof=1)) if len(n) > 1 else 0.0
        row = {c: np.nan for c in clusters.columns}
        row.update(
            {
                "frame": int(c_f[j]),
                "x_A": float(cand["x_A"].iloc[j]),
                "y_A": float(cand["y_A"].iloc[j]),
                "n_atoms": float(np.median(n)),
                "n_atoms_err": float(np.hypot(np.median(sup["n_atoms_err"]), spread)),
                "temporal": True,
                "n_support": float(n_sup),
            }
        )
        if "n_atoms_err_stat" in sup.columns:
            row["n_atoms_err_stat"] = float(np.hypot(np.median(sup["n_atoms_err_stat"]), spread))
        if "npx" in sup.columns:
            row["npx"] = int(round(float(np.median(sup["npx"]))))
        for c in ("radius_A", "area_A2", "scs_A2", "scs_err_A2"):
            if c in sup.columns:
                row[c] = float(np.median(sup[c]))
        if "host_fraction" in cand.columns and "host_fraction" in clusters.columns:
            row["host_fraction"] = float(cand["host_fraction"].iloc[j])
        if "host_ok" in clusters.columns:
            row["host_ok"] = bool(np.all(sup["host_ok"].to_numpy(bool)))
        px = clusters.attrs.get("pixel_size_A")
        if px and "x_px" in clusters.columns:
            row["x_px"], row["y_px"] = row["x_A"] / px, row["y_A"] / px
        rows.append(row)
    add = pd.DataFrame(rows, columns=list(out.columns))
    add["temporal"] = add["temporal"].astype(bool)
    res = pd.concat([out, add], ignore_index=True)
    for c in ("frame", "npx"):
        if c in res.columns and not res[c].isna().any():
            res[c] = res[c].astype(clusters[c].dtype)
    if "host_ok" in res.columns:
        res["host_ok"] = res["host_ok"].astype(bool)
    res.attrs = dict(clusters.attrs)
    return res.sort_values("frame", kind="stable").reset_index(drop=True)
