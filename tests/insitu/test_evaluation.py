from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import DataError, ParameterError
from perovstem.insitu import match_clusters, merge_matches, merge_scores


def _truth():
    """Frame 0 -> 1: 1 + 2 -> 10 and 10 + 3 -> 11 chain within the frame (observable: 11
    from {1, 2, 3}); 4 (6 atoms) + 5 -> 12; 7 + 8 -> 13 from 60 Å apart."""
    clusters = pd.DataFrame(
        [
            (0, 1, 100.0, 100.0, 40),
            (0, 2, 110.0, 100.0, 20),
            (0, 3, 100.0, 110.0, 12),
            (0, 4, 200.0, 200.0, 6),
            (0, 5, 205.0, 200.0, 30),
            (0, 7, 300.0, 300.0, 30),
            (0, 8, 360.0, 300.0, 30),
            (1, 11, 103.0, 103.0, 72),
            (1, 12, 205.0, 200.0, 36),
            (1, 13, 330.0, 300.0, 60),
        ],
        columns=["frame", "cluster_id", "x_A", "y_A", "n_atoms"],
    )
    events = pd.DataFrame(
        [
            (1, "merge", 10, [1, 2]),  # intermediate product, not in frame 1
            (1, "merge", 11, [10, 3]),  # observable: ancestors {1, 2, 3}
            (1, "merge", 12, [4, 5]),  # a 6-atom ancestor: not identifiable
            (1, "merge", 13, [7, 8]),  # 60 Å apart: not identifiable
            (0, "birth", 1, []),
        ],
        columns=["frame", "kind", "cluster_id", "parents"],
    )
    return clusters, events


def _tracked(merge_rows):
    """tracks / lineage by hand: identity tracks; ``merge_rows``: {product cid: parent cids}."""
    clusters, _ = _truth()
    tracks = clusters[["frame", "cluster_id", "x_A", "y_A", "n_atoms"]].copy()
    tracks["track_id"] = np.arange(len(tracks))
    tid = dict(zip(zip(tracks.frame, tracks.cluster_id, strict=True), tracks.track_id, strict=True))
    rows = []
    for (f, c), t in tid.items():
        ps = [tid[(0, p)] for p in merge_rows.get(c, [])]
        origin = "merge" if ps else ("first_frame" if f == 0 else "nucleation")
        rows.append({"track_id": t, "parents": ps, "start_frame": f, "origin": origin})
    return tracks, pd.DataFrame(rows)


def test_chain_and_identifiability():
    clusters, events = _truth()
    tracks, lin = _tracked({11: [1, 2, 3], 13: [7, 8]})
    m = merge_matches(tracks, lin, clusters, events)
    truth = m[m.source == "truth"].set_index("cluster_id")
    assert set(truth.index) == {11, 12, 13}  # the in-frame chain collapses to product 11
    assert sorted(truth.loc[11, "parents"]) == [1, 2, 3]
    assert truth.loc[11, "identifiable"] and truth.loc[11, "matched"]
    assert truth.loc[11, "parents_ok"]
    assert not truth.loc[12, "identifiable"]  # 6-atom ancestor
    assert not truth.loc[13, "identifiable"]  # ancestors farther than contact + 8 Å
    s = merge_scores(m)
    assert (s["identifiable"], s["found"], s["detected"], s["true"]) == (1, 1, 2, 2)
    assert s["recall"] == 1.0 and s["precision"] == 1.0
    # smaller ancestor floor: 12 becomes identifiable; wider contact margin: 13 too
    s2 = merge_scores(merge_matches(tracks, lin, clusters, events, min_parent_atoms=5))
    assert s2["identifiable"] == 2 and s2["found"] == 1 and s2["recall"] == 0.5
    s3 = merge_scores(merge_matches(tracks, lin, clusters, events, contact_margin_A=40.0))
    assert s3["identifiable"] == 2 and s3["found"] == 2


def test_missed_and_false_merges():
    clusters, events = _truth()
    # product 11 tracked as a continuation, a false merge at 12 with wrong parents, and a
    # merge at 11 with one parent missing (found, but parents not ok)
    tracks, lin = _tracked({12: [4, 5]})
    s = merge_scores(merge_matches(tracks, lin, clusters, events))
    assert (s["identifiable"], s["found"], s["recall"]) == (1, 0, 0.0)
    assert (s["detected"], s["true"]) == (1, 1)  # 12 is a truth product (any sizes)
    tracks, lin = _tracked({11: [1, 2]})
    m = merge_matches(tracks, lin, clusters, events)
    row = m[(m.source == "truth") & (m.cluster_id == 11)].iloc[0]
    assert row.matched and not row.parents_ok
    # a merge whose product is no truth product (an existing cluster that continues)
    tracks, lin = _tracked({1: [5, 7]})
    s = merge_scores(merge_matches(tracks, lin, clusters, events))
    assert (s["detected"], s["true"], s["precision"]) == (1, 0, 0.0)
    # nothing detected: precision undefined
    tracks, lin = _tracked({})
    assert np.isnan(merge_scores(merge_matches(tracks, lin, clusters, events))["precision"])


def test_require_detected():
    clusters, events = _truth()
    tracks, lin = _tracked({11: [1, 2, 3]})
    tracks.loc[(tracks.frame == 0) & (tracks.cluster_id == 2), "cluster_id"] = -1  # B missed
    m = merge_matches(tracks, lin, clusters, events, require_detected=True)
    assert merge_scores(m)["identifiable"] == 0
    assert merge_scores(merge_matches(tracks, lin, clusters, events))["identifiable"] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_match_clusters_recovers_ids(seed):
    rng = np.random.default_rng(seed)
    n = 30
    truth = pd.DataFrame(
        {
            "frame": np.repeat([0, 1], n),
            "cluster_id": np.arange(2 * n),
            "x_A": rng.uniform(0, 400, 2 * n),
            "y_A": rng.uniform(0, 400, 2 * n),
            "n_atoms": rng.integers(2, 80, 2 * n).astype(float),
        }
    )
    det = truth.sample(frac=1.0, random_state=seed).copy()
    det["x_A"] += rng.normal(0, 0.7, len(det))
    det["y_A"] += rng.normal(0, 0.7, len(det))
    det = det.drop(columns="cluster_id")
    det.loc[det.index[:3], "x_A"] += 500.0  # three detections of nothing
    out = match_clusters(det, truth)
    assert len(out) == len(det)
    got = out.cluster_id.to_numpy()
    want = np.where(det.n_atoms.to_numpy() >= 3, det.index.to_numpy(), -1)
    want[:3] = -1
    # an unlucky near pair may swap: >= 95 % exact, and no id used twice in a frame
    assert np.mean(got == want) >= 0.95
    for _, g in out[out.cluster_id >= 0].groupby("frame"):
        assert g.cluster_id.is_unique


def test_bad_input():
    clusters, events = _truth()
    tracks, lin = _tracked({})
    with pytest.raises(DataError, match="tracks"):
        merge_matches(tracks.drop(columns="cluster_id"), lin, clusters, events)
    with pytest.raises(DataError, match="truth_events"):
        merge_matches(tracks, lin, clusters, events.drop(columns="parents"))
    with pytest.raises(ParameterError, match="contact_margin_A"):
        merge_matches(tracks, lin, clusters, events, contact_margin_A=-1)
    with pytest.raises(ParameterError, match="margin_A"):
        match_clusters(tracks, clusters, margin_A=np.nan)
    with pytest.raises(DataError, match="matches"):
        merge_scores(pd.DataFrame({"source": []}))


def test_projected_objects_merge_overlapping_discs_and_chains():
    """Discs that overlap in projection are one object (atoms summed, centre of mass),
    and a cluster that overlaps the merged object's disc joins it (C overlaps A + B but
    not A); a cluster given as several rows is summed; clusters apart stay apart."""
    from perovstem.insitu import match_objects, projected_objects
    from perovstem.insitu.evaluation import _radius_A

    r20 = float(_radius_A(20))  # 20 atoms: 5.3 Å
    rows = [
        (0, 0.0, 0.0, 10),  # cluster 0 in two rows: 20 atoms at x = 0
        (0, 0.0, 0.0, 10),
        (1, 1.9 * r20, 0.0, 20),  # overlaps 0
        (2, 3.0 * r20, 0.0, 20),  # overlaps 0 + 1 (40 atoms at 0.95 r20), not 0
        (3, 0.0, 40.0, 20),  # apart
        (-1, 5.0, 5.0, 3),  # host Pb: not a cluster
    ]
    df = pd.DataFrame(rows, columns=["cluster_id", "x_A", "y_A", "n_atoms"])
    obj = projected_objects(df).sort_values("y_A").reset_index(drop=True)
    assert obj["n_atoms"].tolist() == [60.0, 20.0]
    assert obj["n_clusters"].tolist() == [3, 1]
    assert obj["x_A"].iloc[0] == pytest.approx((1.9 + 3.0) * r20 / 3)
    # touching but not overlapping: two objects
    two = projected_objects(df.iloc[[0, 1, 4]].assign(x_A=[0.0, 0.0, 2.05 * r20], y_A=0.0))
    assert len(two) == 2
    det = pd.DataFrame({"x_A": [0.5, 4.9 * r20 / 3 + 4.0, 100.0], "y_A": [40.0, 0.0, 0.0]})
    # object 0 (60 atoms, r 7.7 Å): detection 1 is 4 Å off (tolerance r + 2 Å);
    # object 1: detection 0 is 0.5 Å off; detection 2 matches nothing
    assert sorted(match_objects(obj, det)) == [(0, 1), (1, 0)]
    assert match_objects(obj.iloc[:0], det) == []


def test_score_detections_neutral_extra_and_false():
    """A detection on a < 10-atom object is neither hit nor false; a second detection
    inside a multi-cluster object adds its atoms to that object; one far from everything
    is a false positive; an undetected big object is a miss."""
    from perovstem.insitu import score_detections

    objects = pd.DataFrame(
        {
            "x_A": [0.0, 40.0, 80.0, 0.0],
            "y_A": [0.0, 0.0, 0.0, 40.0],
            "n_atoms": [60.0, 30.0, 5.0, 20.0],
            "n_clusters": [2, 1, 1, 1],
        }
    )
    det = pd.DataFrame(
        {
            "x_A": [1.0, 4.0, 40.5, 80.5, 200.0],
            "y_A": [0.0, 1.0, 0.0, 0.0, 200.0],
            "n_atoms": [35.0, 22.0, 31.0, 6.0, 12.0],
        }
    )
    sc = score_detections(det, objects)
    assert (sc["tp"], sc["fp"], sc["fn"]) == (2, 1, 1)
    assert sorted(sc["pairs"]) == [(0, 0), (1, 2)]
    assert sc["extra"] == {0: [1]}
    assert sc["false"] == [4]  # the far one, by position in the detections
    got = dict(zip([i for i, _ in sc["pairs"]], sc["n_atoms"], strict=True))
    assert got == {0: 57.0, 1: 31.0}


def test_chain_object_is_matched_on_any_member():
    """A chain A–B–C–D of overlapping 20-atom clusters is one projected object whose
    centre of mass lies between the members, > r + 2 Å from A: a detection on A (within
    A's r + 2 Å) is a hit and a second one on D resolves the chain (its atoms added); a
    detection beside A (outside every member's reach) stays a false positive."""
    from perovstem.insitu import match_objects, projected_objects, score_detections
    from perovstem.insitu.evaluation import _radius_A

    xs = [0.0, 10.0, 16.0, 21.0]  # each overlaps the object grown so far
    df = pd.DataFrame(
        {
            "cluster_id": [0, 1, 2, 3, 4],
            "x_A": [*xs, 80.0],
            "y_A": [0.0, 0.0, 0.0, 0.0, 0.0],
            "n_atoms": [20, 20, 20, 20, 30],
        }
    )
    obj = projected_objects(df).sort_values("x_A").reset_index(drop=True)
    assert obj["n_clusters"].tolist() == [4, 1]
    assert obj["n_atoms"].tolist() == [80.0, 30.0]
    assert obj["x_A"].iloc[0] == pytest.approx(11.75)
    assert obj["x_A"].iloc[0] > float(_radius_A(80)) + 2.0  # A is out of the centre's reach
    on_a = pd.DataFrame({"x_A": [0.5, 80.0], "y_A": [1.0, 0.0], "n_atoms": [22.0, 31.0]})
    assert sorted(match_objects(obj, on_a)) == [(0, 0), (1, 1)]
    sc = score_detections(on_a, obj)
    assert (sc["tp"], sc["fp"], sc["fn"]) == (2, 0, 0)
    # A and D detected: one hit, the other resolves the chain (count = sum)
    both = pd.DataFrame({"x_A": [0.5, 21.0], "y_A": [1.0, 0.0], "n_atoms": [22.0, 19.0]})
    sc = score_detections(both, obj)
    assert (sc["tp"], sc["fp"], sc["fn"]) == (1, 0, 1)
    assert sum(len(v) for v in sc["extra"].values()) == 1
    assert sc["n_atoms"] == [41.0]
    # beside A, outside A's disc + 2 Å and the centre's reach: false
    beside = pd.DataFrame({"x_A": [0.0], "y_A": [8.0], "n_atoms": [20.0]})
    sc = score_detections(beside, obj)
    assert (sc["tp"], sc["fp"], sc["fn"]) == (0, 1, 2)
    np.testing.assert_allclose(obj["members"].iloc[0][:, 0], xs)
    np.testing.assert_allclose(obj["members"].iloc[1], [[80.0, 0.0, 30.0]])


# --- intervals of pooled ratios (ratio_interval, interval_verdict) ---------------------


def test_ratio_interval_identical_units_zero_width():
    """Resampling identical series cannot move the figure: the interval has zero width,
    with and without strata, whatever the seed."""
    from perovstem.insitu import ratio_interval

    for rng in (0, 1, 7):
        r = ratio_interval([19, 19, 19, 19], [20, 20, 20, 20], rng=rng, target=0.95)
        assert r["low"] == r["high"] == r["value"] == 0.95
        assert r["se"] == 0.0 and r["n_units"] == 4
        assert r["verdict"] == "met"  # the value itself is the bound: not "just below"
        s = ratio_interval(
            [9] * 3 + [40] * 5, [10] * 3 + [50] * 5, strata=[0] * 3 + [1] * 5, rng=rng
        )
        assert s["low"] == s["high"] == s["value"] == 227 / 280
        assert s["se"] == 0.0


def test_ratio_interval_value_is_ratio_of_totals():
    """The pooled figure is sum(numerator) / sum(denominator), not the mean of the units'
    ratios (a large series weighs more), and the interval contains it."""
    from perovstem.insitu import ratio_interval

    num, den = [1, 90, 45, 8], [2, 100, 50, 10]
    r = ratio_interval(num, den, strata=["a", "b", "a", "b"], rng=3)
    assert r["value"] == sum(num) / sum(den) == 144 / 162
    assert r["value"] != pytest.approx(np.mean(np.divide(num, den)))
    assert r["low"] <= r["value"] <= r["high"] and r["high"] > r["low"]


@pytest.mark.parametrize("n", [4, 8, 30])
def test_ratio_interval_rescaled_variance(n):
    """Equal denominators make the figure the mean of the units' shares; the bootstrap of
    n - 1 of n units (Rao & Wu 1988) gives its unbiased variance s² / n (ddof 1), where the
    plain n-of-n bootstrap gives (n - 1) / n of it."""
    from perovstem.insitu import ratio_interval

    for seed in (0, 1):
        p = np.random.default_rng(seed).uniform(0.6, 1.0, n)
        r = ratio_interval(p * 100, np.full(n, 100.0), n_boot=40000, rng=seed)
        assert r["se"] ** 2 == pytest.approx(np.var(p, ddof=1) / n, rel=0.05)


def test_ratio_interval_seeded_and_strata_kept():
    """A fixed seed gives the same interval; units are resampled within their stratum (a
    stratum of identical units adds no spread; a single-unit stratum is kept as it is)."""
    from perovstem.insitu import ratio_interval

    num, den = [5, 9, 7, 10, 50, 50], [10, 10, 10, 10, 50, 50]
    a = ratio_interval(num, den, strata=[0, 0, 0, 0, 1, 1], rng=11)
    b = ratio_interval(num, den, strata=[0, 0, 0, 0, 1, 1], rng=11)
    assert a == b
    # stratum 1 identical: the spread is stratum 0's, diluted by its share of the total
    only0 = ratio_interval(num[:4], den[:4], rng=11)
    assert a["se"] == pytest.approx(only0["se"] * 40 / 140, rel=1e-9)
    one = ratio_interval([5, 9, 7, 10, 30], [10, 10, 10, 10, 40], strata=[0, 0, 0, 0, 1], rng=11)
    assert one["se"] == pytest.approx(only0["se"] * 40 / 80, rel=1e-9)


def test_interval_verdict_logic():
    from perovstem.insitu import interval_verdict

    assert interval_verdict(0.95, 0.99, 0.95) == "met"  # lower bound at the target
    assert interval_verdict(0.96, 0.99, 0.95) == "met"
    assert interval_verdict(0.90, 0.9499, 0.95) == "not met"
    assert interval_verdict(0.90, 0.95, 0.95) == "undecided"  # upper bound at the target
    assert interval_verdict(0.93, 0.97, 0.95) == "undecided"
    with pytest.raises(ParameterError, match="low <= high"):
        interval_verdict(0.97, 0.93, 0.95)
    with pytest.raises(ParameterError, match="target"):
        interval_verdict(0.9, 0.95, float("nan"))


def test_ratio_interval_units_needed():
    """An undecided figure: the estimated number of units at which the interval would
    clear the target; with that many units of the same spread the verdict is decided."""
    from perovstem.insitu import ratio_interval

    num, den = np.array([88, 97, 85, 99]), np.full(4, 100)
    r = ratio_interval(num, den, target=0.95, rng=0)
    assert r["verdict"] == "undecided"
    m = r["units_needed"]
    assert 4 < m < 1000
    k = int(np.ceil(1.3 * m / 4))
    big = ratio_interval(np.tile(num, k), np.tile(den, k), target=0.95, rng=0)
    assert big["verdict"] == "not met"
    assert ratio_interval(num, den, target=0.5, rng=0)["units_needed"] is None


def test_ratio_interval_bad_input():
    from perovstem.insitu import ratio_interval

    with pytest.raises(DataError, match="one length"):
        ratio_interval([1, 2], [3])
    with pytest.raises(DataError, match="sum to > 0"):
        ratio_interval([0, 0], [0, 0])
    with pytest.raises(DataError, match="counts"):
        ratio_interval([1, -1], [2, 2])
    with pytest.raises(DataError, match="strata"):
        ratio_interval([1, 1], [2, 2], strata=[0])
    with pytest.raises(ParameterError, match="level"):
        ratio_interval([1, 1], [2, 2], level=95)
    with pytest.raises(ParameterError, match="n_boot"):
        ratio_interval([1, 1], [2, 2], n_boot=10)
