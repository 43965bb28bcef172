"""Scoring of cluster detections and tracked merges against a simulated truth.

Detections (:func:`projected_objects`, :func:`match_objects`): truth clusters whose
projected equal-volume discs overlap cannot be told apart in one projection and are one
*projected object*; detections are paired with objects one-to-one within
``max(5 Å, r + 2 Å)`` of the object's centre.

Merges:

The truth is the per-frame cluster table and the event table of
:func:`perovstem.simulate.degradation_kmc` (``clusters``: ``frame, cluster_id, x_A, y_A,
n_atoms``; ``events``: ``frame, kind, cluster_id, parents``).  A coalescence in the truth
can chain within one frame (A + B → C, C + D → E before the frame is recorded); it is
observable only as the product of that frame and its *ancestors* present in the previous
frame.

Criteria (:func:`merge_matches`):

* identifiable merge: a truth product with at least two ancestors of at least
  ``min_parent_atoms`` atoms, each within ``r_product + r_parent + contact_margin_A`` of the
  product (equal-volume fcc radii; a cluster that vanishes farther away cannot be
  attributed from frames).  With ``require_detected`` (images), the product and those
  ancestors must also be detected, i.e. carry their truth ``cluster_id`` in ``tracks``
  (see :func:`match_clusters`);
* found: the track holding the product starts at that frame with ``origin == "merge"``;
* true detected merge: the first detection of a merge track is a truth coalescence
  product of that frame (any ancestor sizes).

:func:`merge_scores` sums these into recall (found / identifiable) and precision (true /
detected merges).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "match_clusters",
    "match_objects",
    "merge_matches",
    "merge_scores",
    "interval_verdict",
    "projected_objects",
    "ratio_interval",
    "score_detections",
]

_MATCH_COLUMNS = [
    "source",
    "frame",
    "cluster_id",
    "track_id",
    "identifiable",
    "matched",
    "parents",
    "parents_ok",
]


def _radius_A(n: np.ndarray) -> np.ndarray:
    """Equal-volume radius of an fcc Pb cluster of ``n`` atoms (a = 4.95 Å), Å."""
    return (3 * np.clip(np.asarray(n, float), 0, None) * 4.95**3 / (16 * np.pi)) ** (1 / 3)


def _need(df: pd.DataFrame, name: str, cols: Iterable[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"`{name}` must be a DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"`{name}` lacks column(s) {missing} (has {list(df.columns)})")


def match_clusters(
    detections: pd.DataFrame,
    truth_clusters: pd.DataFrame,
    *,
    margin_A: float = 3.0,
    min_atoms: float = 3.0,
) -> pd.DataFrame:
    """Label detections with the truth cluster they show (one-to-one within each frame).

    Per frame, detections and truth clusters of at least ``min_atoms`` atoms are paired by
    a minimum-total-distance assignment (Hungarian algorithm, Kuhn, Naval Res. Logist. Q.
    2, 83 (1955)) among pairs closer than ``r_truth + margin_A``.

    Parameters
    ----------
    detections : DataFrame
        ``frame, x_A, y_A`` per detection (e.g. :func:`detect_clusters` output).
    truth_clusters : DataFrame
        ``frame, cluster_id, x_A, y_A, n_atoms`` (the simulator's truth table).
    margin_A : float
        Largest centre distance beyond the truth cluster's equal-volume radius, Å.
    min_atoms : float
        Truth clusters smaller than this (atoms) are not matched.

    Returns
    -------
    DataFrame
        ``detections`` (index reset) with ``cluster_id``: the matched truth id, -1 if none.
    """
    refuse_text_numbers(locals())
    from scipy.optimize import linear_sum_assignment

    _need(detections, "detections", ["frame", "x_A", "y_A"])
    _need(truth_clusters, "truth_clusters", ["frame", "cluster_id", "x_A", "y_A", "n_atoms"])
    margin_A = check_positive("margin_A", margin_A, allow_zero=True)
    check_positive("min_atoms", min_atoms, allow_zero=True)
    det = detections.reset_index(drop=True).copy()
    cid = np.full(len(det), -1, dtype=int)
    truth = truth_clusters[truth_clusters.n_atoms >= min_atoms]
    t_of = dict(iter(truth.groupby("frame")))
    for f, g in det.groupby("frame"):
        t = t_of.get(f)
        if t is None:
            continue
        d = np.hypot(
            g.x_A.to_numpy(float)[:, None] - t.x_A.to_numpy(float)[None],
            g.y_A.to_numpy(float)[:, None] - t.y_A.to_numpy(float)[None],
        )
        c = np.where(d <= _radius_A(t.n_atoms.to_numpy())[None] + margin_A, d, 1e9)
        for i, j in zip(*linear_sum_assignment(c), strict=True):
            if c[i, j] < 1e9:
                cid[g.index[i]] = int(t.cluster_id.iloc[j])
    det["cluster_id"] = cid
    return det


def merge_matches(
    tracks: pd.DataFrame,
    lineage: pd.DataFrame,
    truth_clusters: pd.DataFrame,
    truth_events: pd.DataFrame,
    *,
    min_parent_atoms: float = 10.0,
    contact_margin_A: float = 8.0,
    require_detected: bool = False,
) -> pd.DataFrame:
    """Pair detected merges (:func:`track_clusters`) with the truth coalescences.

    Parameters
    ----------
    tracks, lineage : DataFrame
        Output of :func:`perovstem.insitu.track_clusters`; ``tracks`` must carry the truth
        ``cluster_id`` of each detection (-1 for a detection of no truth cluster).
    truth_clusters : DataFrame
        ``frame, cluster_id, x_A, y_A, n_atoms`` (truth per frame).
    truth_events : DataFrame
        ``frame, kind, cluster_id, parents``; rows with ``kind == "merge"`` are used.
    min_parent_atoms : float
        Ancestor size (truth atoms) for a merge to count as identifiable.
    contact_margin_A : float
        Largest gap between the product's and an ancestor's equal-volume surfaces, Å.
    require_detected : bool
        Identifiable only if the product and those ancestors are detected.

    Returns
    -------
    DataFrame
        One row per truth coalescence product (``source == "truth"``) and per detected merge
        (``"detected"``): ``frame, cluster_id`` (truth id of the product; for a detected
        merge that of its first detection), ``track_id`` (track holding it, -1 if not
        detected), ``identifiable`` (truth rows), ``matched`` (truth: found; detected: a
        truth product), ``parents`` (truth ancestors in the previous frame, or the
        lineage's parent tracks) and ``parents_ok`` (truth rows: found with exactly the
        tracks that held the identifiable ancestors as parents).
    """
    refuse_text_numbers(locals())
    _need(tracks, "tracks", ["frame", "cluster_id", "track_id"])
    _need(lineage, "lineage", ["track_id", "origin", "start_frame", "parents"])
    _need(truth_clusters, "truth_clusters", ["frame", "cluster_id", "x_A", "y_A", "n_atoms"])
    _need(truth_events, "truth_events", ["frame", "kind", "cluster_id", "parents"])
    check_positive("min_parent_atoms", min_parent_atoms, allow_zero=True)
    check_positive("contact_margin_A", contact_margin_A, allow_zero=True)
    lin = lineage.set_index("track_id")
    ev = truth_events[truth_events.kind == "merge"]
    parents = {int(r.cluster_id): [int(p) for p in r.parents] for r in ev.itertuples()}
    at = {
        (int(r.frame), int(r.cluster_id)): (float(r.x_A), float(r.y_A), float(r.n_atoms))
        for r in truth_clusters.itertuples()
    }
    tid_at = {
        (int(f), int(c)): int(t)
        for f, c, t in zip(tracks.frame, tracks.cluster_id, tracks.track_id, strict=True)
        if c >= 0
    }

    def ancestors(c: int, f: int) -> set[int]:
        if (f - 1, c) in at:
            return {c}
        return set().union(*(ancestors(p, f) for p in parents.get(c, ())))

    rows, products = [], set()
    for r in ev.itertuples():
        f, c = int(r.frame), int(r.cluster_id)
        if (f, c) not in at or f == 0:
            continue
        anc = sorted(ancestors(c, f))
        if len(anc) < 2:
            continue
        products.add((f, c))
        x, y, n = at[(f, c)]
        big = [p for p in anc if at[(f - 1, p)][2] >= min_parent_atoms]
        near = all(
            np.hypot(at[(f - 1, p)][0] - x, at[(f - 1, p)][1] - y)
            <= _radius_A(n) + _radius_A(at[(f - 1, p)][2]) + contact_margin_A
            for p in big
        )
        ident = len(big) >= 2 and near
        if require_detected:
            ident = ident and (f, c) in tid_at and all((f - 1, p) in tid_at for p in big)
        tid = tid_at.get((f, c), -1)
        found = (
            tid >= 0 and lin.loc[tid, "origin"] == "merge" and int(lin.loc[tid, "start_frame"]) == f
        )
        ptracks = {tid_at.get((f - 1, p), -1) for p in big}
        pok = bool(found and set(lin.loc[tid, "parents"]) == ptracks)
        rows.append(("truth", f, c, tid, bool(ident), bool(found), anc, pok))
    first = tracks.sort_values("frame", kind="stable").drop_duplicates("track_id")
    first = first.set_index("track_id")
    for tid, r in lin[lin.origin == "merge"].iterrows():
        f, c = int(r.start_frame), int(first.loc[tid, "cluster_id"])
        rows.append(("detected", f, c, int(tid), False, (f, c) in products, list(r.parents), False))
    return pd.DataFrame(rows, columns=_MATCH_COLUMNS)


def merge_scores(matches: pd.DataFrame) -> dict[str, float]:
    """Recall and precision of merge identification from :func:`merge_matches` rows.

    Returns
    -------
    dict
        ``identifiable, found, recall`` (found / identifiable truth merges) and
        ``detected, true, precision`` (truth products / detected merges); a ratio with an
        empty denominator is NaN.
    """
    refuse_text_numbers(locals())
    _need(matches, "matches", ["source", "identifiable", "matched"])
    t = matches[(matches.source == "truth") & matches.identifiable.astype(bool)]
    d = matches[matches.source == "detected"]
    n_id, n_found = len(t), int(t.matched.sum())
    n_det, n_true = len(d), int(d.matched.sum())
    return {
        "identifiable": n_id,
        "found": n_found,
        "recall": n_found / n_id if n_id else float("nan"),
        "detected": n_det,
        "true": n_true,
        "precision": n_true / n_det if n_det else float("nan"),
    }


def projected_objects(clusters: pd.DataFrame, *, count_column: str = "n_atoms") -> pd.DataFrame:
    """Truth clusters of one frame as one projection shows them.

    Rows with the same ``cluster_id`` (≥ 0) are one cluster (atoms summed, centre of
    mass); clusters whose projected equal-volume discs (fcc Pb radii) overlap — centre
    distance < r₁ + r₂ — are merged into one object, repeatedly, so that a chain of
    overlapping clusters is one object.  The object keeps its member clusters: the
    centre of mass of a chain A–B–C can lie between the members, where no cluster is,
    so :func:`match_objects` also accepts a detection on any member.

    Parameters
    ----------
    clusters : DataFrame
        ``cluster_id, x_A, y_A`` and ``count_column`` (atoms) of one frame.
    count_column : str
        Name of the atom-count column (``"n_atoms"`` for KMC truth tables, ``"n_Pb0"``
        for the per-atom truth of :func:`perovstem.simulate.haadf.haadf_image`).

    Returns
    -------
    DataFrame
        ``x_A, y_A, n_atoms, n_clusters`` (clusters in each object) and ``members``: an
        ``(n_clusters, 3)`` array of the member clusters' ``x_A, y_A, n_atoms``.
    """
    refuse_text_numbers(locals())
    _need(clusters, "clusters", ["cluster_id", "x_A", "y_A", count_column])
    t = clusters[clusters["cluster_id"] >= 0]
    rows = []
    for _, g in t.groupby("cluster_id"):
        w = g[count_column].to_numpy(float)
        x, y = np.average(g["x_A"], weights=w), np.average(g["y_A"], weights=w)
        rows.append([x, y, w.sum(), 1, [(float(x), float(y), float(w.sum()))]])
    merged = True
    while merged:
        merged = False
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                (xi, yi, ni, ki, mi), (xj, yj, nj, kj, mj) = rows[i], rows[j]
                if np.hypot(xi - xj, yi - yj) < _radius_A(ni) + _radius_A(nj):
                    n = ni + nj
                    x, y = (xi * ni + xj * nj) / n, (yi * ni + yj * nj) / n
                    rows[i] = [x, y, n, ki + kj, mi + mj]
                    del rows[j]
                    merged = True
                    break
            if merged:
                break
    out = pd.DataFrame(
        [r[:4] for r in rows], columns=["x_A", "y_A", "n_atoms", "n_clusters"], dtype=float
    )
    out["n_clusters"] = out["n_clusters"].astype(int)
    out["members"] = pd.Series([np.array(r[4], float).reshape(-1, 3) for r in rows], dtype=object)
    return out


def _reach(objects: pd.DataFrame, detections: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Distance (Å) of each detection to each object and whether it is within reach.

    Reach: ``max(5 Å, r + 2 Å)`` of the object's centre (r its equal-volume radius) or,
    for an object of several clusters with a ``members`` column, ``max(5 Å, r_m + 2 Å)``
    of a member's centre (the tolerance that member would get alone); the distance is the
    smallest of those to the centre and to the members within reach."""
    ox, oy = objects["x_A"].to_numpy(float), objects["y_A"].to_numpy(float)
    dx, dy = detections["x_A"].to_numpy(float), detections["y_A"].to_numpy(float)
    d = np.hypot(ox[:, None] - dx[None, :], oy[:, None] - dy[None, :])
    tol = np.maximum(5.0, _radius_A(objects["n_atoms"].to_numpy()) + 2.0)[:, None]
    ok = d < tol
    if "members" in objects.columns:
        for i, mem in enumerate(objects["members"]):
            mem = np.asarray(mem, float).reshape(-1, 3)
            if len(mem) < 2:
                continue
            dm = np.hypot(mem[:, None, 0] - dx[None], mem[:, None, 1] - dy[None])
            okm = dm < np.maximum(5.0, _radius_A(mem[:, 2]) + 2.0)[:, None]
            dmin = np.where(okm, dm, np.inf).min(axis=0)
            d[i] = np.where(ok[i], np.minimum(d[i], dmin), dmin)
            ok[i] |= okm.any(axis=0)
    return d, ok


def match_objects(objects: pd.DataFrame, detections: pd.DataFrame) -> list[tuple[int, int]]:
    """Pairs ``(object row, detection row)`` by a minimum-total-distance assignment
    (Kuhn 1955) among pairs within reach: closer than ``max(5 Å, r + 2 Å)`` to the
    object's centre (r its equal-volume radius) or, for an object of several clusters
    (``members`` column of :func:`projected_objects`), than ``max(5 Å, r_m + 2 Å)`` to a
    member cluster's centre (the distance is then the one to the nearest such centre)."""
    refuse_text_numbers(locals())
    from scipy.optimize import linear_sum_assignment

    if len(objects) == 0 or len(detections) == 0:
        return []
    d, ok = _reach(objects, detections)
    r, c = linear_sum_assignment(np.where(ok, d, 1e6))
    return [(int(i), int(j)) for i, j in zip(r, c, strict=True) if ok[i, j]]


def score_detections(
    detections: pd.DataFrame, objects: pd.DataFrame, *, min_atoms: float = 10.0
) -> dict:
    """Score one frame's detections against its projected truth objects.

    Objects of at least ``min_atoms`` atoms are matched one-to-one
    (:func:`match_objects`).  An unmatched detection is a false positive unless it lies
    within reach (as in :func:`match_objects`: of the centre or of a member cluster) of a
    smaller object (neither hit nor false) or of an object made of several clusters (it
    resolved them; its atoms are added to that object's count).

    Returns
    -------
    dict
        ``objects`` (the scored objects, index reset), ``pairs`` [(object, detection)],
        ``extra`` {object: [detections on it]}, ``n_atoms`` (detected atoms of each
        pair: the matched detection plus its extra ones), ``tp``, ``fp``, ``fn`` and
        ``false`` (the positions of the false-positive detections).
    """
    refuse_text_numbers(locals())
    _need(detections, "detections", ["x_A", "y_A", "n_atoms"])
    big = objects[objects["n_atoms"] >= min_atoms].reset_index(drop=True)
    small = objects[objects["n_atoms"] < min_atoms]
    pairs = match_objects(big, detections)
    hit = {j for _, j in pairs}
    extra: dict[int, list[int]] = {}
    false: list[int] = []
    if len(big) and len(detections):
        d_big, ok_big = _reach(big, detections)
        multi = big["n_clusters"].to_numpy() > 1
        r_big = _radius_A(big["n_atoms"].to_numpy())
    on_small = np.zeros(len(detections), bool)
    if len(small) and len(detections):
        on_small = _reach(small, detections)[1].any(axis=0)
    for j in range(len(detections)):
        if j in hit or on_small[j]:
            continue
        xj, yj = detections["x_A"].iloc[j], detections["y_A"].iloc[j]
        if len(big):
            db = np.hypot(big["x_A"].to_numpy(float) - xj, big["y_A"].to_numpy(float) - yj)
            on = multi & ((db < r_big + 2.0) | ok_big[:, j])
            if on.any():
                extra.setdefault(int(np.argmin(np.where(on, d_big[:, j], np.inf))), []).append(j)
                continue
        false.append(j)
    n_det = [float(detections["n_atoms"].iloc[[j, *extra.get(i, [])]].sum()) for i, j in pairs]
    return {
        "objects": big,
        "pairs": pairs,
        "extra": extra,
        "n_atoms": n_det,
        "tp": len(pairs),
        "fp": len(false),
        "fn": len(big) - len(pairs),
        "false": false,
    }


def interval_verdict(low: float, high: float, target: float) -> str:
    """Whether an interval ``[low, high]`` meets ``figure >= target``.

    ``"met"`` where ``low >= target``, ``"not met"`` where ``high < target``, otherwise
    ``"undecided"`` (the interval contains the target: the data do not tell).
    """
    refuse_text_numbers(locals())
    lo, hi, t = float(low), float(high), float(target)
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(t)) or lo > hi:
        raise ParameterError(
            f"`low`, `high`, `target` must be finite with low <= high, got {low!r}, {high!r}, "
            f"{target!r}"
        )
    if lo >= t:
        return "met"
    if hi < t:
        return "not met"
    return "undecided"


def ratio_interval(
    numerator,
    denominator,
    *,
    strata=None,
    target: float | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    rng: int | np.random.Generator | None = 0,
) -> dict:
    """A pooled ratio of counts (precision, recall, share within a tolerance) with a
    cluster-bootstrap interval.

    The figure is the ratio of totals ``sum(numerator) / sum(denominator)`` over *units*
    (e.g. one simulated series each: its true positives and its detections).  Tallies of
    one series are correlated (the same truth cluster is seen in many frames; the frames
    share one crystal and one dose rate), so the units, not the frames or the clusters,
    are resampled: the cluster bootstrap (Davison & Hinkley 1997, *Bootstrap Methods and
    their Application*, §3.8; Field & Welsh 2007, J. R. Stat. Soc. B 69, 369).  With
    ``strata`` (e.g. the benchmark set of each series) units are resampled within each
    stratum, which keeps its number of units (stratified bootstrap, Davison & Hinkley
    §3.7).  In each stratum of n units, n − 1 are drawn with replacement and weighted by
    n / (n − 1) (the rescaling bootstrap of Rao & Wu 1988, J. Am. Stat. Assoc. 83, 231,
    with m = n − 1; McCarthy & Snowden 1985): the plain n-of-n bootstrap underestimates
    the variance by the factor (n − 1) / n, a third too small with 4 units.  The interval
    is the percentile interval of the resampled ratios (Efron & Tibshirani 1993, *An
    Introduction to the Bootstrap*, ch. 13); with few units it is still approximate
    (a stratum of 4 units has only 20 distinct resamples of 3).

    Parameters
    ----------
    numerator, denominator : array_like
        Counts per unit (1-D, same length, ≥ 0; ``numerator <= denominator`` is not
        required).  The denominator total must be > 0.
    strata : array_like, optional
        A label per unit; units are resampled within their stratum.  A stratum of one
        unit is kept as it is (it adds no variance).
    target : float, optional
        Criterion ``figure >= target``: adds ``verdict`` (:func:`interval_verdict`) and
        ``units_needed``.
    level : float
        Coverage of the interval, in (0, 1).
    n_boot : int
        Number of bootstrap resamples (≥ 100).
    rng : int or Generator or None
        Seed of the resampling; a fixed seed gives the same interval on every run.

    Returns
    -------
    dict
        ``value`` (the pooled ratio), ``low``, ``high`` (the interval), ``se`` (standard
        deviation of the resampled ratios), ``n_units``; with ``target`` also ``verdict``
        and ``units_needed``: the number of units (at the present units per stratum
        proportions) at which the interval's half-width, ``z · se`` scaled as
        1 / √units, would be ``|value − target|`` (None where the verdict is already
        decided, inf where ``value == target`` or ``se == 0``).  Resamples whose denominator
        total is 0 are left out of the interval; bounds within 1e-12 of ``value`` (float
        rounding of the resampled totals) are ``value``, an ``se`` below 1e-12 is 0.
    """
    refuse_text_numbers(locals())
    num = np.asarray(numerator, float)
    den = np.asarray(denominator, float)
    if num.ndim != 1 or den.shape != num.shape or len(num) == 0:
        raise DataError(
            f"`numerator` and `denominator` must be 1-D of one length ≥ 1, got shapes "
            f"{num.shape} and {den.shape}"
        )
    if (
        not (np.all(np.isfinite(num)) and np.all(np.isfinite(den)))
        or (num < 0).any()
        or (den < 0).any()
    ):
        raise DataError("`numerator` and `denominator` must be finite counts ≥ 0")
    if den.sum() <= 0:
        raise DataError(f"`denominator` must sum to > 0, got {den.sum()!r}")
    lev = float(level)
    if not 0.0 < lev < 1.0:
        raise ParameterError(f"`level` must be in (0, 1), got {level!r}")
    if int(n_boot) != n_boot or n_boot < 100:
        raise ParameterError(f"`n_boot` must be an integer ≥ 100, got {n_boot!r}")
    n_boot = int(n_boot)
    lab = np.zeros(len(num), int) if strata is None else np.asarray(strata)
    if lab.shape != num.shape:
        raise DataError(f"`strata` must have one label per unit ({len(num)}), got {lab.shape}")
    gen = np.random.default_rng(rng)
    num_b = np.zeros(n_boot)
    den_b = np.zeros(n_boot)
    rows = np.arange(n_boot)[:, None]
    for key in np.unique(lab):  # sorted: the draws do not depend on the units' order
        sel = np.flatnonzero(lab == key)
        n = len(sel)
        if n == 1:
            num_b += num[sel[0]]
            den_b += den[sel[0]]
            continue
        w = np.zeros((n_boot, n))
        np.add.at(w, (rows, gen.integers(0, n, size=(n_boot, n - 1))), n / (n - 1))
        num_b += w @ num[sel]
        den_b += w @ den[sel]
    ok = den_b > 0
    ratio = num_b[ok] / den_b[ok]
    value = float(num.sum() / den.sum())
    a = (1.0 - lev) / 2.0
    # resampled totals of identical units differ from the value by float rounding only:
    # such bounds are the value (an interval of zero width must not read as just below
    # a target)
    low, high = (
        value if abs(q - value) <= 1e-12 else float(q) for q in np.quantile(ratio, [a, 1.0 - a])
    )
    se = float(ratio.std())
    se = 0.0 if se <= 1e-12 else se
    out = {"value": value, "low": low, "high": high, "se": se, "n_units": len(num)}
    if target is not None:
        t = float(target)
        out["verdict"] = interval_verdict(low, high, t)
        if out["verdict"] != "undecided":
            out["units_needed"] = None
        elif se == 0.0 or value == t:
            out["units_needed"] = float("inf")
        else:
            from scipy.stats import norm

            z = float(norm.ppf(1.0 - a))
            out["units_needed"] = int(np.ceil(len(num) * (z * se / abs(value - t)) ** 2))
    return out
