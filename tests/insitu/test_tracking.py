from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import DataError, ParameterError
from perovstem.insitu import lineage_events, merge_matches, merge_scores, track_clusters


def _radius(n):
    return (3 * np.asarray(n, float) * 4.95**3 / (16 * np.pi)) ** (1 / 3)


def coalescing_clusters(n_frames=40, n_start=25, box_A=200.0, step_A=1.5, birth_rate=0.6, rng=0):
    """2-D Brownian clusters that nucleate, grow and coalesce on contact (mass conserved,
    the product at the centre of mass).  Returns (detections with noise, truth merges)."""
    rng = np.random.default_rng(rng)
    alive = {}
    nid = 0
    for _ in range(n_start):
        alive[nid] = [rng.uniform(0, box_A, 2), float(rng.integers(10, 60))]
        nid += 1
    rows, merges = [], []
    for f in range(n_frames):
        for _ in range(rng.poisson(birth_rate)):
            alive[nid] = [rng.uniform(0, box_A, 2), 10.0]
            nid += 1
        for c in alive.values():
            c[0] = np.clip(c[0] + rng.normal(0, step_A, 2), 0, box_A)
            c[1] += rng.uniform(0, 2)  # growth by attachment
        merged = True
        while merged:
            merged = False
            ids = list(alive)
            for i in range(len(ids)):
                for j in range(i + 1, len(ids)):
                    a, b = alive[ids[i]], alive[ids[j]]
                    if np.hypot(*(a[0] - b[0])) < _radius(a[1]) + _radius(b[1]):
                        n = a[1] + b[1]
                        pos = (a[0] * a[1] + b[0] * b[1]) / n
                        del alive[ids[i]], alive[ids[j]]
                        alive[nid] = [pos, n]
                        merges.append((f, nid, {ids[i], ids[j]}))
                        nid += 1
                        merged = True
                        break
                if merged:
                    break
        for cid, (p, n) in alive.items():
            rows.append((f, cid, p[0], p[1], n))
    truth = pd.DataFrame(rows, columns=["frame", "cluster_id", "x_A", "y_A", "n_atoms"])
    det = truth.copy()
    det["x_A"] += rng.normal(0, 0.4, len(det))
    det["y_A"] += rng.normal(0, 0.4, len(det))
    det["n_atoms"] *= 1 + rng.normal(0, 0.07, len(det))
    return det, truth, merges


def _events(merges):
    """Truth merges of :func:`coalescing_clusters` as a KMC-style event table."""
    rows = [(f, "merge", c, sorted(ps)) for f, c, ps in merges]
    return pd.DataFrame(rows, columns=["frame", "kind", "cluster_id", "parents"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merges_identified(seed):
    det, truth, merges = coalescing_clusters(rng=seed)
    tracks, lin = track_clusters(det)
    m = merge_matches(tracks, lin, truth, _events(merges))
    obs = m[(m.source == "truth") & m.identifiable]
    assert len(obs) >= 5
    # found at the right frame, with the tracks that carried the truth parents as parents
    assert obs.parents_ok.mean() >= 0.9
    # detected merges that are not truth merges (precision)
    n_det = int((lin.origin == "merge").sum())
    assert n_det <= 1.1 * len(obs) + 1
    assert merge_scores(m)["precision"] >= 0.9


def test_births_and_identity_preserved():
    det, truth, merges = coalescing_clusters(n_start=10, birth_rate=0.3, rng=5)
    tracks, lin = track_clusters(det)
    # each truth id maps to one track id (no identity switches for non-merging clusters)
    purity = tracks.groupby("cluster_id")["track_id"].nunique()
    assert (purity == 1).mean() >= 0.95
    n_births = len(set(truth.cluster_id)) - 10 - len(merges)
    assert abs(int((lin.origin == "nucleation").sum()) - n_births) <= 2
    ev = lineage_events(
        lin, pd.DataFrame({"frame": range(40), "cumulative_dose_e_per_A2": np.arange(1, 41) * 1e3})
    )
    assert set(ev["kind"]) <= {"birth", "merge", "death"}
    assert ev["cumulative_dose_e_per_A2"].notna().all()


def test_death_not_called_merge():
    # a small cluster vanishes next to a big one whose size does not grow: a death
    rows = []
    for f in range(6):
        rows.append((f, 100.0, 100.0, 100.0))
        if f < 3:
            rows.append((f, 110.0, 100.0, 40.0))
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    assert (lin.origin == "merge").sum() == 0
    assert (lin.fate == "death").sum() == 1
    # same geometry with mass conservation is a merge
    rows2 = [(f, x, y, n + (40.0 if (f >= 3 and n == 100.0) else 0)) for f, x, y, n in rows]
    tracks, lin = track_clusters(pd.DataFrame(rows2, columns=["frame", "x_A", "y_A", "n_atoms"]))
    assert (lin.origin == "merge").sum() == 1
    assert sorted(lin.loc[lin.origin == "merge", "parents"].iloc[0]) == [0, 1]


def test_laptrack_backend_runs():
    det, truth, merges = coalescing_clusters(n_frames=15, rng=3)
    tracks, lin = track_clusters(det, method="laptrack")
    assert len(tracks) == len(det)
    assert set(lin["origin"]) <= {"first_frame", "nucleation", "merge"}


def test_bad_input():
    with pytest.raises(DataError, match="lacks"):
        track_clusters(pd.DataFrame({"frame": [0], "x_A": [1.0]}))
    with pytest.raises(DataError, match="non-finite"):
        track_clusters(
            pd.DataFrame(
                {"frame": [0, 1], "x_A": [1.0, np.nan], "y_A": [0, 0], "n_atoms": [10, 10]}
            )
        )
    with pytest.raises(ParameterError, match="max_step_A"):
        track_clusters(
            pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]}), max_step_A=0
        )
    with pytest.raises(ParameterError, match="method"):
        track_clusters(
            pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]}), method="x"
        )
    one = pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]})
    with pytest.raises(ParameterError, match="min_merge_atoms"):
        track_clusters(one, min_merge_atoms=-1)
    with pytest.raises(ParameterError, match="min_merge_frames"):
        track_clusters(one, min_merge_frames=0)
    tr, lin = track_clusters(pd.DataFrame({"frame": [], "x_A": [], "y_A": [], "n_atoms": []}))
    assert tr.empty and lin.empty


def test_small_cluster_absorbed_not_merged():
    # a 6-atom cluster vanishes next to a 100-atom one that grows by its atoms: growth by
    # attachment (below min_merge_atoms), not a coalescence event
    rows = []
    for f in range(6):
        rows.append((f, 100.0, 100.0, 100.0 + (6.0 if f >= 3 else 0.0)))
        if f < 3:
            rows.append((f, 109.0, 100.0, 6.0))
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    assert (lin.origin == "merge").sum() == 0
    small = lin[lin.n_atoms_start < 10].iloc[0]
    big = lin[lin.n_atoms_start >= 10].iloc[0]
    assert small.fate == "absorbed" and small.merged_into == big.track_id
    assert big.fate == "alive" and big.end_frame == 5
    ev = lineage_events(lin)
    assert "death" not in set(ev["kind"]) and "merge" not in set(ev["kind"])
    # the same with a 30-atom partner is a merge
    rows2 = [(f, x, y, 30.0 if n == 6.0 else (130.0 if n == 106.0 else n)) for f, x, y, n in rows]
    tracks, lin = track_clusters(pd.DataFrame(rows2, columns=["frame", "x_A", "y_A", "n_atoms"]))
    assert (lin.origin == "merge").sum() == 1


def test_long_hop_is_not_a_merge():
    # cluster B hops 13 Å (more than max_step_A) in one frame while its neighbour A grows
    # slowly: B is continued (second, size-consistent pass), not merged into A + reborn
    rows = []
    for f in range(6):
        rows.append((f, 100.0, 100.0, 60.0 + 2.0 * f))
        rows.append((f, 112.0 if f < 3 else 125.0, 100.0, 30.0))
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    for long_hops in (True, False):  # (second LAP pass, or the mass-consistent target)
        tracks, lin = track_clusters(det, long_hops=long_hops)
        assert (lin.origin == "merge").sum() == 0
        assert tracks["track_id"].nunique() == 2
        assert set(lin.fate) == {"alive"}


_KMC_SERIES = [
    (3e3, 300.0, 3),
    (3e3, 300.0, 6),
    (6e3, 300.0, 4),
    (3e3, 280.0, 25),
    (6e3, 280.0, 8),
]


def _kmc_5nm(phi, temp, seed):
    """KMC trajectory of a 5 nm cube, 24 frames of 1 s (crystal and KMC seeded ``seed``)."""
    from perovstem.simulate import degradation_kmc, nanocrystal

    return degradation_kmc(
        nanocrystal(edge_A=50.0, rng=seed),
        n_frames=24,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=phi,
        temperature_K=temp,
        rng=seed,
    )


@pytest.fixture(scope="module")
def kmc_truth():
    """KMC truth clusters and events, simulated once for the module (5 nm cube, 24 frames,
    two temperatures, two dose rates)."""
    out = []
    for phi, temp, seed in _KMC_SERIES:
        tr = _kmc_5nm(phi, temp, seed)
        out.append((seed, tr.clusters, tr.events))
    return out


def _kmc_merge_scores(series, **kw):
    """Tracker alone on KMC truth (truth clusters >= 5 atoms as detections, 0.5 Å and 10 %
    count noise, ``n_atoms_err`` = 10 %), scored by :func:`merge_matches` (identifiable:
    >= 2 ancestors of >= 10 atoms within r_child + r_parent + 8 Å of the product).
    Returns (n identifiable, found, detected merges, detected merges whose product is a
    truth coalescence product of that frame)."""
    ms = []
    for seed, tc, events in series:
        rng = np.random.default_rng(seed)
        det = tc[tc.n_atoms >= 5].reset_index(drop=True).copy()
        det["x_A"] += rng.normal(0, 0.5, len(det))
        det["y_A"] += rng.normal(0, 0.5, len(det))
        det["n_atoms"] = det["n_atoms"] * (1 + rng.normal(0, 0.1, len(det)))
        det["n_atoms_err"] = 0.1 * det["n_atoms"]
        cols = ["frame", "x_A", "y_A", "n_atoms", "n_atoms_err", "cluster_id"]
        tracks, lin = track_clusters(det[cols], **kw)
        ms.append(merge_matches(tracks, lin, tc, events))
    s = merge_scores(pd.concat(ms, ignore_index=True))
    return s["identifiable"], s["found"], s["detected"], s["true"]


def test_merges_on_kmc_truth_lineage(kmc_truth):
    """Global assignment with merge hypotheses on 5 KMC series (280 and 300 K).  Measured
    here: recall 0.86 (43/50), precision 0.88 (46/52; 0.85 = 47/55 before re-detections
    nearer than the product undid hop-away merges); the former greedy 'mass' tracker
    0.80 / 0.76.  On 12 held-out series (benchmarks/bench_merges.py) 0.89 / 0.93 vs
    0.72 / 0.68.  The bounds guard that level with a small margin for solver/platform
    differences, and that the global method beats the greedy one on both counts."""
    n_id, found, n_det, good = _kmc_merge_scores(kmc_truth)
    assert n_id >= 30
    assert found / n_id >= 0.82, (found, n_id)
    assert good / n_det >= 0.85, (good, n_det)
    n_id0, found0, n_det0, good0 = _kmc_merge_scores(kmc_truth, method="mass")
    assert found / n_id > found0 / n_id0 and good / n_det > good0 / n_det0


def test_flicker_is_a_gap_not_a_merge():
    # B (30 atoms) is missed in frame 3 while A (40) keeps its size: a gap of B, no merge
    rows = []
    for f in range(6):
        rows.append((f, 100.0, 100.0, 40.0))
        if f != 3:
            rows.append((f, 112.0, 100.0, 30.0))
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    assert (lin.origin == "merge").sum() == 0
    assert tracks["track_id"].nunique() == 2 and set(lin.fate) == {"alive"}
    # the segmentation joins A and B into one blob (mass conserved, at their centre of
    # mass) in frame 3 only: B is seen again in frame 4, so frame 3 is no coalescence
    blob = [(3, (100.0 * 40 + 112.0 * 30) / 70, 100.0, 70.0)]
    rows2 = [r for r in rows if r[0] != 3] + blob
    det2 = pd.DataFrame(rows2, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det2)
    assert (lin.origin == "merge").sum() == 0
    assert tracks["track_id"].nunique() == 2
    b = tracks[tracks.x_A > 111].track_id.unique()
    assert len(b) == 1 and set(tracks.loc[tracks.track_id == b[0], "frame"]) == {0, 1, 2, 4, 5}
    # a real coalescence (B not seen again) is a merge
    rows3 = [r for r in rows2 if not (r[0] > 3 and r[1] > 111)]
    rows3 = [(f, x, y, 70.0 if f > 3 else n) for f, x, y, n in rows3]
    tracks, lin = track_clusters(pd.DataFrame(rows3, columns=["frame", "x_A", "y_A", "n_atoms"]))
    assert (lin.origin == "merge").sum() == 1


def test_gate_follows_the_track_mobility():
    # a mobile cluster speeds up to 30 Å per frame (4x max_step_A) in a field of static
    # clusters: its own measured mobility widens its gate; the greedy tracker breaks it up
    rows = []
    x = np.cumsum([40.0, 10.0, 10.0, 20.0, 25.0, 30.0, 30.0, 30.0])
    for f in range(8):
        rows.append((f, x[f], 60.0 + 5.0 * (f % 2), 20.0))
        for k in range(4):
            rows.append((f, 30.0 + 60.0 * k, 20.0, 50.0))
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    assert tracks["track_id"].nunique() == 5
    assert (lin.origin == "merge").sum() == 0 and set(lin.fate) == {"alive"}
    tracks0, _ = track_clusters(det, method="mass")
    assert tracks0["track_id"].nunique() > 5


def test_mass_conservation_picks_the_partner():
    # two clusters end next to a product; the product holds A (60) + C (30), not A + B (12)
    # although B is closer: with sizes the pair that conserves mass is chosen
    rows = []
    for f in range(5):
        if f < 2:
            rows += [(f, 100.0, 100.0, 60.0), (f, 111.0, 100.0, 30.0), (f, 95.0, 110.0, 12.0)]
        else:
            rows += [(f, 103.0, 100.0, 90.0), (f, 93.0, 112.0, 12.0)]
    det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    tracks, lin = track_clusters(det)
    m = lin[lin.origin == "merge"]
    assert len(m) == 1
    first = tracks[tracks.frame == 0].set_index("n_atoms")["track_id"]
    assert sorted(m.parents.iloc[0]) == sorted([first[60.0], first[30.0]])
    # the small cluster continues
    assert tracks.loc[tracks.frame == 4, "track_id"].isin([first[12.0]]).any()


def _hop_away(n_b, b_after, n_bg=6):
    """A (50 atoms) at rest; B (``n_b`` atoms) appears 20 Å from A in frame 2; from frame 3
    A holds 50 + n_b atoms and B is at ``b_after`` (None: gone); static background."""
    rows = []
    for f in range(7):
        rows.append((f, 100.0, 100.0, 50.0 if f < 3 else 50.0 + n_b))
        if f == 2:
            rows.append((f, 120.0, 100.0, n_b))
        if f >= 3 and b_after is not None:
            rows.append((f, *b_after, n_b))
        rows += [(f, 300.0 + 40 * k, 300.0, 6.0 + k % 3) for k in range(n_bg)]
    return pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])


@pytest.mark.parametrize("n_b", [10.0, 11.0])
@pytest.mark.parametrize("b_after", [(136.0, 100.0), (120.0, 116.0)])
def test_hop_away_is_not_a_merge(n_b, b_after):
    # B hops 16 Å away from A while A grows by B's atoms: B is seen again nearer to its
    # old place than A is, so it hopped (it is not a coalescence plus a birth)
    tracks, lin = track_clusters(_hop_away(n_b, b_after))
    assert (lin.origin == "merge").sum() == 0
    b = tracks.loc[(tracks.frame == 2) & (tracks.x_A == 120.0), "track_id"].iloc[0]
    assert set(tracks.loc[tracks.track_id == b, "frame"]) == set(range(2, 7))


@pytest.mark.parametrize("b_after", [None, (150.0, 100.0), (120.0, 130.0)])
def test_coalescence_with_unrelated_birth_kept(b_after):
    # B vanishes into A (mass conserved); a new cluster of B's size appearing farther from
    # B than A is does not undo the coalescence
    tracks, lin = track_clusters(_hop_away(11.0, b_after))
    assert (lin.origin == "merge").sum() == 1


def _correlated_count_detections(tc, seed, persistent=0.09, per_frame=0.045):
    """Truth clusters >= 5 atoms with 0.5 Å position noise and a count error that persists
    along each truth cluster (relative bias ``persistent`` drawn once per cluster id, a
    coalescence product its own) plus independent per-frame noise ``per_frame`` (total
    10 %), as detected counts on images behave (frame-to-frame scatter of one cluster a
    third of the scatter against truth); ``n_atoms_err`` 10 %, ``n_atoms_err_stat`` 4.5 %.
    Same recipe as ``truth_detections_correlated`` in benchmarks/bench_merges.py."""
    rng = np.random.default_rng(seed + 7919)
    det = tc[tc.n_atoms >= 5].reset_index(drop=True).copy()
    det["x_A"] += rng.normal(0, 0.5, len(det))
    det["y_A"] += rng.normal(0, 0.5, len(det))
    ids = np.unique(det.cluster_id)
    bias = dict(zip(ids, rng.normal(0, persistent, len(ids)), strict=True))
    noise = det.cluster_id.map(bias).to_numpy() + per_frame * rng.normal(0, 1, len(det))
    det["n_atoms"] = det["n_atoms"] * (1 + noise)
    det["n_atoms_err"] = np.hypot(persistent, per_frame) * det["n_atoms"]
    det["n_atoms_err_stat"] = per_frame * det["n_atoms"]
    return det


def test_merges_with_time_correlated_count_errors():
    """KMC truth on four seeds used nowhere else (601-604: 5 nm, 280/300 K, 3e3/6e3
    e/A2/s) with count errors correlated in time (9 % persistent per cluster, 4.5 % per
    frame).  Measured: recall 35/38 = 0.92, precision 41/49 = 0.84; the greedy "mass"
    tracker 29/38 = 0.76, 34/42 = 0.81.  On the 12-series sets of
    benchmarks/bench_merges.py the same noise gives tuning 0.865 / 0.868, held-out
    0.817 / 0.915, fresh 0.814 / 0.831, other conditions 0.724 / 0.788 (independent 10 %
    noise: 0.865 / 0.898, 0.890 / 0.930, 0.843 / 0.833, 0.735 / 0.769).

    The KMC realisation depends on the machine's numeric kernels: on an AVX-512 machine the
    same seeds give 36 identifiable merges, global 29/36 = 0.81 recall, precision 33/38 =
    0.87 (F1 0.84), mass 29/36, 31/46 = 0.67 (F1 0.73); with seeds 605-608 added global
    0.77 / 0.83 (F1 0.80), mass 0.76 / 0.65 (F1 0.70).  The global assignment's gain is
    recall on one realisation and precision on the other, so the test compares F1."""

    scores = {}
    for method in ("global", "mass"):
        ms = []
        for phi, temp, seed in ((3e3, 300.0, 601), (6e3, 280.0, 602), (3e3, 280.0, 603),
                                (6e3, 300.0, 604)):  # fmt: skip
            tr = _kmc_5nm(phi, temp, seed)
            det = _correlated_count_detections(tr.clusters, seed)
            tracks, lin = track_clusters(det, method=method)
            ms.append(merge_matches(tracks, lin, tr.clusters, tr.events))
        scores[method] = merge_scores(pd.concat(ms, ignore_index=True))
    g, m = scores["global"], scores["mass"]
    assert g["identifiable"] >= 30
    assert g["recall"] >= 0.75 and g["precision"] >= 0.75, g
    assert g["recall"] >= m["recall"] - 0.02, (g, m)

    def f1(sc):
        return 2 * sc["recall"] * sc["precision"] / (sc["recall"] + sc["precision"])

    assert f1(g) > f1(m) + 0.05, (g, m)


@pytest.mark.parametrize("method", ["global", "mass", "laptrack"])
def test_frames_without_detections_count_as_missed(method):
    """Detections at frames 0, 5 and 10 only: the frames in between had none, so a link
    bridges 4 missed frames.  With gap_frames=1 no link may be made (the global and mass
    trackers linked the present frames as if consecutive); with gap_frames=5 it may."""
    det = pd.DataFrame(
        {
            "frame": [0, 5, 10],
            "x_A": [10.0, 10.5, 11.0],
            "y_A": [20.0, 20.2, 19.8],
            "n_atoms": [40.0, 41.0, 40.0],
            "n_atoms_err": [4.0, 4.0, 4.0],
        }
    )
    tracks, _ = track_clusters(det, gap_frames=1, method=method)
    assert tracks["track_id"].nunique() == 3
    if method == "laptrack":  # laptrack's own gap closing does not bridge empty frames
        return
    tracks, _ = track_clusters(det, gap_frames=5, method=method)
    assert tracks["track_id"].nunique() == 1
    # one missing frame is within the default gap
    tracks, _ = track_clusters(det.assign(frame=[0, 2, 4]), method=method)
    assert tracks["track_id"].nunique() == 1


def test_lineage_atoms_come_from_the_counts_not_the_linking_size():
    """Linking on another size column (the segment area without a dose) used to put that
    size into the lineage's n_atoms_start/end (areas in Å² reported as atoms)."""
    det, _, _ = coalescing_clusters(n_frames=8, n_start=6, birth_rate=0.0, rng=3)
    det["area_A2"] = np.pi * (1.4 * det["n_atoms"] ** (1 / 3)) ** 2 * 7.0
    tracks, lin = track_clusters(det, size_column="area_A2")
    first = tracks.sort_values("frame").groupby("track_id").first()
    got = lin.set_index("track_id")["n_atoms_start"]
    np.testing.assert_allclose(got.to_numpy(), first.loc[got.index, "n_atoms"].to_numpy())
    _, lin2 = track_clusters(det.drop(columns="n_atoms"), size_column="area_A2")
    assert lin2["n_atoms_start"].isna().all() and lin2["n_atoms_end"].isna().all()


@pytest.mark.parametrize("method", ["global", "mass", "laptrack"])
def test_gap_frames_bridges_exactly_that_many_missed_frames(method):
    """laptrack counts a gap-closing link's frame distance (1 = consecutive frames), so
    ``gap_frames=1`` was passed as "no gap closing" and one missed detection split a track
    in two with the laptrack backend only."""
    pytest.importorskip("laptrack")
    other = [(f, 100.0, 100.0) for f in range(6)]  # a steady cluster: no frame is empty
    for frames, gap, n_tracks in (([0, 1, 3, 4], 1, 1), ([0, 2, 4], 1, 1), ([0, 3], 1, 2)):
        for extra in ([], other):
            rows = [(f, 10.0 + f, 10.0) for f in frames] + extra
            det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A"]).assign(n_atoms=50.0)
            tracks, _ = track_clusters(det, method=method, gap_frames=gap)
            got = tracks.loc[tracks["x_A"] < 50, "track_id"].nunique()
            assert got == n_tracks, (frames, bool(extra), got)


def _multi_frame_dropouts(det, rng, p=0.04, runs=(2, 3, 4)):
    """Leave each cluster out for runs of 2-4 frames (a run starts with probability ``p`` per
    frame), longer than ``gap_frames``: it re-appears as a new detection of its full size,
    as a cluster does on images when the neighbour it overlapped in projection moves away
    or after frames in which detection missed it."""
    rng = np.random.default_rng(rng)
    keep = np.ones(len(det), bool)
    for _, g in det.groupby("cluster_id"):
        idx = g.sort_values("frame").index.to_numpy()
        k = 0
        while k < len(idx):
            if rng.random() < p:
                n = int(rng.choice(runs))
                keep[idx[k : k + n]] = False
                k += n + 1
            else:
                k += 1
    return det[keep].reset_index(drop=True)


def test_large_new_detection_does_not_take_a_coalescing_parent():
    """A (30 atoms) and B (60) coalesce at frame 4 while a large cluster (40 or 60 atoms,
    revealed or re-detected) appears 50 Å away.  The birth of a large detection was priced
    without bound (2 nats per detection limit above it, ~14 nats here), so A was linked to
    the far detection by a 50 Å hop and the coalescence lost (umerge3: the first cause of
    missed merges on images); bounded at 4 nats it is a merge plus a birth."""
    for n_new in (40.0, 60.0):
        rng = np.random.default_rng(0)
        rows = []
        for f in range(8):
            if f < 4:
                rows += [(f, 50.0, 50.0, 30.0), (f, 62.0, 50.0, 60.0)]
            else:
                rows += [(f, 58.0, 50.0, 90.0), (f, 50.0, 100.0, n_new)]
            # small clusters far away set the detection limit (~8 atoms)
            rows += [(f, 20.0 + 15 * k, 150.0, 8.0 + k) for k in range(6)]
        det = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
        det["x_A"] += rng.normal(0, 0.3, len(det))
        det["y_A"] += rng.normal(0, 0.3, len(det))
        det["n_atoms_err"] = 0.1 * det["n_atoms"]
        tracks, lin = track_clusters(det)
        lin = lin.set_index("track_id")
        prod = int(tracks[(tracks.frame == 4) & (tracks.n_atoms == 90.0)].track_id.iloc[0])
        new = int(tracks[(tracks.frame == 4) & (tracks.n_atoms == n_new)].track_id.iloc[0])
        assert lin.loc[prod, "origin"] == "merge", n_new
        assert len(lin.loc[prod, "parents"]) == 2, n_new
        assert lin.loc[new, "origin"] == "nucleation" and lin.loc[new, "start_frame"] == 4


def test_merges_with_clusters_missed_for_several_frames():
    """Coalescing 2-D clusters (6 seeds) whose detections drop out for 2-4 frames now and
    then (``_multi_frame_dropouts``): a cluster that vanishes next to a neighbour was
    forced into it as a merge, and one that re-appears took a merging parent, because
    large births and ends were priced without bound.  Measured, pooled (recall,
    precision): 63/66 = 0.95, 65/111 = 0.59 before; 65/66 = 0.98, 67/97 = 0.69 with the
    size prior bounded at 4 nats."""
    ms = []
    for seed in range(6):
        det, truth, merges = coalescing_clusters(rng=seed)
        det = _multi_frame_dropouts(det, 100 + seed)
        det["n_atoms_err"] = 0.07 * det["n_atoms"]
        tracks, lin = track_clusters(det)
        ms.append(merge_matches(tracks, lin, truth, _events(merges), require_detected=True))
    s = merge_scores(pd.concat(ms, ignore_index=True))
    assert s["identifiable"] >= 50, s
    assert s["recall"] >= 0.93, s
    assert s["precision"] >= 0.64, s


def _undercounted_coalescence(first, a_after, later):
    """B (40 atoms) and A (20 atoms) 10 Å apart over frames 0-4; from frame 5 one detection
    of ``first`` then ``later`` atoms at B's place and one of ``a_after`` atoms at A's place
    (a cluster A had hidden, or A itself), plus an unrelated cluster; 10 % count errors."""
    rows = []
    for f in range(9):
        if f < 5:
            rows += [(f, 100.0, 100.0, 40.0), (f, 110.0, 100.0, 20.0)]
        else:
            rows += [(f, 101.0, 100.0, first if f == 5 else later), (f, 110.5, 100.0, a_after)]
        rows.append((f, 300.0, 300.0, 30.0))
    df = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    df["n_atoms_err"] = 0.1 * df["n_atoms"]
    return df


@pytest.mark.parametrize("first, later", [(48.0, 60.0), (44.0, 46.0)])
def test_merge_window_takes_a_coalescence_one_frame_pair_misses(first, later):
    # the product is under-counted in its first frame (48 or 44 of 60 atoms) and a smaller
    # detection (12 atoms) appears at A's place: one frame pair favours "B grows, A goes on
    # at 12 atoms"; the counts pooled over the following frames hold A's atoms in B's
    # detection, and A's place holds a new, smaller cluster
    det = _undercounted_coalescence(first, 12.0, later)
    tracks, lin = track_clusters(det)
    assert (lin.origin == "merge").sum() == 0  # the frame-pair decision (documented limit)
    for w in (2, 3):
        tracks, lin = track_clusters(det, merge_window=w)
        lin = lin.set_index("track_id")
        prod = int(tracks[(tracks.frame == 5) & (tracks.x_A == 101.0)].track_id.iloc[0])
        new = int(tracks[(tracks.frame == 5) & (tracks.x_A == 110.5)].track_id.iloc[0])
        assert lin.loc[prod, "origin"] == "merge" and lin.loc[prod, "start_frame"] == 5, w
        assert len(lin.loc[prod, "parents"]) == 2, w
        assert lin.loc[new, "origin"] == "nucleation" and lin.loc[new, "start_frame"] == 5, w
        assert (lin.origin == "merge").sum() == 1, w
        # the parents end where the product starts; the product's track holds frames 5-8
        for p in lin.loc[prod, "parents"]:
            assert lin.loc[p, "end_frame"] == 4 and lin.loc[p, "fate"] == "merged"
        assert sorted(tracks[tracks.track_id == prod].frame) == [5, 6, 7, 8]


@pytest.mark.parametrize("a_after, later", [(18.0, 60.0), (19.0, 48.0), (20.0, 44.0)])
def test_merge_window_keeps_a_continuation(a_after, later):
    # A keeps its atoms (18-20 of 20) while B grows by attachment: no coalescence, with or
    # without the window
    det = _undercounted_coalescence(48.0, a_after, later)
    for w in (1, 3):
        tracks, lin = track_clusters(det, merge_window=w)
        assert (lin.origin == "merge").sum() == 0, w
        assert len(lin) == 3, w


def test_merge_window_bad_input():
    one = pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]})
    for bad in (0, 1.5, -2):
        with pytest.raises(ParameterError, match="merge_window"):
            track_clusters(one, merge_window=bad)


def test_lookahead_zero_is_the_frame_pair_decision():
    # the default decides each frame pair alone; lookahead=0 is that decision exactly
    det, _truth, _merges = coalescing_clusters(n_frames=12, rng=3)
    det["n_atoms_err"] = 0.07 * det["n_atoms"]
    t0, l0 = track_clusters(det)
    t1, l1 = track_clusters(det, lookahead=0)
    pd.testing.assert_frame_equal(t0, t1)
    pd.testing.assert_frame_equal(l0, l1)


def test_lookahead_keeps_clear_merges():
    """Weighing each frame pair's near-best hypothesis sets on the next pair finds the
    coalescences of 2-D clusters that the frame-pair decision finds (3 seeds pooled): the
    states explored ahead are copies, only the decision taken is committed."""
    for la in (1,):
        ms0, ms1 = [], []
        for seed in range(3):
            det, truth, merges = coalescing_clusters(n_frames=20, rng=seed)
            det["n_atoms_err"] = 0.07 * det["n_atoms"]
            for la_, ms in ((0, ms0), (la, ms1)):
                tracks, lin = track_clusters(det, lookahead=la_)
                ms.append(merge_matches(tracks, lin, truth, _events(merges)))
        s0 = merge_scores(pd.concat(ms0, ignore_index=True))
        s1 = merge_scores(pd.concat(ms1, ignore_index=True))
        assert s0["identifiable"] >= 15, s0
        assert s1["found"] >= s0["found"] - 1, (la, s0, s1)
        assert s1["precision"] >= s0["precision"] - 0.05, (la, s0, s1)
        assert s1["recall"] >= 0.9, (la, s1)


def test_lookahead_bad_input():
    one = pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]})
    for bad in (-1, 1.5, 3, "1"):
        with pytest.raises(ParameterError, match="lookahead"):
            track_clusters(one, lookahead=bad)


def test_end_and_birth_costs_default_is_the_lineage_tracker():
    # the lineage tracker's costs (6 nats) are the defaults: given explicitly, the same
    # tracks and lineage; cheaper ends and births refuse links, never add them
    det, _truth, _merges = coalescing_clusters(n_frames=12, rng=3)
    det["n_atoms_err"] = 0.07 * det["n_atoms"]
    t0, l0 = track_clusters(det)
    t1, l1 = track_clusters(det, end_cost=6.0, birth_cost=6.0)
    pd.testing.assert_frame_equal(t0, t1)
    pd.testing.assert_frame_equal(l0, l1)
    t2, _ = track_clusters(det, end_cost=2.0, birth_cost=2.0)
    assert t2["track_id"].nunique() > t0["track_id"].nunique()


@pytest.mark.parametrize("name", ["end_cost", "birth_cost"])
def test_end_and_birth_costs_bad_input(name):
    one = pd.DataFrame({"frame": [0], "x_A": [1.0], "y_A": [0.0], "n_atoms": [5]})
    for bad in (0, -2.0, np.nan, np.inf, "2"):
        with pytest.raises(ParameterError, match=name):
            track_clusters(one, **{name: bad})
