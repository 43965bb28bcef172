"""Merges checked over time: projection overlaps that separate again, atoms that do not add
up (:func:`perovstem.insitu.track_clusters`, ``_verify_merges``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import ParameterError
from perovstem.insitu import lineage_events, track_clusters


def _table(rows, rng, rel_err=0.08):
    d = pd.DataFrame(rows, columns=["frame", "x_A", "y_A", "n_atoms"])
    d["x_A"] += rng.normal(0, 0.3, len(d))
    d["y_A"] += rng.normal(0, 0.3, len(d))
    d["n_atoms"] *= 1 + rng.normal(0, 0.03, len(d))
    d["n_atoms_err"] = rel_err * d["n_atoms"]
    return d


def crossing_clusters(blob, n_frames=16, rng=0):
    """Two clusters (40 and 30 atoms) that pass each other in projection (e.g. on the top
    and bottom facets): one detection of their summed atoms at their mass-weighted centre
    for the frames in ``range(*blob)``, two detections otherwise; plus a bystander."""
    rng = np.random.default_rng(rng)
    rows = []
    for f in range(n_frames):
        xa, xb = 40.0 + 2.0 * f, 70.0 - 2.0 * f
        na, nb = 40.0 * (1 + 0.01 * f), 30.0 * (1 + 0.01 * f)
        if blob[0] <= f < blob[1]:
            n = na + nb
            rows.append((f, (na * xa + nb * xb) / n, (na * 50.0 + nb * 52.0) / n, n))
        else:
            rows += [(f, xa, 50.0, na), (f, xb, 52.0, nb)]
        rows.append((f, 20.0 + 0.3 * f, 90.0, 50.0))
    return _table(rows, rng)


@pytest.mark.parametrize("blob", [(6, 9), (6, 12), (4, 10)])
@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_that_separates_is_not_a_merge(blob, seed):
    tracks, lin = track_clusters(crossing_clusters(blob, rng=seed))
    # coalescence is irreversible: a blob that separates into its two parents was an
    # overlap in projection, not a merge, and its parts are not nucleations
    assert (lin.origin == "merge").sum() == 0
    assert lin.attrs["n_merges"] == 0
    ov = lin[lin.origin == "overlap"]
    assert len(ov) == 1 and lin.attrs["n_overlaps"] == 1
    assert len(ov.parents.iloc[0]) == 2
    assert int(ov.start_frame.iloc[0]) == blob[0]
    sep = lin[lin.origin == "separation"]
    assert len(sep) >= 1
    assert all(list(p) == [int(ov.track_id.iloc[0])] for p in sep.parents)
    assert set(sep.start_frame) == {blob[1]}
    assert (lin.origin == "nucleation").sum() == 0
    ev = lineage_events(lin)
    assert not (ev.kind == "merge").any() and not (ev.kind == "birth").any()
    assert (ev.kind == "overlap").sum() == 1
    # without the check the blob is reported as a coalescence (what the frame pair shows)
    _, raw = track_clusters(crossing_clusters(blob, rng=seed), verify_merges=False)
    assert (raw.origin == "merge").sum() == 1


def test_coalescence_that_stays_is_a_merge_with_evidence():
    # the same two clusters, but they coalesce for good: a merge, with its evidence
    rng = np.random.default_rng(3)
    rows = []
    for f in range(14):
        xa, xb = min(40.0 + 2.0 * f, 53.0), max(70.0 - 2.0 * f, 57.0)
        if f < 6:
            rows += [(f, xa, 50.0, 40.0 + f), (f, xb, 52.0, 30.0 + f)]
        else:
            rows.append((f, 55.0, 51.0, 72.0 + 0.5 * f))
        rows.append((f, 20.0 + 0.3 * f, 90.0, 50.0))
    tracks, lin = track_clusters(_table(rows, rng))
    m = lin[lin.origin == "merge"]
    assert len(m) == 1 and int(m.start_frame.iloc[0]) == 6
    assert (lin.origin == "overlap").sum() == 0
    r = m.iloc[0]
    assert r.merge_mass_ratio == pytest.approx(1.0, abs=0.15)
    assert r.merge_parent_frames == 6
    assert r.merge_llr > 0
    # evidence columns are empty for tracks that are not merges
    assert lin.loc[lin.origin != "merge", "merge_mass_ratio"].isna().all()


def test_blob_that_leaves_one_parent_is_unresolved():
    # two clusters (40 and 55 atoms) read as one 95-atom blob for one frame, after which
    # only the smaller one is seen again (the larger stays hidden, or was no cluster): a
    # coalesced cluster neither splits nor vanishes, so no coalescence is reported
    rng = np.random.default_rng(5)
    rows = []
    for f in range(12):
        if f < 6:
            rows += [(f, 50.0, 50.0, 40.0), (f, 62.0, 50.0, 55.0)]
        elif f == 6:
            rows.append((f, 57.0, 50.0, 95.0))
        else:
            rows.append((f, 50.0, 50.0, 40.0))
        rows.append((f, 20.0, 90.0, 50.0))
    tracks, lin = track_clusters(_table(rows, rng))
    assert (lin.origin == "merge").sum() == 0
    assert (lin.origin == "unresolved").sum() == 1
    assert lin.attrs["n_unresolved"] == 1 and lin.attrs["n_merges"] == 0
    u = lin[lin.origin == "unresolved"].iloc[0]
    assert set(lin.loc[lin.track_id.isin(u.parents), "fate"]) == {"unresolved"}
    sep = lin[lin.origin == "separation"]
    assert len(sep) == 1 and list(sep.parents.iloc[0]) == [int(u.track_id)]
    assert (lin.origin == "nucleation").sum() == 0


def test_product_with_far_more_atoms_than_its_parents_is_unresolved():
    # two small clusters (12 and 14 atoms) end where a 95-atom cluster appears and stays:
    # the product holds three times the parents' atoms from its first frame on (unseen
    # clusters in the blob), which no coalescence explains
    rng = np.random.default_rng(6)
    rows = []
    for f in range(12):
        if f < 6:
            rows += [(f, 50.0, 50.0, 12.0), (f, 58.0, 50.0, 14.0)]
        else:
            rows.append((f, 54.0, 50.0, 95.0))
        rows.append((f, 20.0, 90.0, 50.0))
    tracks, lin = track_clusters(_table(rows, rng))
    assert (lin.origin == "merge").sum() == 0
    u = lin[lin.origin == "unresolved"]
    assert len(u) == 1 and int(u.start_frame.iloc[0]) == 6
    assert u.merge_mass_ratio.iloc[0] > 3.0


def test_nucleus_next_to_a_coalesced_cluster_is_no_separation():
    # a 10-atom cluster coalesces with a 140-atom one; later a new 10-atom nucleus appears
    # next to the product while the product's count wobbles by a few atoms: the product
    # lost nothing significant, so the merge stands
    rng = np.random.default_rng(7)
    rows = []
    wobble = {6: 152.0, 7: 158.0, 8: 165.0}
    for f in range(14):
        if f < 5:
            rows += [(f, 50.0, 50.0, 140.0), (f, 61.0, 50.0, 10.0)]
        else:
            rows.append((f, 51.0, 50.0, wobble.get(f, 150.0)))
        if f >= 9:
            rows.append((f, 63.0, 58.0, 11.0))
        rows.append((f, 20.0, 90.0, 50.0))
    tracks, lin = track_clusters(_table(rows, rng))
    m = lin[lin.origin == "merge"]
    assert len(m) == 1 and int(m.start_frame.iloc[0]) == 5
    assert (lin.origin == "overlap").sum() == 0 and (lin.origin == "separation").sum() == 0
    assert (lin.origin == "nucleation").sum() == 1


def test_verify_merges_must_be_a_bool():
    with pytest.raises(ParameterError, match="verify_merges"):
        track_clusters(crossing_clusters((6, 9)), verify_merges="yes")


def brief_parent(parent_sig, n_frames=12):
    """A 40-atom cluster tracked from frame 0, a 14-atom detection next to it in frame 5
    only (shot-noise significance ``parent_sig``: count over ``n_atoms_err_stat``), and
    one 54-atom detection at their mass-weighted centre from frame 6 on; plus a bystander.
    Counts and positions are exactly those of a coalescence: only the brief parent's
    significance tells a coalescence from a noise-level detection (a host patch on a
    damaged crystal) next to a cluster that grew."""
    rng = np.random.default_rng(11)
    rows = []
    for f in range(n_frames):
        if f < 6:
            rows.append((f, 50.0, 50.0, 40.0))
        if f == 5:
            rows.append((f, 60.0, 50.0, 14.0))
        if f >= 6:
            rows.append((f, 52.6, 50.0, 54.0))
        rows.append((f, 20.0, 90.0, 50.0))
    d = _table(rows, rng, rel_err=0.15)
    d["n_atoms_err_stat"] = 0.05 * d["n_atoms"]
    brief = (d.frame == 5) & (d.x_A > 55.0)
    d.loc[brief, "n_atoms_err_stat"] = d.loc[brief, "n_atoms"] / parent_sig
    return d


def test_merge_with_a_brief_noise_level_parent_is_uncertain():
    # the brief parent is a 2.5 sigma detection: the merge is reported apart, not counted
    tracks, lin = track_clusters(brief_parent(2.5))
    assert (lin.origin == "merge").sum() == 0 and lin.attrs["n_merges"] == 0
    u = lin[lin.origin == "merge_uncertain"]
    assert len(u) == 1 and lin.attrs["n_merges_uncertain"] == 1
    assert int(u.start_frame.iloc[0]) == 6 and len(u.parents.iloc[0]) == 2
    assert u.merge_parent_significance.iloc[0] == pytest.approx(2.5, rel=1e-6)
    ev = lineage_events(lin)
    assert not (ev.kind == "merge").any()
    assert (ev.kind == "merge_uncertain").sum() == 1
    # the same frames with a significant brief parent (12 sigma) are a coalescence
    _, sure = track_clusters(brief_parent(12.0))
    m = sure[sure.origin == "merge"]
    assert len(m) == 1 and int(m.start_frame.iloc[0]) == 6 and sure.attrs["n_merges"] == 1
    assert m.merge_parent_significance.iloc[0] == pytest.approx(12.0, rel=1e-6)
    # the test can be switched off; without the check every merge stands
    for kw in ({"min_parent_significance": 0.0}, {"verify_merges": False}):
        _, raw = track_clusters(brief_parent(2.5), **kw)
        assert (raw.origin == "merge").sum() == 1 and (raw.origin == "merge_uncertain").sum() == 0


def test_established_parents_need_no_significance():
    # parents tracked over >= 3 frames are clusters whatever their single-frame noise:
    # the coalescence of test_coalescence_that_stays_is_a_merge_with_evidence with a
    # frame-independent error of 40 % (significance 2.5) is still a merge
    rng = np.random.default_rng(3)
    rows = []
    for f in range(14):
        xa, xb = min(40.0 + 2.0 * f, 53.0), max(70.0 - 2.0 * f, 57.0)
        if f < 6:
            rows += [(f, xa, 50.0, 40.0 + f), (f, xb, 52.0, 30.0 + f)]
        else:
            rows.append((f, 55.0, 51.0, 72.0 + 0.5 * f))
        rows.append((f, 20.0 + 0.3 * f, 90.0, 50.0))
    d = _table(rows, rng)
    d["n_atoms_err_stat"] = 0.4 * d["n_atoms"]
    _, lin = track_clusters(d)
    m = lin[lin.origin == "merge"]
    assert len(m) == 1 and np.isinf(m.merge_parent_significance.iloc[0])
    assert (lin.origin == "merge_uncertain").sum() == 0


@pytest.mark.parametrize("bad", [-1.0, np.nan, "high"])
def test_min_parent_significance_must_be_a_number_ge_0(bad):
    with pytest.raises(ParameterError, match="min_parent_significance"):
        track_clusters(brief_parent(2.5), min_parent_significance=bad)


def test_per_frame_table_counts_only_confident_merges():
    # the per-frame table of analyze_series: an uncertain merge is not a merge there
    from perovstem import Series
    from perovstem.insitu.analysis import _frames_table

    tracks, lin = track_clusters(brief_parent(2.5))
    n = int(tracks.frame.max()) + 1
    series = Series(np.zeros((n, 16, 16)), pixel_size_A=0.5, time_s=np.arange(n, dtype=float))
    drift = pd.DataFrame({"frame": np.arange(n), "dy_px": 0.0, "dx_px": 0.0})
    per_frame = pd.DataFrame({"frame": np.arange(n), "skipped": False})
    out = _frames_table(series, drift, per_frame, tracks, lin)
    assert out["n_merges"].sum() == 0
    assert out["n_merges_uncertain"].tolist() == [int(f == 6) for f in range(n)]
    _, sure = track_clusters(brief_parent(12.0))
    out = _frames_table(series, drift, per_frame, tracks, sure)
    assert out["n_merges"].tolist() == [int(f == 6) for f in range(n)]
    assert out["n_merges_uncertain"].sum() == 0
