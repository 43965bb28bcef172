"""Tracking of Pb clusters over frames, with births (nucleation), deaths and merges.

Linking is the linear-assignment-problem (LAP) tracker of Jaqaman et al., Nat. Methods 5,
695 (2008): frame-to-frame assignment, then gap closing and merging of segments, as
implemented by ``laptrack`` (Fukai & Kawaguchi, Bioinformatics 39, btac799 (2023)).

A coalescence in projection shows up as two tracks ending where one continues (or a new one
starts) with about the summed size.  The LAP proposals are checked against mass
conservation: a merge is kept when the atom count after it is at least
``merge_mass_fraction`` of the sum of the parents' counts, so a cluster that fades away
next to another one is recorded as a death, not a merge.

The default ``method="global"`` solves each frame pair as one set-partitioning problem
(Morefield, IEEE Trans. Autom. Control 22, 302 (1977); the 0-1 integer-programming form of
multiple-hypothesis data association): every cluster of frame k and every detection of
frame k+1 is explained by exactly one hypothesis -- continuation, end, birth, gap closure,
or an explicit merge of 2-3 clusters into one detection -- and the set of minimal total
negative log-likelihood is found exactly (HiGHS through :func:`scipy.optimize.milp`).  A
merge is scored by mass conservation (atoms after ≈ sum of the parents' atoms, within the
combined count errors, growth by attachment allowed), the product at the parents'
mass-weighted centre, and the parents being able to meet, all with displacement densities
whose width is each track's own measured mobility (not a fixed step limit).  Births and
ends are the less likely the larger the cluster (clusters enter the detectable range small
and do not vanish in one frame), by at most 4 nats (on images a large cluster does appear
or vanish: revealed or hidden by a neighbour it overlaps in projection, missed for more
than ``gap_frames`` frames).  A merged-away cluster that is seen again (re-detected as
a new cluster of its size within long-hop reach, above twice the detection limit or nearer
to it than the product; re-linked after a one-frame gap; or the product separating again
into its two parents) was a hop or a segmentation blob, and the merge is undone.

Every merge is then checked over the following frames (``verify_merges``; coalescence of
Pb clusters is irreversible at these sizes, clusters that only overlap in projection, e.g.
on the top and bottom facets, separate again): a product that later separates into parts
matching its parents is an overlap (``origin="overlap"``, the parts ``"separation"``), and
a product whose atoms do not add up over its first frames (<= 0.5 or >= 3 times the
parents') or that vanishes while one parent is seen again next to it is ``"unresolved"``.
A merge that passes but has a parent seen in fewer than 3 frames at noise level (best
significance, count over its frame-independent error, below ``min_parent_significance``)
is ``"merge_uncertain"``: such a parent is as likely a spurious detection (a host patch on
a damaged crystal, a segmentation fragment) as a cluster, so the event is reported apart
and not counted as a coalescence.

Output follows the KMC convention (:func:`perovstem.simulate.degradation_kmc`): after a
merge a new track starts whose ``parents`` are the merged tracks.

Merge identification on KMC truth (``benchmarks/bench_merges.py``: truth clusters as
detections, 10 % count noise; recall / precision): tuning seeds 0.865 / 0.898, held-out
0.890 / 0.930, fresh seeds 201-212 0.843 / 0.833 and 401-412 0.846 / 0.846, other
conditions 0.735 / 0.769; with count errors correlated in time (9 % bias per cluster,
4.5 % per frame) 0.865 / 0.868, 0.817 / 0.915, 0.814 / 0.831 (201-212), 0.835 / 0.890
(401-412), 0.724 / 0.788 (truth rows made before the size prior was bounded); on
images (:func:`detect_clusters` after session 15, ``images_*_global`` rows of session 16;
found / identifiable, precision) 6 tuning series 14 of 22, 0.45; 12 held-out 13 of 23,
0.25; 12 fresh (501-512) 15 of 29, 0.38; 12 other conditions 30 of 39, 0.48; 12 new
(801-812) 21 of 34, 0.39 (seeds 1001-1012: 5 of 18, 0.23): in 110 of 258 false merges the
merged-away parents are still there, one object with the product in projection (their
truth clusters apart), which counts and positions cannot tell from a coalescence.
What a track's history does not add (measured, not used): one-sided Kalman filters of each track's log
count (Kalman, J. Basic Eng. 82, 35 (1960); 2-5 frames, 0.05-0.2 random walk per frame,
3σ jump restarts) for the parents before and the product after a boundary lowered the
tuning recall (0.850 → 0.828-0.846 over three noise draws; 0.865 → 0.81-0.85 even along
the true cluster chains), because KMC counts are steps (65 % of frame pairs unchanged,
never down) and pooled parents lag their growth; successive hops are uncorrelated
(-0.06) and a parent's last hop does not point at the product (mean cosine 0.05 ± 0.05).
With time-correlated errors, judging continuations by ``n_atoms_err_stat`` alone (the
persistent part cancels along a cluster) moved recall by -0.5 to +3 points but
precision by -3 to +1 (-1.3 to -2.2 on held-out and fresh seeds; three noise draws, two
bias models), and is not done.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from perovstem._validation import check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["track_clusters", "lineage_events", "mobility_tracks"]

#: end and birth cost (nats) of :func:`mobility_tracks`: chosen from {2, 3, 4} on the
#: demo's mobility series, seeds 0-11 of ``benchmarks/bench_kinetics.py`` (checked on
#: 100-111; docs/insitu.md, kinetics)
MOBILITY_LINK_COST = 2.0


def _check_table(df: pd.DataFrame, cols: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"`clusters` must be a DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"`clusters` lacks column(s) {missing} (has {list(df.columns)})")
    bad = ~np.isfinite(df[cols].to_numpy(float))
    if bad.any():
        raise DataError(f"`clusters` has {int(bad.sum())} non-finite value(s) in {cols}")


def track_clusters(
    clusters: pd.DataFrame,
    *,
    max_step_A: float = 8.0,
    merge_distance_A: float | None = None,
    gap_frames: int = 1,
    size_column: str | None = "n_atoms",
    merge_mass_fraction: float = 0.7,
    size_rel_err: float = 0.05,
    min_merge_atoms: float = 10.0,
    min_merge_frames: int = 1,
    long_hops: bool = True,
    method: str = "global",
    verify_merges: bool = True,
    min_parent_significance: float = 5.0,
    merge_window: int = 1,
    lookahead: int = 0,
    end_cost: float = 6.0,
    birth_cost: float = 6.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link per-frame cluster detections into tracks and a lineage with merges.

    Parameters
    ----------
    clusters : DataFrame
        One row per cluster per frame with ``frame, x_A, y_A`` (and ``size_column``), e.g.
        the concatenated output of :func:`detect_clusters` on drift-corrected frames.
    max_step_A : float
        ``"mass"``/``"laptrack"``: largest displacement of a cluster between consecutive
        frames, Å.  ``"global"``: displacement scale of a track without history (prior rms
        hop ``max_step_A / 2``, long hops with rms ``5 max_step_A`` and weight 0.05, position
        error ``max_step_A / 8``); each track's gate then follows its own measured hops.
    merge_distance_A : float, optional
        ``"mass"``: largest gap between the surfaces (equal-volume radii) of a cluster that
        ends and the cluster it merges into, Å (default 8 Å: coalesced clusters relax to
        their centre of mass and keep diffusing within the frame); ``"laptrack"``: largest
        centre distance of a merge (default ``2 * max_step_A``).
    gap_frames : int
        Frames a cluster may be missed and still be re-linked (0: no gap closing).
    size_column : str or None
        Column with the cluster size (atoms) used to test merges by mass conservation;
        ``None`` accepts every LAP merge.
    merge_mass_fraction : float
        A merge is kept when the growth of the continuing cluster is at least this
        fraction of the atoms of the clusters that end (within ``size_rel_err``).
    size_rel_err : float
        Relative standard error of the sizes (2σ tolerance of the mass check); a column
        ``<size_column>_err`` (e.g. ``n_atoms_err`` of :func:`detect_clusters`) is used
        when it gives a larger error.
    min_merge_atoms : float
        ``"mass"``: a cluster that ends next to a continuing one is a merge parent only
        with at least this size (atoms); smaller ones are absorbed (growth by attachment;
        lineage ``fate="absorbed"``, ``merged_into`` the cluster that took them, no event).
        ``"global"`` applies it to the parent's recent size (larger of the last and the
        median of its last three counts) plus one standard error of the count.
    min_merge_frames : int
        ``"mass"``, ``"global"``: a merge parent must have been tracked for at least this many frames
        (1: no condition); younger ones are absorbed as above.
    method : {"global", "mass", "laptrack"}
        ``"global"`` (default): exact frame-pair assignment with merge hypotheses (module
        docstring); ``merge_distance_A`` widens the contact test of a merge,
        ``merge_mass_fraction`` is a hard floor on the mass of a merge product and
        ``size_rel_err`` / ``<size_column>_err`` give the count errors.  ``"mass"``
        (the former default): greedy frame-to-frame LAP (squared distance plus a size-change
        penalty), then every track that ends (largest first) is tested as a merge partner
        of the next-frame cluster within reach (the two radii plus ``merge_distance_A``)
        whose unexplained growth best matches its atoms (the nearest one without sizes)
        — coalescing clusters move to their centre of mass, which can be farther than
        ``max_step_A`` from either parent.  ``"laptrack"``: laptrack's
        segment merging, then the same mass check.

    verify_merges : bool
        Check every merge over the following frames (module docstring): a product that
        separates again into parts matching its parents is ``origin="overlap"`` (its parts
        ``"separation"``), one whose atoms do not add up (it keeps <= 0.5 or holds >= 3
        times the parents' atoms, or it vanishes while one parent is seen again) is
        ``"unresolved"``; ``False`` keeps every merge (the evidence columns are filled
        either way).
    min_parent_significance : float
        Evidence a merge needs to be reported as a coalescence (``verify_merges`` only): a
        parent tracked over fewer than 3 frames must have been a detection of at least this
        significance, atoms over their frame-independent error (``<size_column>_err_stat``,
        else ``<size_column>_err``; the best of its detections), or the merge may be
        explained by a spurious or noise-level parent and is ``origin="merge_uncertain"``
        (reported apart, not counted as a merge).  0 disables the test; without error
        columns no merge is made uncertain.
    merge_window : int
        ``"global"`` only: after the frame-pair assignment, re-decide "a cluster goes on
        (onto another detection, or ends) while its neighbour grows" against "the two
        coalesce into the neighbour's detection, the other detection is new" with each
        track's counts pooled over up to this many frames either side of the boundary
        (median; error of the median the detections' ``<size_column>_err`` over
        sqrt(frames)), with the frame-pair model's own costs (Jaqaman et al. 2008 decide
        merges on track segments, not on one frame pair).  1 (default): the frame pair
        alone.  3 was measured (``docs/insitu_validation.md``, session 16) and is not the
        default: on the tuning series (KMC truth and images) it found no more merges, on
        held-out image series 0-2 more per 12 series at about the same precision.
    lookahead : int
        ``"global"`` only: frame pairs ahead on which each frame pair's decision is
        weighed (multiple-hypothesis tracking with N-scan-back pruning: Reid, IEEE Trans.
        Autom. Control 24, 843 (1979); Cox & Hingorani, IEEE PAMI 18, 138 (1996)).  The
        pair's near-best hypothesis sets (each merge hypothesis forced in, the hypotheses
        it displaces replaced by ends and births, or each chosen merge forbidden; within
        1 nat of the best) are each committed to a copy of the tracks, the next
        ``lookahead`` pairs are solved given it, and the set with the least summed cost
        is committed; new tracks then take the tracked population's mobility as prior.
        0 (default): the frame pair alone; 1 or 2 were measured
        (``docs/insitu_validation.md``, session 17) and are not the default: under this
        frame-pair model the next pair adds little evidence (counts and hops are judged
        against the last detection) and the decisions it changes were as often wrong as
        right.
    end_cost, birth_cost : float
        ``"global"`` only: prior cost, nats (negative log-probability), of a track that
        ends and of a detection that starts a new track (each plus the size penalty of
        the module docstring); a continuation is kept only when it costs less than an end
        plus a birth.  The default 6 suits the lineage (merges need the links).  Smaller
        costs refuse the unlikely links, e.g. a track whose cluster was not detected
        linked to a neighbour detected for the first time 4-10 Å away: 2-4 nats give
        tracks for the mobility estimate (:func:`perovstem.quantify.mobility.cluster_hop_rate`)
        with fewer such mis-links but lose merges (``docs/insitu.md``, kinetics).

    Returns
    -------
    tracks : DataFrame
        The input rows with ``track_id`` (one id per segment between events).
    lineage : DataFrame
        One row per track: ``track_id, parents (list), start_frame, end_frame, origin
        ("first_frame"|"nucleation"|"merge"|"merge_uncertain"|"overlap"|"separation"|
        "unresolved"), fate
        ("alive"|"merged"|"absorbed"|"death"|"overlap"|"unresolved"|"separated"),
        merged_into, n_atoms_start, n_atoms_end, x_start_A, y_start_A`` (atoms from the
        detections' ``n_atoms`` column, NaN without it, whatever ``size_column`` linked
        the tracks) and, for the
        rows that were merges before the check (NaN elsewhere), the evidence:
        ``merge_llr`` (``"global"``: log-likelihood margin of the merge over the best
        explanation of the frame pair without it; small margins are near-ties),
        ``merge_parent_frames`` (frames the shortest-lived parent was tracked) and
        ``merge_mass_ratio`` (the product's median count over its first <= 3 frames over
        the sum of the parents' medians over their last <= 3) and
        ``merge_parent_significance`` (the weakest parent's best significance, atoms over
        error, among those tracked < 3 frames; inf when all were tracked longer).
        ``attrs['n_merges']`` (confident merges only), ``attrs['n_merges_uncertain']``,
        ``attrs['n_overlaps']``, ``attrs['n_unresolved']``.
    """
    refuse_text_numbers(locals())
    need = ["frame", "x_A", "y_A"] + ([size_column] if size_column else [])
    _check_table(clusters, need)
    max_step_A = check_positive("max_step_A", max_step_A)
    merge_d = (
        2 * max_step_A
        if merge_distance_A is None
        else check_positive("merge_distance_A", merge_distance_A)
    )
    if int(gap_frames) != gap_frames or gap_frames < 0:
        raise ParameterError(f"`gap_frames` must be an integer >= 0, got {gap_frames!r}")
    check_positive("merge_mass_fraction", merge_mass_fraction)
    check_positive("min_merge_atoms", min_merge_atoms, allow_zero=True)
    if int(min_merge_frames) != min_merge_frames or min_merge_frames < 1:
        raise ParameterError(
            f"`min_merge_frames` must be an integer >= 1, got {min_merge_frames!r}"
        )
    if not isinstance(verify_merges, (bool, np.bool_)):
        raise ParameterError(f"`verify_merges` must be True or False, got {verify_merges!r}")
    min_sig = check_positive("min_parent_significance", min_parent_significance, allow_zero=True)
    if int(merge_window) != merge_window or merge_window < 1:
        raise ParameterError(f"`merge_window` must be an integer >= 1, got {merge_window!r}")
    if int(lookahead) != lookahead or not 0 <= lookahead <= 2:
        raise ParameterError(f"`lookahead` must be an integer 0, 1 or 2, got {lookahead!r}")
    end_cost = check_positive("end_cost", end_cost)
    birth_cost = check_positive("birth_cost", birth_cost)
    df = clusters.reset_index(drop=True).copy()
    if (df["frame"] != np.round(df["frame"])).any() or (df["frame"] < 0).any():
        raise DataError("`clusters.frame` must hold non-negative integer frame indices")
    df["frame"] = df["frame"].astype(int)
    if method not in ("global", "mass", "laptrack"):
        raise ParameterError(f"`method` must be 'global', 'mass' or 'laptrack', got {method!r}")
    if df.empty:
        tr = df.assign(track_id=pd.Series(dtype=int))
        return tr, _empty_lineage()
    if method in ("global", "mass"):
        args = (
            df,
            max_step_A,
            merge_d if merge_distance_A is not None else 8.0,
            int(gap_frames),
            size_column,
            merge_mass_fraction,
            size_rel_err,
            float(min_merge_atoms),
            int(min_merge_frames),
        )
        if method == "global":
            tracks, lineage, llr = _track_global(
                *args,
                window=int(merge_window),
                lookahead=int(lookahead),
                end_cost=end_cost,
                birth_cost=birth_cost,
            )
        else:
            tracks, lineage = _track_mass(*args, bool(long_hops))
            llr = None
        margin = merge_d if merge_distance_A is not None else 8.0
        return tracks, _verify_merges(
            tracks, lineage, size_column, margin, llr, verify_merges, min_sig
        )
    from laptrack import LapTrack

    lt = LapTrack(
        cutoff=max_step_A**2,
        gap_closing_cutoff=(max_step_A * (gap_frames + 1)) ** 2 if gap_frames > 0 else False,
        # laptrack counts the frame distance of a gap-closing link (1: consecutive frames
        # only), so bridging ``gap_frames`` missed frames needs gap_frames + 1
        gap_closing_max_frame_count=int(gap_frames) + 1,
        splitting_cutoff=False,
        merging_cutoff=merge_d**2,
    )
    df["_row"] = np.arange(len(df))
    # laptrack frames must start at 0 and be contiguous: map them
    frames = np.sort(df["frame"].unique())
    fmap = {f: i for i, f in enumerate(range(frames.min(), frames.max() + 1))}
    df["_f"] = df["frame"].map(fmap)
    track_df, _split_df, merge_df = lt.predict_dataframe(
        df[["_f", "y_A", "x_A", "_row"]].rename(columns={"_f": "frame"}),
        coordinate_cols=["y_A", "x_A"],
        frame_col="frame",
        only_coordinate_cols=False,
    )
    row_track = dict(zip(track_df["_row"].to_numpy(), track_df["track_id"].to_numpy(), strict=True))
    df["track_id"] = df["_row"].map(row_track).astype(int)
    merges = (
        merge_df[["parent_track_id", "child_track_id"]].to_numpy(int)
        if len(merge_df)
        else np.zeros((0, 2), int)
    )
    tracks, lineage = _build_lineage(df, merges, size_column, merge_mass_fraction)
    tracks = tracks.drop(columns=["_row", "_f"])
    return tracks, _verify_merges(
        tracks, lineage, size_column, merge_d, None, verify_merges, min_sig
    )


def _radius_A(n: np.ndarray) -> np.ndarray:
    """Equal-volume radius of an fcc Pb cluster of ``n`` atoms, Å."""
    return (3 * np.clip(n, 0, None) * 4.95**3 / (16 * np.pi)) ** (1 / 3)


def _track_inputs(
    df: pd.DataFrame, size_col: str | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Detections sorted by frame and their arrays: sizes (1 without ``size_col``), absolute
    size errors (the ``<size_col>_err`` column, 0 where absent), positions (Å), frames and
    equal-volume radii (Å; 0 without sizes)."""
    df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    size = df[size_col].to_numpy(float) if size_col else np.ones(len(df))
    err_col = f"{size_col}_err" if size_col else None
    if err_col and err_col in df.columns:
        serr = np.nan_to_num(np.abs(df[err_col].to_numpy(float)), nan=0.0)
    else:
        serr = np.zeros(len(df))
    xy = df[["x_A", "y_A"]].to_numpy(float)
    fr = df["frame"].to_numpy(int)
    rad = _radius_A(size) if size_col else np.zeros(len(df))
    return df, size, serr, xy, fr, rad


def _track_mass(
    df: pd.DataFrame,
    max_step: float,
    merge_margin: float,
    gap: int,
    size_col: str | None,
    frac: float,
    size_rel_err: float,
    min_merge: float = 0.0,
    min_frames: int = 1,
    long_hops: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from scipy.optimize import linear_sum_assignment

    df, size, serr, xy, fr, rad = _track_inputs(df, size_col)
    seg = np.full(len(df), -1)
    frames = np.unique(fr)
    rows_of = {f: np.flatnonzero(fr == f) for f in frames}
    next_id = 0
    merges: list[tuple[int, int]] = []  # (parent segment, child segment)
    absorbed: dict[int, int] = {}  # small ended segment -> segment of the row it joined
    seg_start: dict[int, int] = {}  # segment -> first frame
    open_ends: dict[int, int] = {}  # segment -> last row (ended, waiting for gap closing)
    for i in rows_of[frames[0]]:
        seg[i] = next_id
        seg_start[next_id] = int(frames[0])
        next_id += 1
    for fa, fb in zip(frames[:-1], frames[1:], strict=True):
        a, b = rows_of[fa], rows_of[fb]
        cont = {}  # b row -> a row (continuation)
        if len(a) and len(b) and fb - fa == 1:
            d = np.hypot(*(xy[a][:, None, :] - xy[b][None, :, :]).transpose(2, 0, 1))
            ds = np.abs(np.log((size[b][None, :] + 1) / (size[a][:, None] + 1)))
            cost = (d / max_step) ** 2 + ds**2
            cost = np.where(d <= max_step, cost, 1e9)
            ri, ci = linear_sum_assignment(cost)
            for i, j in zip(ri, ci, strict=True):
                if cost[i, j] < 1e9:
                    cont[b[j]] = a[i]
            if long_hops and size_col is not None:
                # second pass: a cluster that hopped farther than max_step is the
                # unmatched new cluster of about its size within 2 max_step (otherwise it
                # would be called a merge into a neighbour that grew, plus a birth)
                ua = [i for i in a if i not in set(cont.values())]
                ub = [j for j in b if j not in cont]
                if ua and ub:
                    d2 = np.hypot(*(xy[ua][:, None, :] - xy[ub][None, :, :]).transpose(2, 0, 1))
                    ls = np.abs(np.log((size[ub][None, :] + 1) / (size[ua][:, None] + 1)))
                    c2 = (d2 / (2 * max_step)) ** 2 + (ls / 0.3) ** 2
                    c2 = np.where((d2 <= 2 * max_step) & (ls < 0.3), c2, 1e9)
                    r2, k2 = linear_sum_assignment(c2)
                    for i, j in zip(r2, k2, strict=True):
                        if c2[i, j] < 1e9:
                            cont[ub[j]] = ua[i]
        matched_a = set(cont.values())
        ended = [i for i in a if i not in matched_a] if fb - fa == 1 else list(a)
        # merges: an ended cluster joins the next-frame cluster within reach whose
        # unexplained growth best matches its atoms (largest ended clusters first; the
        # nearest one when no size is known or none can hold it)
        merged_into: dict[int, list[int]] = {}
        gain = {}
        if len(b):
            for j in b:
                q = cont.get(j)
                gain[int(j)] = float(size[j] - (size[q] if q is not None else 0.0))
        if fb - fa > 1:
            # frames without detections in between: no continuation or merge across them;
            # the clusters of fa can only be re-linked by gap closing (within `gap_frames`)
            for i in ended:
                open_ends[int(seg[i])] = int(i)
            ended = []
        for i in sorted(ended, key=lambda r: -size[r]):
            if not len(b):
                break
            d = np.hypot(*(xy[b] - xy[i]).T)
            ok = d <= rad[b] + rad[i] + merge_margin
            if not ok.any():
                continue
            near = d - rad[b]
            choice = int(np.argmin(np.where(ok, near, np.inf)))
            if size_col is not None:
                g_b = np.array([gain[int(j)] for j in b])
                sig = np.sqrt(serr[b] ** 2 + serr[i] ** 2) + size_rel_err * (size[b] + size[i])
                holds = ok & (g_b >= frac * size[i] - 2 * sig)
                if holds.any():
                    score = np.abs(g_b - size[i]) / sig + near / (merge_margin + rad[i])
                    choice = int(np.argmin(np.where(holds, score, np.inf)))
            j = int(b[choice])
            gain[j] -= float(size[i])
            merged_into.setdefault(j, []).append(int(i))
        new_child: dict[int, list[int]] = {}
        absorb_rows: dict[int, int] = {}
        for j, ps in merged_into.items():
            q = cont.get(j)
            if q is not None and (min_merge > 0 or min_frames > 1):
                # clusters below the merge size, or seen in fewer than `min_frames` frames
                # (flicker, fragments of the segmentation), join the continuing one as
                # growth, not as a coalescence of two tracked clusters
                def _merger(i: int, fa: int = int(fa)) -> bool:
                    big = size_col is None or size[i] >= min_merge
                    age = fa - seg_start.get(int(seg[i]), fa) + 1
                    return bool(big and age >= min_frames)

                small = [i for i in ps if not _merger(i)]
                ps = [i for i in ps if _merger(i)]
                for i in small:
                    absorb_rows[i] = j
                if not ps:
                    continue
            parents = ([q] if q is not None else []) + ps
            # mass check: the growth must carry most of the merging clusters' atoms
            # (2 sigma of the counts: their own errors when given, else size_rel_err)
            base = float(size[q]) if q is not None else 0.0
            e2 = (
                serr[j] ** 2
                + (serr[q] ** 2 if q is not None else 0.0)
                + float(np.sum(serr[ps] ** 2))
            )
            tol = 2 * max(size_rel_err * float(np.hypot(size[j], base)), float(np.sqrt(e2)))
            if size_col is None or size[j] - base >= frac * float(size[ps].sum()) - tol:
                if len(parents) >= 2:
                    new_child[j] = parents
                elif q is None:  # a single ended cluster re-found farther away
                    cont[j] = ps[0]
        ended_set = set(ended)
        for j in b:
            if j in new_child:
                seg[j] = next_id
                for p in new_child[j]:
                    merges.append((int(seg[p]), next_id))
                    ended_set.discard(p)
                next_id += 1
            elif j in cont:
                seg[j] = seg[cont[j]]
                ended_set.discard(cont[j])
            else:
                # gap closing: a track that ended within `gap` frames nearby
                best, bd = None, np.inf
                for sgi, last in list(open_ends.items()):
                    if 0 < fb - fr[last] <= gap + 1:
                        dd = float(np.hypot(*(xy[j] - xy[last])))
                        if dd <= max_step * (fb - fr[last]) and dd < bd:
                            best, bd = sgi, dd
                if best is not None:
                    seg[j] = best
                    del open_ends[best]
                else:
                    seg[j] = next_id
                    next_id += 1
        for j in b:
            seg_start.setdefault(int(seg[j]), int(fb))
        for i, j in absorb_rows.items():
            if i in ended_set and seg[j] >= 0:
                absorbed[int(seg[i])] = int(seg[j])
                ended_set.discard(i)
        for i in ended_set:
            open_ends[int(seg[i])] = int(i)
        # forget ends older than the gap
        open_ends = {k: v for k, v in open_ends.items() if fb - fr[v] <= gap}
    df["track_id"] = seg
    mg = np.asarray(merges, int).reshape(-1, 2)
    return _build_lineage(df, mg, size_col, frac, absorbed)


def _empty_lineage() -> pd.DataFrame:
    cols = [
        "track_id",
        "parents",
        "start_frame",
        "end_frame",
        "origin",
        "fate",
        "merged_into",
        "n_atoms_start",
        "n_atoms_end",
        "x_start_A",
        "y_start_A",
        "merge_llr",
        "merge_parent_frames",
        "merge_mass_ratio",
        "merge_parent_significance",
    ]
    out = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    out.attrs["n_merges"] = 0
    out.attrs["n_merges_uncertain"] = 0
    out.attrs["n_overlaps"] = 0
    out.attrs["n_unresolved"] = 0
    return out


def _build_lineage(
    df: pd.DataFrame,
    merges: np.ndarray,
    size_col: str | None,
    frac: float,
    absorbed: dict[int, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn laptrack segments + merge edges into KMC-style tracks (new id after a merge)."""
    df = df.sort_values(["frame", "track_id"]).reset_index(drop=True)
    first_frame = int(df["frame"].min())
    # child segment -> its parents (laptrack: the continuing cluster's earlier segment is also
    # a parent of the child segment)
    parents: dict[int, list[int]] = {}
    for p, c in merges:
        parents.setdefault(int(c), []).append(int(p))
    seg = df.groupby("track_id")
    start = seg["frame"].min()
    size = df[size_col] if size_col else pd.Series(np.ones(len(df)), index=df.index)
    df["_size"] = size.to_numpy(float)
    first_rows = df.loc[seg["frame"].idxmin()].set_index("track_id")
    last_rows = df.loc[seg["frame"].idxmax()].set_index("track_id")
    # validate merges by mass conservation
    accepted: dict[int, list[int]] = {}
    for c, ps in parents.items():
        if len(ps) < 2:
            # laptrack linked a single segment across a merge node: treat as continuation
            accepted[c] = ps
            continue
        s_after = float(first_rows.loc[c, "_size"])
        s_before = float(sum(last_rows.loc[p, "_size"] for p in ps))
        if size_col is None or s_after >= frac * s_before:
            accepted[c] = ps
        else:
            # keep the parent whose position is closest as the continuation; others die
            best = min(
                ps,
                key=lambda p: np.hypot(
                    last_rows.loc[p, "x_A"] - first_rows.loc[c, "x_A"],
                    last_rows.loc[p, "y_A"] - first_rows.loc[c, "y_A"],
                ),
            )
            accepted[c] = [best]
    # relabel: a child with a single parent continues the parent's track
    final = {int(t): int(t) for t in start.index}
    order = sorted(start.index, key=lambda t: (start[t], t))
    for t in order:
        ps = accepted.get(int(t), [])
        if len(ps) == 1:
            final[int(t)] = final[ps[0]]
    df["track_id"] = df["track_id"].map(final)
    has_atoms = "n_atoms" in df.columns
    rows = []
    g = df.groupby("track_id")
    merged_into: dict[int, int] = {}
    lineage_parents: dict[int, list[int]] = {}
    for c, ps in accepted.items():
        if len(ps) >= 2:
            tc = final[c]
            pf = sorted({final[p] for p in ps})
            lineage_parents[tc] = pf
            for p in pf:
                merged_into[p] = tc
    absorbed_final = {final[a]: final[b] for a, b in (absorbed or {}).items()}
    last_frame = int(df["frame"].max())
    for t, gg in g:
        gg = gg.sort_values("frame")
        t = int(t)
        ps = lineage_parents.get(t, [])
        s0 = int(gg["frame"].iloc[0])
        s1 = int(gg["frame"].iloc[-1])
        origin = "merge" if ps else ("first_frame" if s0 == first_frame else "nucleation")
        if t in merged_into:
            fate = "merged"
        elif t in absorbed_final:
            fate = "absorbed"
        elif s1 == last_frame:
            fate = "alive"
        else:
            fate = "death"
        rows.append(
            {
                "track_id": t,
                "parents": ps,
                "start_frame": s0,
                "end_frame": s1,
                "origin": origin,
                "fate": fate,
                "merged_into": merged_into.get(t, absorbed_final.get(t, -1)),
                # atoms from the detections' own counts, whatever size linked the tracks
                # (an area or a mass proxy is no atom count)
                "n_atoms_start": float(gg["n_atoms"].iloc[0]) if has_atoms else np.nan,
                "n_atoms_end": float(gg["n_atoms"].iloc[-1]) if has_atoms else np.nan,
                "x_start_A": float(gg["x_A"].iloc[0]),
                "y_start_A": float(gg["y_A"].iloc[0]),
            }
        )
    lineage = pd.DataFrame(rows).sort_values(["start_frame", "track_id"]).reset_index(drop=True)
    lineage.attrs["n_merges"] = int((lineage["origin"] == "merge").sum())
    return df.drop(columns=["_size"]), lineage


_RESEP_REL = 0.1  # count error floor between a merge and a separation (growth, blob edges)
_RESEP_SIG = 1.5  # the separated parts must match the parents within this many errors
# a coalescence conserves atoms: the product (median of its first <= 3 frames) holds
# between these fractions of the parents' atoms (growth by attachment is a few % a frame)
_MASS_LO = 0.5
_SEP_SIG = 2.0  # significance of the loss at a separation (frame-to-frame errors)
_MASS_HI = 3.0
# a merge parent tracked over fewer frames than this must be a significant detection
# (``min_parent_significance``), or the merge is only "merge_uncertain"
_ESTABLISHED_FRAMES = 3


def _verify_merges(
    tracks: pd.DataFrame,
    lineage: pd.DataFrame,
    size_col: str | None,
    margin_A: float,
    merge_llr: dict[int, float] | None = None,
    relabel: bool = True,
    min_sig: float = 0.0,
) -> pd.DataFrame:
    """Evidence columns for each merge, and merges that separate again made overlaps.

    Coalescence of Pb clusters is irreversible (a coalesced cluster does not split again
    at these sizes), whereas two clusters that only overlap in projection (e.g. on the top
    and bottom facets) show as one blob that can separate later.  A merge product track is
    re-labelled ``origin="overlap"`` when, in a later frame, it loses a part that starts a
    new track next to it (within the two radii plus ``margin_A``) while the counts add up
    across the separation, the new part matches one parent's count and what is left
    matches the other parents' (within ``_RESEP_SIG`` combined errors, floor
    ``_RESEP_REL``); the new track is then ``origin="separation"`` with the overlap as
    its parent, not a nucleation.  Without sizes no merge is checked.

    A merge that passes these checks but has a parent tracked over fewer than
    ``_ESTABLISHED_FRAMES`` frames whose best significance (count over its
    frame-independent error) is below ``min_sig`` is ``origin="merge_uncertain"``: one
    noise-level detection (a host patch on a damaged crystal, a segmentation fragment) is
    as likely as a coalescence there, so it is reported apart from the merges.
    """
    lin = lineage.copy()
    pcol = lin["parents"]
    lin["merge_llr"] = np.nan
    lin["merge_parent_frames"] = np.nan
    lin["merge_mass_ratio"] = np.nan
    lin["merge_parent_significance"] = np.nan
    lin.attrs = dict(lineage.attrs)
    lin.attrs["n_merges_uncertain"] = 0
    lin.attrs["n_overlaps"] = 0
    lin.attrs["n_unresolved"] = 0
    is_merge = (lin["origin"] == "merge").to_numpy()
    if not is_merge.any():
        return lin
    by = {int(t): g.sort_values("frame") for t, g in tracks.groupby("track_id")}
    idx = {int(t): i for i, t in enumerate(lin["track_id"])}
    origin = lin["origin"].to_numpy(object).copy()
    fate = lin["fate"].to_numpy(object).copy()
    parents = [list(p) for p in pcol]
    err_col = f"{size_col}_err" if size_col else None
    stat_col = f"{size_col}_err_stat" if size_col else None

    def n_rel(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = g[size_col].to_numpy(float)
        e = g[err_col].to_numpy(float) if err_col in g.columns else np.zeros(len(g))
        return n, np.maximum(_RESEP_REL, np.nan_to_num(np.abs(e)) / np.maximum(n, 1.0))

    used: set[int] = set()
    last_frame = int(tracks["frame"].max())
    for i in np.flatnonzero(is_merge):
        c = int(lin["track_id"].iat[i])
        ps = [int(p) for p in parents[i]]
        lin.loc[lin.index[i], "merge_parent_frames"] = float(min(len(by[p]) for p in ps))
        if merge_llr is not None:
            lin.loc[lin.index[i], "merge_llr"] = merge_llr.get(c, np.nan)
        if not size_col:
            continue
        lin.loc[lin.index[i], "merge_parent_significance"] = min(
            (_significance(by[p], size_col) for p in ps if len(by[p]) < _ESTABLISHED_FRAMES),
            default=np.inf,
        )
        # atoms after (median of the product's first <= 3 frames) over atoms before (the
        # parents' last counts, or the medians of their last 3): ~1 for a coalescence,
        # growth by attachment above it; the test takes whichever estimate of the parents
        # is more favourable to the merge (counts of a growing parent lag)
        last = np.array([float(by[p][size_col].iloc[-1]) for p in ps])
        med = np.array([float(np.median(by[p][size_col].to_numpy(float)[-3:])) for p in ps])
        first = by[c][size_col].to_numpy(float)[:3]
        after = float(np.median(first))
        lin.loc[lin.index[i], "merge_mass_ratio"] = after / max(float(med.sum()), 1e-9)
        lo = after / max(float(np.minimum(last, med).sum()), 1e-9)
        # (the product may absorb more clusters in the next frames: its smallest count)
        hi = float(first.min()) / max(float(np.maximum(last, med).sum()), 1e-9)
        if not relabel:
            continue
        if lo <= _MASS_LO or hi >= _MASS_HI:
            # the atoms do not add up over the next frames: a parent that was no cluster
            # (or stayed apart, hidden in the blob), or a product holding unseen clusters
            origin[i] = "unresolved"
            for p in ps:
                if fate[idx[p]] == "merged":
                    fate[idx[p]] = "unresolved"
            continue
        pn, pr = zip(*(tuple(a[-1] for a in n_rel(by[p])) for p in ps), strict=True)
        g = by[c]
        gn, gr = n_rel(g)
        if stat_col in g.columns:
            gs = np.maximum(0.02, np.nan_to_num(g[stat_col].to_numpy(float)) / np.maximum(gn, 1))
        else:
            gs = gr
        gf = g["frame"].to_numpy(int)
        gxy = g[["x_A", "y_A"]].to_numpy(float)

        def new_parts(frame: int, xy0: np.ndarray, n0: float) -> list[tuple[int, float, float]]:
            # tracks that start (as nucleations) at `frame` touching a blob at xy0
            out = []
            for q_i in lin.index[
                (lin["start_frame"].to_numpy() == frame) & (origin == "nucleation")
            ]:
                q = int(lin.at[q_i, "track_id"])
                qn, qr = (a[0] for a in n_rel(by[q]))
                qxy = by[q][["x_A", "y_A"]].to_numpy(float)[0]
                far = np.hypot(*(qxy - xy0)) - _radius_A(n0) - _radius_A(qn)
                # a separated cluster goes on (a one-frame detection is no evidence)
                lasts = len(by[q]) >= 2 or frame == last_frame
                if q not in used and far <= margin_A and lasts:
                    out.append((q, float(qn), float(qr)))
            return out

        def fits(n: float, r: float, j: int, pn: tuple = pn, pr: tuple = pr) -> bool:
            # a part of n atoms (relative error r) is parent j again
            return bool(abs(np.log(n / pn[j])) <= _RESEP_SIG * np.hypot(r, pr[j]))

        sep: list[int] = []
        kind = "overlap"
        # (a) the product goes on and loses a part that matches one parent, what is left
        # matching the others
        for k in range(1, len(g)):
            if gf[k] != gf[k - 1] + 1 or sep:
                break
            # counts before / after the separation over up to 3 frames (one noisy reading
            # is no loss)
            pre = float(np.median(gn[max(0, k - 3) : k]))
            post = float(np.median(gn[k : k + 3]))
            # the loss must be significant against the frame-to-frame count error of one
            # cluster (``<size>_err_stat`` where given: a persistent bias cancels)
            sd = _SEP_SIG * float(np.hypot(pre * gs[k - 1], post * gs[k]))
            for q, qn, qr in new_parts(int(gf[k]), gxy[k - 1], gn[k - 1]):
                if pre - post < max(0.5 * qn, sd):
                    continue
                if abs(np.log((post + qn) / pre)) > 2 * np.hypot(gr[k - 1], qr):
                    continue  # the counts do not add up across the separation
                for j in range(len(ps)):
                    rest = sum(pn[m] for m in range(len(ps)) if m != j)
                    if fits(qn, qr, j) and abs(np.log(post / rest)) <= _RESEP_SIG * np.hypot(
                        gr[k], _RESEP_REL
                    ):
                        sep = [q]
                        break
                if sep:
                    break
        if not sep and fate[i] == "death":
            # (b) the product ends and every parent starts again next to it
            parts = new_parts(int(gf[-1]) + 1, gxy[-1], gn[-1])
            got: list[tuple[int, float, float]] = []
            for j in np.argsort(pn)[::-1]:
                ok = [t for t in parts if t not in got and fits(t[1], t[2], int(j))]
                if ok:
                    got.append(min(ok, key=lambda t: abs(np.log(t[1] / pn[j]))))
            if len(got) == len(ps) and abs(np.log(sum(t[1] for t in got) / gn[-1])) <= 2 * np.hypot(
                gr[-1], _RESEP_REL
            ):
                sep = [t[0] for t in got]
            elif got:
                # (c) a part is a parent again and the rest vanished: not a coalescence
                # (a coalesced cluster neither splits nor disappears in one frame), but
                # not all of the blob is seen again
                sep = [t[0] for t in got]
                kind = "unresolved"
        if not sep:
            continue
        used.update(sep)
        if fate[i] == "death":
            fate[i] = "separated"
        origin[i] = kind
        for p in ps:
            if fate[idx[p]] == "merged":
                fate[idx[p]] = kind
        for q in sep:
            origin[idx[q]] = "separation"
            parents[idx[q]] = [c]
    if relabel and min_sig > 0:
        # a coalescence needs parents that were clusters: one that was seen briefly and at
        # noise level may have been a spurious detection (reported apart, not counted)
        weak = (origin == "merge") & (lin["merge_parent_significance"].to_numpy(float) < min_sig)
        origin[weak] = "merge_uncertain"
    lin["origin"] = origin
    lin["fate"] = fate
    lin["parents"] = parents
    lin.attrs["n_merges"] = int((origin == "merge").sum())
    lin.attrs["n_merges_uncertain"] = int((origin == "merge_uncertain").sum())
    lin.attrs["n_overlaps"] = int((origin == "overlap").sum())
    lin.attrs["n_unresolved"] = int((origin == "unresolved").sum())
    return lin


def _significance(g: pd.DataFrame, size_col: str) -> float:
    """Best significance of a track's detections: count over its frame-independent error
    (``<size_col>_err_stat``, else ``<size_col>_err``); inf without an error column."""
    for col in (f"{size_col}_err_stat", f"{size_col}_err"):
        if col in g.columns:
            n = g[size_col].to_numpy(float)
            e = np.abs(g[col].to_numpy(float))
            ok = np.isfinite(e) & (e > 0)
            if ok.any():
                return float(np.max(n[ok] / e[ok]))
    return float("inf")


#: said with hop rates measured on :func:`mobility_tracks` (the strict tracks): their
#: absolute value is biased low, their ratios (the activation energy) are not
STRICT_HOP_RATE_NOTE = (
    "the hop rates Γ₁ come from the strict mobility tracks: on simulated series imaged at "
    "about one hop per frame they read 0.6–0.8 × the true rate (tracks cut where a cluster "
    "flickers at the detection limit; docs/insitu.md), a factor common to the temperatures "
    "that leaves the activation energy unchanged, but their intervals may miss the true "
    "rate; where clusters hop far less than once per frame (a fixed frame time at low "
    "temperature) links between neighbouring clusters dominate and the rate reads high "
    "(250 K, 1 s frames: 25.6 s⁻¹ for 3.2)"
)


def mobility_tracks(
    tracks: pd.DataFrame,
    *,
    max_step_A: float = 8.0,
    link_cost: float = MOBILITY_LINK_COST,
) -> pd.DataFrame:
    """Detections tracked again for the cluster hop rate (Pb⁰ mobility), with strict links.

    The lineage tracker (:func:`track_clusters`, ends and births 6 nats) keeps a track
    going through a frame where its cluster went undetected by linking it to a neighbour
    detected for the first time 4-10 Å away: right for the lineage (births, merges), wrong
    for a hop rate, where such steps carried 83 % of Σ|Δr|² on the demo's mobility series.
    Here ends and births cost ``link_cost`` nats, so the track ends instead (demo kinetics
    over 24 seeds, moment estimator: Ea RMS 0.094 → 0.046 eV; docs/insitu.md, kinetics).

    Parameters
    ----------
    tracks : DataFrame
        One series' detections (``frame``, ``x_A``, ``y_A`` and ``n_atoms`` or
        ``area_A2``); a ``track_id`` column is replaced.
    max_step_A : float
        Largest displacement between frames, Å.
    link_cost : float
        End and birth cost, nats (> 0).

    Returns
    -------
    DataFrame
        The detections with the strict ``track_id``; ``attrs["mobility_tracks"]`` records
        how they were linked (``tracks = "strict"``, end and birth costs in nats,
        ``max_step_A``), for the summary that uses them.
    """
    refuse_text_numbers(locals())
    if not isinstance(tracks, pd.DataFrame):
        raise DataError(f"`tracks` must be a DataFrame, got {type(tracks).__name__}")
    size = None
    if "n_atoms" in tracks.columns and tracks["n_atoms"].notna().any():
        size = "n_atoms"
    elif "area_A2" in tracks.columns:
        size = "area_A2"
    det = tracks.drop(columns=["track_id"], errors="ignore")
    out, _ = track_clusters(
        det, max_step_A=max_step_A, size_column=size, end_cost=link_cost, birth_cost=link_cost
    )
    out.attrs["mobility_tracks"] = {
        "tracks": "strict",
        "end_cost_nats": float(link_cost),
        "birth_cost_nats": float(link_cost),
        "max_step_A": float(max_step_A),
    }
    return out


def lineage_events(lineage: pd.DataFrame, frames: pd.DataFrame | None = None) -> pd.DataFrame:
    """Birth / merge / death events from a lineage table, with the cumulative dose if known.

    Parameters
    ----------
    lineage : DataFrame
        From :func:`track_clusters`.
    frames : DataFrame, optional
        Per-frame table with ``frame`` and ``cumulative_dose_e_per_A2`` (and ``time_s``).

    Returns
    -------
    DataFrame
        ``frame, kind, track_id, parents`` (+ dose, time); ``kind`` is ``"birth"``,
        ``"merge"`` (coalescence), ``"death"``, ``"merge_uncertain"`` (a merge with a
        parent that was seen briefly and at noise level: possibly a spurious detection, not
        counted as a coalescence), or, for the merges that
        :func:`track_clusters` did not confirm, ``"overlap"`` (clusters seen as one blob
        in projection, separated later), ``"separation"`` (a part of such a blob seen
        again; its parent is the overlap track) and ``"unresolved"`` (tracks end where this
        one starts, but the atoms do not add up over the next frames).
    """
    refuse_text_numbers(locals())
    need = {"track_id", "origin", "fate", "start_frame", "end_frame", "parents"}
    if not need <= set(lineage.columns):
        raise DataError(f"`lineage` lacks columns {sorted(need - set(lineage.columns))}")
    ev = []
    for r in lineage.itertuples(index=False):
        if r.origin == "nucleation":
            ev.append((r.start_frame, "birth", r.track_id, []))
        elif r.origin in ("merge", "merge_uncertain", "overlap", "separation", "unresolved"):
            ev.append((r.start_frame, r.origin, r.track_id, list(r.parents)))
        if r.fate == "death":
            ev.append((r.end_frame + 1, "death", r.track_id, []))
    out = pd.DataFrame(ev, columns=["frame", "kind", "track_id", "parents"])
    out = out.sort_values(["frame", "kind", "track_id"]).reset_index(drop=True)
    if frames is not None and len(out):
        cols = [c for c in ("time_s", "cumulative_dose_e_per_A2") if c in frames.columns]
        out = out.merge(frames[["frame", *cols]], on="frame", how="left")
    return out


# --- global (ILP) frame-pair assignment with explicit merge hypotheses --------------------
# costs are negative log-likelihoods (natural units); a hypothesis set that explains the
# frame pair with the smallest total cost is chosen (set partitioning, solved exactly)
_END_COST = 6.0  # a tracked cluster ends (death, or leaves the detectable range)
_BIRTH_COST = 6.0  # a detection starts a new track (nucleation, or grows into range)
_MERGE_COST = 3.0  # prior cost of a coalescence hypothesis (beyond its likelihood)
_GAP_COST = 2.0  # per missed frame when a track is re-linked after a gap
_LONG_HOP_W = 0.05  # weight of the long-hop component of the displacement model
_GROWTH_SIG = 0.3  # spread of the log growth per frame by attachment (one-sided)
_SIZE_PRIOR_W = 2.0  # birth / end cost per detection limit of size above it
# ... bounded: on images a detection of any size starts or ends a track (a cluster revealed
# when the neighbour it overlapped in projection coalesces or moves away, one re-detected
# after more than `gap_frames` missed frames, a blob the detection splits), so a large
# birth is rare but not e^-14 rare; unbounded, a parent that coalesces was linked to a
# large new detection 30-70 Å away rather than paying its birth (umerge3: the first cause
# of missed merges on images; 4 nats chosen on 24 tuning image series from {3, 4})
_SIZE_PEN_MAX = 4.0
_LONG_HOP_L = 5.0  # rms of the long-hop component, in units of max_step_A
_REDETECT = True  # reject merges whose merged-away parent is re-detected
_REDETECT_N = 2.0  # ... as a new detection of at least this many detection limits
_REDETECT_E = 0.2  # ... or nearer to it than the product, sizes known within this error


def _disp_nll(d2: np.ndarray, s2: np.ndarray, L2: float, w: float | None = None) -> np.ndarray:
    """-log of a 2-D two-component Gaussian displacement density at squared distance d2."""
    w = _LONG_HOP_W if w is None else w
    a = (1 - w) * np.exp(-d2 / (2 * s2)) / (2 * np.pi * s2)
    b = w * np.exp(-d2 / (2 * L2)) / (2 * np.pi * L2)
    return -np.log(a + b + 1e-300)


def _size_nll(r: np.ndarray, s2: np.ndarray, frames: float = 1.0) -> np.ndarray:
    """-log-likelihood (up to a constant) of a log size ratio ``r`` (after / before):
    count errors both ways, growth by attachment over ``frames`` frames widens the
    positive side."""
    return 0.5 * r**2 / np.where(r > 0, s2 + frames * _GROWTH_SIG**2, s2)


def _solve_partition(
    cost: np.ndarray, src: list, tgt: list, n_rows: int, n_src: int, force: int | None = None
) -> np.ndarray | None:
    """Exact set partitioning (each source and each detection in one hypothesis), HiGHS;
    ``force``: a hypothesis that must be in the set (None when that is infeasible)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    use = np.flatnonzero(np.isfinite(cost))
    ri, ci = [], []
    for col, h in enumerate(use):
        for k in src[h]:
            ri.append(k)
            ci.append(col)
        for t in tgt[h]:
            ri.append(n_src + t)
            ci.append(col)
    A = coo_matrix((np.ones(len(ri)), (ri, ci)), shape=(n_rows, len(use))).tocsr()
    lb = np.zeros(len(use))
    if force is not None:
        lb[use == force] = 1.0
    res = milp(
        cost[use],
        constraints=LinearConstraint(A, 1, 1),
        integrality=np.ones(len(use)),
        bounds=Bounds(lb, 1),
    )
    if res.x is None:
        if force is not None:
            return None
        raise RuntimeError("track assignment failed")  # pragma: no cover - always feasible
    return use[res.x > 0.5]


# nats: the near-best hypothesis sets of a frame pair weighed on the pairs ahead
# (1, 2.5, 6 tried on the tuning truth series: 72, 71, 70 of 84 merges found)
_LOOK_MARGIN = 1.0
_POP_PRIOR = True


class _GState:
    """Mutable state of the frame-pair tracker (copied to weigh a decision on the frames
    ahead): segment of each row, mobility sums, first frame, recent sizes, merges, their
    log-likelihood margins, absorbed segments, ends open for gap closing, next id."""

    __slots__ = (
        "seg",
        "mob",
        "seg_start",
        "seg_sizes",
        "parents_of",
        "merge_llr",
        "absorbed",
        "open_ends",
        "next_id",
        "pop_s2",
    )

    def __init__(self, n: int) -> None:
        self.seg = np.full(n, -1)
        self.mob: dict[int, list[float]] = {}  # seg -> [sum of squared hops, n hops, prior s2]
        self.seg_start: dict[int, int] = {}
        self.seg_sizes: dict[int, list[float]] = {}
        self.parents_of: dict[int, list[int]] = {}  # merge child segment -> parent segments
        self.merge_llr: dict[int, float] = {}  # merge child segment -> log-likelihood margin
        self.absorbed: dict[int, int] = {}
        # ended segments waiting for gap closing: seg -> (last row, child segment or -1)
        self.open_ends: dict[int, tuple[int, int]] = {}
        self.next_id = 0
        self.pop_s2 = 0.0  # mobility prior of a new track (0: the fixed prior)

    def copy(self) -> _GState:
        c = _GState.__new__(_GState)
        c.seg = self.seg.copy()
        c.mob = {k: list(v) for k, v in self.mob.items()}
        c.seg_start = dict(self.seg_start)
        c.seg_sizes = {k: list(v) for k, v in self.seg_sizes.items()}
        c.parents_of = {k: list(v) for k, v in self.parents_of.items()}
        c.merge_llr = dict(self.merge_llr)
        c.absorbed = dict(self.absorbed)
        c.open_ends = dict(self.open_ends)
        c.next_id = self.next_id
        c.pop_s2 = self.pop_s2
        return c


class _PairHyps(NamedTuple):
    """Hypotheses of one frame pair: frames, rows of fa and fb, gap sources (segment, last
    row, child), source rows, costs (nats), sources and targets of each, merge undos."""

    fa: int
    fb: int
    a: list[int]
    b: list[int]
    gsrc: list[tuple[int, int, int]]
    srcs: list[int]
    cost: np.ndarray
    src: list[tuple[int, ...]]
    tgt: list[tuple[int, ...]]
    split_info: dict[int, tuple[int, int, int, int]]


def _track_global(
    df: pd.DataFrame,
    max_step: float,
    merge_margin: float,
    gap: int,
    size_col: str | None,
    frac: float,
    size_rel_err: float,
    min_merge: float = 0.0,
    min_frames: int = 1,
    window: int = 1,
    lookahead: int = 0,
    lookahead_margin: float | None = None,
    end_cost: float = _END_COST,
    birth_cost: float = _BIRTH_COST,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, float]]:

    df, size, serr, xy, fr, rad = _track_inputs(df, size_col)
    rel = np.maximum(float(size_rel_err), serr / np.maximum(size, 1.0))
    sig0 = 0.5 * max_step  # prior rms hop of a track without history, Å
    L2 = (_LONG_HOP_L * max_step) ** 2  # long-hop scale, Å²
    pos2 = (max_step / 8.0) ** 2  # position error floor, Å²
    k0 = 2.0  # pseudo-count of the mobility prior
    # nucleated clusters enter the detectable range small, and a cluster does not shrink
    # out of it in one frame: births and ends cost more the larger the cluster, on the
    # scale of the detection limit (5th percentile of the detected sizes)
    if size_col:
        n_lim = max(float(np.percentile(size, 5)), 1.0)
        size_pen = np.minimum(_SIZE_PRIOR_W * np.clip(size - n_lim, 0, None) / n_lim, _SIZE_PEN_MAX)
    else:
        n_lim = 1.0
        size_pen = np.zeros(len(df))
    frames = np.unique(fr)
    rows_of = {f: np.flatnonzero(fr == f) for f in frames}
    if lookahead_margin is None:
        lookahead_margin = _LOOK_MARGIN
    st = _GState(len(df))

    def new_seg(st: _GState, row: int, prior_s2: float | None = None) -> int:
        if prior_s2 is None:
            prior_s2 = st.pop_s2 if st.pop_s2 > 0 else sig0**2
        s = st.next_id
        st.next_id += 1
        st.seg[row] = s
        st.mob[s] = [0.0, 0.0, prior_s2]
        st.seg_start[s] = int(fr[row])
        st.seg_sizes[s] = [float(size[row])]
        return s

    def s2_of(st: _GState, s: int) -> float:
        ss, n, p = st.mob[s]
        return (k0 * p + ss) / (k0 + n)

    def size_ok(st: _GState, r: int) -> float:
        # smoothed size of the track ending at row r, plus one standard error: a parent is
        # a merge parent unless its size is significantly below `min_merge`
        n = st.seg_sizes[int(st.seg[r])][-3:]
        return max(float(np.median(n)), n[-1]) * (1 + rel[r])

    def hypotheses(st: _GState, fa: int, fb: int) -> _PairHyps:
        """Every hypothesis of the frame pair fa -> fb with its cost (given the state)."""
        seg, parents_of, seg_start, open_ends = st.seg, st.parents_of, st.seg_start, st.open_ends
        a = [int(i) for i in rows_of[fa]]
        b = [int(j) for j in rows_of[fb]]
        dt = int(fb - fa)
        gsrc = [
            (s, r, c) for s, (r, c) in open_ends.items() if 0 < fb - fr[r] <= gap + 1 and fr[r] < fa
        ]
        srcs = a + [r for _, r, _ in gsrc]
        n_a = len(a)
        hyp_cost: list[float] = []
        hyp_src: list[tuple[int, ...]] = []
        hyp_tgt: list[tuple[int, ...]] = []
        split_info: dict[int, tuple[int, int, int, int]] = {}
        for k in range(len(srcs)):
            hyp_cost.append(end_cost + size_pen[srcs[k]] if k < n_a else 0.0)
            hyp_src.append((k,))
            hyp_tgt.append(())
        for t in range(len(b)):
            hyp_cost.append(birth_cost + size_pen[b[t]])
            hyp_src.append(())
            hyp_tgt.append((t,))
        if srcs and b:
            S = np.array(srcs)
            B = np.array(b)
            d2 = np.sum((xy[S][:, None, :] - xy[B][None, :, :]) ** 2, axis=2)
            ddt = (fb - fr[S]).astype(float)[:, None]
            s2 = np.array([s2_of(st, int(seg[r])) for r in S])[:, None] * ddt + 2 * pos2
            c_d = _disp_nll(d2, s2, L2 * ddt)
            if dt - 1 > gap:
                # frames without any detection between fa and fb: a link would bridge more
                # missed frames than `gap_frames` allows (continuation, flicker and merge
                # hypotheses of the fa rows all need c_d)
                c_d[:n_a] = np.inf
            if size_col:
                lr = np.log((size[B][None, :] + 1) / (size[S][:, None] + 1))
                e2 = rel[S][:, None] ** 2 + rel[B][None, :] ** 2
                c_s = _size_nll(lr, e2 * 1.0)
            else:
                c_s = np.zeros_like(d2)
            cont = (
                c_d + c_s + np.where(np.arange(len(S))[:, None] < n_a, 0.0, _GAP_COST * (ddt - 1))
            )
            cap = end_cost + birth_cost + size_pen[S][:, None] + size_pen[B][None, :]
            # a gap source already paid its end cost: linking it refunds that cost, so a
            # gap closure competes with a birth as a continuation competes with end+birth
            # (not a merged-away parent: re-finding it undoes a merge, see below)
            ended = np.array([False] * n_a + [c < 0 for _, _, c in gsrc])
            refund = np.where(ended, end_cost + size_pen[S], 0.0)[:, None]
            for k, t in zip(*np.nonzero(cont < cap), strict=True):
                hyp_cost.append(float(cont[k, t] - refund[k, 0]))
                hyp_src.append((int(k),))
                hyp_tgt.append((int(t),))
            # flicker: a merge product of the last frame that separates again into two
            # detections matching its two parents (mass and position) was a blob of the
            # segmentation, not a coalescence
            gidx_of = {int(sg): len(a) + ii for ii, (sg, _r, _c) in enumerate(gsrc)}
            for k in range(n_a):
                c = int(seg[a[k]])
                ps = parents_of.get(c, [])
                if seg_start[c] != fa or len(ps) != 2 or not all(p in gidx_of for p in ps):
                    continue
                pr = [srcs[gidx_of[p]] for p in ps]
                cand = np.flatnonzero(c_d[k] < cap[k])
                cand = cand[np.argsort(c_d[k, cand])][:6]
                for ii, t1 in enumerate(cand):
                    for t2 in cand[ii + 1 :]:
                        best = None
                        for u, v in ((t1, t2), (t2, t1)):
                            cc = 0.0
                            for prow, t in zip(pr, (u, v), strict=True):
                                dd = float(np.sum((xy[b[t]] - xy[prow]) ** 2))
                                sp = s2_of(st, int(seg[prow])) * (fb - fr[prow]) + 2 * pos2
                                cc += float(_disp_nll(np.array(dd), np.array(sp), L2))
                                if size_col:
                                    lr = np.log((size[b[t]] + 1) / (size[prow] + 1))
                                    cc += float(
                                        _size_nll(
                                            np.array(lr), np.array(rel[prow] ** 2 + rel[b[t]] ** 2)
                                        )
                                    )
                            if best is None or cc < best[0]:
                                best = (cc, u, v)
                        cc, u, v = best
                        hyp_cost.append(cc + _MERGE_COST)
                        hyp_src.append((k, gidx_of[ps[1]]))
                        hyp_tgt.append((int(u), int(v)))
                        split_info[len(hyp_cost) - 1] = (ps[0], ps[1], int(u), int(v))
            # merge hypotheses: 2 or 3 current tracks -> one detection
            if n_a >= 2:
                sa = np.array([s2_of(st, int(seg[r])) for r in a])
                for t, j in enumerate(b):
                    cand = np.flatnonzero(c_d[:n_a, t] < cap[:n_a, t] + end_cost)
                    if len(cand) < 2:
                        continue
                    cand = cand[np.argsort(c_d[cand, t])][:8]
                    groups = [(p, q) for ii, p in enumerate(cand) for q in cand[ii + 1 :]]
                    groups += [
                        (p, q, u)
                        for ii, p in enumerate(cand[:6])
                        for jj, q in enumerate(cand[ii + 1 : 6])
                        for u in cand[ii + jj + 2 : 6]
                    ]
                    for gidx in groups:
                        rows = np.array([a[g] for g in gidx])
                        n = size[rows]
                        ntot = float(n.sum())
                        if size_col:
                            tol = 2 * float(
                                np.sqrt(np.sum((rel[rows] * n) ** 2) + (rel[j] * size[j]) ** 2)
                            )
                            if size[j] < frac * ntot - tol:
                                continue
                            r = np.log((size[j] + 1) / (ntot + 1))
                            e2 = float(np.sum((rel[rows] * n) ** 2)) / ntot**2 + rel[j] ** 2
                            cm = float(_size_nll(np.array(r), np.array(e2)))
                        else:
                            cm = 0.0
                        wgt = n / ntot
                        com = wgt @ xy[rows]
                        sp2 = float(wgt @ sa[list(gidx)]) * dt + 2 * pos2
                        cm += float(_disp_nll(np.sum((xy[j] - com) ** 2), np.array(sp2), L2 * dt))
                        m = int(np.argmax(n))
                        for g in range(len(rows)):
                            if g == m:
                                continue
                            gapd = max(
                                0.0,
                                float(np.hypot(*(xy[rows[g]] - xy[rows[m]])))
                                - rad[rows[g]]
                                - rad[rows[m]]
                                - merge_margin,
                            )
                            sr2 = (sa[gidx[g]] + sa[gidx[m]]) * dt
                            cm += -np.log(
                                (1 - _LONG_HOP_W) * np.exp(-(gapd**2) / (2 * sr2))
                                + _LONG_HOP_W * np.exp(-(gapd**2) / (2 * L2 * dt))
                                + 1e-300
                            )
                        cm += _MERGE_COST
                        if cm < birth_cost + size_pen[j] + sum(
                            end_cost + size_pen[a[g]] for g in gidx
                        ):
                            hyp_cost.append(cm)
                            hyp_src.append(tuple(int(g) for g in gidx))
                            hyp_tgt.append((t,))
        return _PairHyps(
            fa, fb, a, b, gsrc, srcs, np.asarray(hyp_cost, float), hyp_src, hyp_tgt, split_info
        )

    def vetoes(P: _PairHyps, chosen: np.ndarray) -> list[int]:
        """Chosen merges whose merged-away parent is re-detected as a new cluster."""
        a, b, hyp_src, hyp_tgt = P.a, P.b, P.src, P.tgt
        split_info = P.split_info
        births = [b[hyp_tgt[h][0]] for h in chosen if not hyp_src[h]]
        out = []
        for h in chosen:
            if len(hyp_src[h]) < 2 or h in split_info or not births or not _REDETECT:
                continue
            rows = [a[k] for k in hyp_src[h]]
            keep = max(rows, key=lambda r: size[r])
            for r in rows:
                if r == keep:
                    continue
                # a re-detection is a new cluster of the parent's size within long-hop
                # reach that is either clearly above the detection limit or nearer to
                # the parent than the product is (the parent hopped away from, not
                # into, its neighbour; a small cluster that hops far in one frame is
                # otherwise read as a coalescence plus a birth)
                d_prod = float(np.hypot(*(xy[b[hyp_tgt[h][0]]] - xy[r])))
                for j in births:
                    dd = float(np.hypot(*(xy[j] - xy[r])))
                    lr = np.log((size[j] + 1) / (size[r] + 1))
                    e = float(np.hypot(rel[j], rel[r]))
                    big = size[j] >= _REDETECT_N * n_lim
                    closer = size[j] >= n_lim and dd < d_prod and e <= _REDETECT_E
                    if dd <= np.sqrt(L2) and abs(lr) <= 2 * e and (big or closer):
                        out.append(h)
        return out

    def choose(P: _PairHyps) -> tuple[np.ndarray, np.ndarray]:
        """The best hypothesis set (set partitioning); a merge whose merged-away parent is
        re-detected as a new cluster of its size within long-hop reach is a hop, not a
        coalescence: dropped and solved again."""
        hyp_cost_a = P.cost.copy()
        n_rows = len(P.srcs) + len(P.b)
        for _ in range(len(hyp_cost_a) + 1):
            chosen = _solve_partition(hyp_cost_a, P.src, P.tgt, n_rows, len(P.srcs))
            bad = vetoes(P, chosen)
            if not bad:
                break
            hyp_cost_a[bad] = np.inf
        return hyp_cost_a, chosen

    def apply(
        st: _GState, P: _PairHyps, hyp_cost_a: np.ndarray, chosen: np.ndarray, llr: bool = True
    ) -> None:
        """Commit the hypotheses ``chosen`` of the frame pair to the state."""
        a, b, gsrc, srcs, hyp_src, hyp_tgt = P.a, P.b, P.gsrc, P.srcs, P.src, P.tgt
        split_info, n_a, fa, fb = P.split_info, len(P.a), P.fa, P.fb
        seg, mob, seg_sizes, parents_of = st.seg, st.mob, st.seg_sizes, st.parents_of
        open_ends, absorbed, merge_llr = st.open_ends, st.absorbed, st.merge_llr
        seg_start = st.seg_start
        if lookahead and _POP_PRIOR:
            # weighing decisions on the pairs ahead compares new tracks with continuing
            # ones: a new track's mobility prior is that of the tracked population
            # (median over tracks with >= 3 hops), not the wide fixed prior
            v = [s2_of(st, s) for s in {int(seg[r]) for r in a} if mob[s][1] >= 3]
            st.pop_s2 = float(np.median(v)) if v else 0.0
        gap_of = {len(a) + ii: (s, r, c) for ii, (s, r, c) in enumerate(gsrc)}
        # confidence of each merge: how much less likely the best explanation of the frame
        # pair without it is (log-likelihood margin; re-solved with the merge forbidden)
        llr_of: dict[int, float] = {}
        base_cost = float(hyp_cost_a[chosen].sum())
        for h in chosen if llr else ():
            if len(hyp_src[h]) >= 2 and h not in split_info and hyp_tgt[h]:
                alt = hyp_cost_a.copy()
                alt[h] = np.inf
                ch2 = _solve_partition(alt, hyp_src, hyp_tgt, len(srcs) + len(b), len(srcs))
                llr_of[int(b[hyp_tgt[h][0]])] = float(alt[ch2].sum()) - base_cost
        for h in chosen:
            ks = hyp_src[h]
            if h in split_info:
                # undo the merge: the product's segment continues the first parent, the
                # second parent's track is re-linked across the blob frame
                p0, p1, u, v = split_info[h]
                c = int(seg[a[ks[0]]])
                parents_of[c] = [p0]
                for sg, r0, j in ((c, a[ks[0]], b[u]), (p1, srcs[ks[1]], b[v])):
                    seg[j] = sg
                    seg_sizes[sg].append(float(size[j]))
                    mob[sg][0] += float(np.sum((xy[j] - xy[r0]) ** 2)) / (fb - fr[r0])
                    mob[sg][1] += 1.0
                open_ends.pop(p1, None)
                absorbed.pop(p1, None)
                continue
            t = hyp_tgt[h][0] if hyp_tgt[h] else -1
            if t < 0:
                if ks[0] < n_a:  # a current track ends: open for gap closing
                    open_ends[int(seg[a[ks[0]]])] = (a[ks[0]], -1)
                continue
            j = b[t]
            if not ks:
                new_seg(st, j)
            elif len(ks) == 1:
                r = srcs[ks[0]]
                s = int(seg[r])
                seg[j] = s
                mob[s][0] += float(np.sum((xy[j] - xy[r]) ** 2)) / (fb - fr[r])
                mob[s][1] += 1.0
                seg_sizes[s].append(float(size[j]))
                if ks[0] >= n_a:  # gap closing
                    _s, _r, child = gap_of[ks[0]]
                    open_ends.pop(s, None)
                    absorbed.pop(s, None)
                    if child >= 0 and s in parents_of.get(child, []):
                        # flicker: a "merged" cluster is seen again -> no merge
                        parents_of[child].remove(s)
            else:
                rows = [a[k] for k in ks]

                def big(r: int, fa: int = int(fa)) -> bool:
                    s = int(seg[r])
                    ok = size_col is None or size_ok(st, r) >= min_merge
                    return bool(ok and fa - seg_start[s] + 1 >= min_frames)

                bigs = [r for r in rows if big(r)]
                wsum = float(sum(size[r] for r in rows))
                p2 = float(sum(size[r] * s2_of(st, int(seg[r])) for r in rows)) / wsum
                if len(bigs) >= 2:
                    c = new_seg(st, j, p2)
                    parents_of[c] = [int(seg[r]) for r in bigs]
                    merge_llr[c] = llr_of.get(int(j), np.nan)
                    keep = c
                else:
                    main = max(rows, key=lambda r: size[r])
                    keep = int(seg[main])
                    seg[j] = keep
                    seg_sizes[keep].append(float(size[j]))
                    mob[keep][0] += float(np.sum((xy[j] - xy[main]) ** 2))
                    mob[keep][1] += 1.0
                for r in rows:
                    s = int(seg[r])
                    if s == keep:
                        continue
                    if r not in bigs or len(bigs) < 2:
                        absorbed[s] = keep
                    open_ends[s] = (r, keep)
        st.open_ends = {k: v for k, v in open_ends.items() if P.fb - fr[v[0]] <= gap}

    pairs = list(zip(frames[:-1], frames[1:], strict=True))

    def plan(
        st: _GState, k: int, depth: int, total: bool = True
    ) -> tuple[_PairHyps, np.ndarray, np.ndarray, float]:
        """Decision of frame pair k: the best hypothesis set of the pair alone (depth 0),
        or, with ``depth`` pairs ahead, the set among the near-best ones (each merge of
        the pair forced or forbidden, within ``lookahead_margin`` nats) whose own cost plus
        the best cost of the next pairs given it is least (multiple-hypothesis tracking
        with N-scan-back pruning, Reid 1979; Cox & Hingorani 1996)."""
        P = hypotheses(st, *pairs[k])
        hyp_cost_a, chosen = choose(P)
        base = float(hyp_cost_a[chosen].sum())
        if depth <= 0 or k + 1 >= len(pairs):
            return P, hyp_cost_a, chosen, base
        cands = [chosen] + alternatives(P, hyp_cost_a, chosen, base)
        if len(cands) == 1 and not total:
            # the decision is not in doubt and no caller needs the cost of the pairs ahead
            return P, hyp_cost_a, chosen, base
        best = (np.inf, chosen)
        for ch in cands:
            c1 = float(hyp_cost_a[ch].sum())
            s1 = st.copy()
            apply(s1, P, hyp_cost_a, ch, llr=False)
            tot = c1 + plan(s1, k + 1, depth - 1)[3]
            if tot < best[0] - 1e-9:
                best = (tot, ch)
        return P, hyp_cost_a, best[1], best[0]

    def alternatives(
        P: _PairHyps, hyp_cost_a: np.ndarray, chosen: np.ndarray, base: float
    ) -> list[np.ndarray]:
        """Near-best hypothesis sets of a frame pair: each merge hypothesis forced in (when
        not chosen) or out (when chosen), kept within ``lookahead_margin`` nats of the
        best and when no merged-away parent is re-detected."""
        n_rows = len(P.srcs) + len(P.b)
        chosen_set = {int(h) for h in chosen}
        cov_s = {s: int(h) for h in chosen for s in P.src[h]}
        cov_t = {t: int(h) for h in chosen for t in P.tgt[h]}
        out: list[np.ndarray] = []
        seen = {tuple(sorted(chosen_set))}
        for h in range(len(hyp_cost_a)):
            if len(P.src[h]) < 2 or h in P.split_info or not P.tgt[h]:
                continue
            if not np.isfinite(hyp_cost_a[h]):
                continue
            if h in chosen_set:
                alt = hyp_cost_a.copy()
                alt[h] = np.inf
                ch = _solve_partition(alt, P.src, P.tgt, n_rows, len(P.srcs))
            else:
                # the merge forced in, the hypotheses it displaces dropped, what they
                # explained besides ends or is born (a local repair: an upper bound of
                # the best set with the merge, and the swap a crowded frame hides)
                covering = {cov_s[s] for s in P.src[h]} | {cov_t[t] for t in P.tgt[h]}
                lost_s = {s for c in covering for s in P.src[c]} - set(P.src[h])
                lost_t = {t for c in covering for t in P.tgt[c]} - set(P.tgt[h])
                ch = np.array(
                    sorted(
                        (chosen_set - covering) | {h} | lost_s | {len(P.srcs) + t for t in lost_t}
                    )
                )
            if ch is None or float(hyp_cost_a[ch].sum()) - base > lookahead_margin:
                continue
            key = tuple(sorted(int(x) for x in ch))
            if key in seen or vetoes(P, ch):
                continue
            seen.add(key)
            out.append(ch)
        return out

    for i in rows_of[frames[0]]:
        new_seg(st, int(i))
    for k in range(len(pairs)):
        P, hyp_cost_a, chosen, _ = plan(st, k, int(lookahead), total=False)
        apply(st, P, hyp_cost_a, chosen)
    seg, parents_of, absorbed, merge_llr = st.seg, st.parents_of, st.absorbed, st.merge_llr
    mob, next_id = st.mob, st.next_id
    if size_col and window > 1:
        next_id = _window_relink(
            seg, parents_of, absorbed, merge_llr, next_id,
            size=size, rel=rel, xy=xy, fr=fr, rad=rad, size_pen=size_pen,
            s2_of=lambda s: s2_of(st, s) if s in mob else sig0**2, L2=L2, pos2=pos2,
            merge_margin=merge_margin, min_merge=min_merge, min_frames=min_frames,
            window=window, end_cost=end_cost, birth_cost=birth_cost,
        )  # fmt: skip
    # a merge left with one parent (the others were seen again) is a continuation
    # (_build_lineage relabels a single-parent child as its parent's track)
    merges = [(p, c) for c, ps in parents_of.items() for p in ps]
    df["track_id"] = seg
    mg = np.asarray(merges, int).reshape(-1, 2)
    tracks, lineage = _build_lineage(df, mg, size_col, 0.0, absorbed)
    return tracks, lineage, merge_llr


# --- lineage decision over a window of frames ----------------------------------------------
_WIN_MARGIN = 0.0  # nats the merge must win by (0, 1, 2, 3 tried: no gain on tune)


def _window_relink(
    seg: np.ndarray,
    parents_of: dict[int, list[int]],
    absorbed: dict[int, int],
    merge_llr: dict[int, float],
    next_id: int,
    *,
    size: np.ndarray,
    rel: np.ndarray,
    xy: np.ndarray,
    fr: np.ndarray,
    rad: np.ndarray,
    size_pen: np.ndarray,
    s2_of,
    L2: float,
    pos2: float,
    merge_margin: float,
    min_merge: float,
    min_frames: int,
    window: int,
    end_cost: float = _END_COST,
    birth_cost: float = _BIRTH_COST,
) -> int:
    """Re-link "a continuation plus a hop" into "a merge plus a new detection" when the
    counts pooled over a window of frames favour it (segments edited in place).

    At each frame boundary f-1 → f where a segment B continues and a neighbour A within
    contact reach (the two radii plus ``merge_margin``) either continues onto another
    detection or ends (death), the two explanations are scored with the frame-pair
    model of :func:`_track_global` (the same size, displacement and prior terms) but with
    each count replaced by the median over up to ``window`` frames of the segment on
    that side of the boundary (at a boundary where B's count rises and A's falls), and
    its relative error by the median error over
    sqrt(frames), the growth allowance by the frames between the two sides' mean frames:
    B grows and A continues
    (or ends), against A and B merge into B's detection at f and A's detection at f (if
    any) is a new cluster.  The merge is taken when it is the likelier explanation by
    ``_WIN_MARGIN`` nats; the best pairs are re-linked first, each segment once per
    boundary.  One frame pair's counts often do not favour a coalescence (the product
    under-counted in its first frame, a parent over-counted in its last), whereas a
    coalescence is a step in the counts that persists (Jaqaman et al., Nat. Methods 5,
    695 (2008): merging decided on the segments, not on one frame pair).
    """
    W = int(window)
    rows_of_seg: dict[int, list[int]] = {}
    for r in np.argsort(fr, kind="stable"):
        rows_of_seg.setdefault(int(seg[r]), []).append(int(r))
    merged_parent = {p for ps in parents_of.values() for p in ps}
    frames = np.unique(fr)

    def at(s: int) -> dict[int, int]:
        return {int(fr[r]): r for r in rows_of_seg.get(s, [])}

    def pooled(rows: list[int]) -> tuple[float, float]:
        n = size[rows]
        e = float(np.median(rel[rows])) / np.sqrt(len(rows))
        return float(np.median(n)), e

    def span(before: list[int], after: list[int]) -> float:
        # frames of growth between the pooled counts (the mean frames of either side)
        return float(np.mean(fr[after]) - np.mean(fr[before]))

    def big(rows_before: list[int], s_start: int, f: int) -> bool:
        n = size[rows_before[-3:]]
        ok = max(float(np.median(n)), float(n[-1])) * (1 + rel[rows_before[-1]]) >= min_merge
        return bool(ok and f - s_start >= min_frames)

    for f in frames[1:]:
        f = int(f)
        live = {int(seg[r]) for r in np.flatnonzero(fr == f - 1)}
        info = {}
        for s in live:
            rows = rows_of_seg[s]
            before = [r for r in rows if f - W <= fr[r] < f]
            after = [r for r in rows if f <= fr[r] < f + W]
            nxt = [r for r in rows if fr[r] == f]
            info[s] = (before, after, nxt[0] if nxt else -1, int(fr[rows[0]]))
        cands = []
        for b, (bb, ba, b_next, b_start) in info.items():
            if b_next < 0 or not big(bb, b_start, f):
                continue
            rb = bb[-1]
            for a, (ab, aa, a_next, a_start) in info.items():
                ra = ab[-1]
                # A ends here (not merged, absorbed or re-linked after a gap) or goes on
                ends = ra == rows_of_seg[a][-1] and a not in merged_parent and a not in absorbed
                if a == b or (a_next < 0 and not ends):
                    continue
                # the counts step at this boundary: B gains, A loses (or ends)
                if size[b_next] <= size[rb] or (a_next >= 0 and size[a_next] >= size[ra]):
                    continue
                d = float(np.hypot(*(xy[ra] - xy[rb])))
                if d > rad[ra] + rad[rb] + merge_margin or not big(ab, a_start, f):
                    continue
                nb0, eb0 = pooled(bb)
                nb1, eb1 = pooled(ba)
                na0, ea0 = pooled(ab)
                sb, sa = s2_of(b), s2_of(a)
                # B continues (growth allowed), A continues or ends
                gb = span(bb, ba)
                c_cont = float(_size_nll(np.log((nb1 + 1) / (nb0 + 1)), eb0**2 + eb1**2, gb))
                c_cont += float(_disp_nll(np.sum((xy[b_next] - xy[rb]) ** 2), sb + 2 * pos2, L2))
                if a_next >= 0:
                    na1, ea1 = pooled(aa)
                    ga = span(ab, aa)
                    c_cont += float(_size_nll(np.log((na1 + 1) / (na0 + 1)), ea0**2 + ea1**2, ga))
                    c_cont += float(
                        _disp_nll(np.sum((xy[a_next] - xy[ra]) ** 2), sa + 2 * pos2, L2)
                    )
                else:
                    c_cont += end_cost + size_pen[ra]
                # A and B merge into B's detection at f; A's detection at f is new
                tot = na0 + nb0
                e2 = ((ea0 * na0) ** 2 + (eb0 * nb0) ** 2) / tot**2 + eb1**2
                c_merge = _MERGE_COST + float(_size_nll(np.log((nb1 + 1) / (tot + 1)), e2, gb))
                w = np.array([na0, nb0]) / tot
                com = w @ xy[[ra, rb]]
                c_merge += float(
                    _disp_nll(np.sum((xy[b_next] - com) ** 2), w @ [sa, sb] + 2 * pos2, L2)
                )
                if a_next >= 0:
                    c_merge += birth_cost + size_pen[a_next]
                gain = c_cont - c_merge
                if gain > _WIN_MARGIN:
                    cands.append((gain, a, b))
        used: set[int] = set()
        for gain, a, b in sorted(cands, reverse=True):
            if a in used or b in used:
                continue
            used.update((a, b))
            c = next_id
            next_id += 1
            moved = {b: c}
            if info[a][2] >= 0:
                moved[a] = next_id
                next_id += 1
            for old, new in moved.items():
                keep = [r for r in rows_of_seg[old] if fr[r] < f]
                go = [r for r in rows_of_seg[old] if fr[r] >= f]
                rows_of_seg[old] = keep
                rows_of_seg[new] = go
                seg[go] = new
                # later events of the moved part refer to the new segment
                for ch, ps in parents_of.items():
                    if (
                        old in ps
                        and ch != new
                        and rows_of_seg.get(ch)
                        and fr[rows_of_seg[ch][0]] > f
                    ):
                        ps[ps.index(old)] = new
                for k, v in list(absorbed.items()):
                    if v == old and rows_of_seg.get(k) and fr[rows_of_seg[k][-1]] >= f - 1:
                        absorbed[k] = new
                if old in absorbed:
                    absorbed[new] = absorbed.pop(old)
                if old in merged_parent:
                    merged_parent.discard(old)
                    merged_parent.add(new)
            parents_of[c] = [a, b]
            merged_parent.update((a, b))
            merge_llr[c] = float(gain)
    return next_id
