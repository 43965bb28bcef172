"""Temporal gap filling of cluster detections (``temporal_clusters``) and the dropped
segments of ``detect_clusters(..., return_candidates=True)``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _insitu_kmc import fcc_cluster

from perovstem import DataError, ParameterError
from perovstem.insitu import (
    CANDIDATE_COLUMNS,
    CLUSTER_COLUMNS,
    detect_clusters,
    temporal_clusters,
)


def _drift(n_frames, rng, reliable=None):
    """Drift table (register_drift's columns): a linear drift plus jitter, Å."""
    v = rng.uniform(-1.2, 1.2, 2)
    t = np.arange(n_frames)
    d = t[:, None] * v[None] + rng.normal(0, 0.3, (n_frames, 2))
    d -= d[0]
    out = pd.DataFrame({"frame": t, "dx_A": d[:, 0], "dy_A": d[:, 1]})
    if reliable is not None:
        out["drift_reliable"] = reliable
    return out


def _det(frame, x, y, n, err=None):
    row = dict.fromkeys(CLUSTER_COLUMNS, np.nan)
    row.update(
        frame=frame,
        x_A=x,
        y_A=y,
        n_atoms=n,
        n_atoms_err=0.15 * n if err is None else err,
        n_atoms_err_stat=0.1 * n,
        radius_A=5.0,
        area_A2=np.pi * 25.0,
        host_fraction=0.0,
        host_ok=True,
    )
    return row


def _cand(frame, x, y, n, reason="min_atoms", sig=8.0):
    return {
        "frame": frame,
        "x_A": x,
        "y_A": y,
        "n_atoms": n,
        "n_atoms_err": 5.0,
        "n_atoms_segment": 30.0,
        "significance": sig,
        "host_fraction": 0.5,
        "reason": reason,
    }


def _tables(dets, cands):
    d = pd.DataFrame(dets, columns=CLUSTER_COLUMNS)
    d["frame"] = d["frame"].astype(np.int64)
    d["host_ok"] = d["host_ok"].astype(bool)
    c = pd.DataFrame(cands, columns=CANDIDATE_COLUMNS)
    return d, c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_in_a_track_is_filled_one_frame_candidates_are_not(seed):
    rng = np.random.default_rng(seed)
    T = 7
    dr = _drift(T, rng)
    x0, y0 = rng.uniform(20, 60, 2)
    counts = 20 + 2.0 * np.arange(T) + rng.normal(0, 1, T)
    gap = 3
    dets, cands = [], []
    for k in range(T):
        x, y = x0 + dr.dx_A[k] + rng.normal(0, 0.5), y0 + dr.dy_A[k] + rng.normal(0, 0.5)
        if k == gap:
            # the count collapsed on the host-free map: dropped by min_atoms
            cands.append(_cand(k, x, y, 1.5))
        else:
            dets.append(_det(k, x, y, counts[k]))
    # a host patch / noise peak dropped in one frame only, far from the track
    xf, yf = x0 + 25.0, y0 - 20.0
    cands.append(_cand(gap, xf + dr.dx_A[gap], yf + dr.dy_A[gap], 3.0))
    # a dropped segment next to the track in frame 1, where the track is detected: the
    # cluster is already reported there
    cands.append(_cand(1, x0 + dr.dx_A[1] + 2.5, y0 + dr.dy_A[1], 2.0))
    d, c = _tables(dets, cands)
    out = temporal_clusters(d, c, drift=dr)
    new = out[out["temporal"]]
    assert len(new) == 1
    r = new.iloc[0]
    assert r["frame"] == gap and r["n_support"] == 4
    nb = counts[[gap - 2, gap - 1, gap + 1, gap + 2]]
    assert r["n_atoms"] == pytest.approx(np.median(nb))
    assert r["n_atoms_err"] >= np.std(nb, ddof=1)
    # its own collapsed count is not used; the position is the candidate's
    assert abs(r["x_A"] - (x0 + dr.dx_A[gap])) < 2.0
    # the detector's own rows are unchanged and flagged
    own = out[~out["temporal"]].drop(columns=["temporal", "n_support"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(own, d.sort_values("frame", kind="stable").reset_index(drop=True))
    assert out["frame"].is_monotonic_increasing
    # without the drift the track's frames do not line up (drift > reach over 2 frames)
    if (
        np.hypot(*(dr[["dx_A", "dy_A"]].to_numpy()[gap + 2] - dr[["dx_A", "dy_A"]].to_numpy()[gap]))
        > 6
    ):
        assert temporal_clusters(d, c)["temporal"].sum() <= 1


@pytest.mark.parametrize("seed", [3, 4])
def test_low_significance_and_first_last_frames(seed):
    rng = np.random.default_rng(seed)
    T = 6
    dr = _drift(T, rng)
    x0, y0 = rng.uniform(20, 60, 2)
    pos = [(x0 + dr.dx_A[k], y0 + dr.dy_A[k]) for k in range(T)]
    dets = [_det(k, *pos[k], 30.0) for k in (1, 2, 4)]
    cands = [
        _cand(0, *pos[0], 2.0),  # first frame: frames 1 and 2 support it (2 of 2)
        _cand(3, *pos[3], 9.0, reason="significance", sig=2.0),  # below hi/2: noise level
        _cand(5, *pos[5], 2.0),  # last frame: only frame 4 holds a detection (1 of 2)
    ]
    d, c = _tables(dets, cands)
    # default: support on both sides of the frame (frame 3: frames 2 and 4), so the
    # first and last frames are never filled; frame 3's candidate is below hi/2
    assert not temporal_clusters(d, c, drift=dr)["temporal"].any()
    out0 = temporal_clusters(d, c, drift=dr, min_significance=0.0)
    assert out0.loc[out0["temporal"], "frame"].tolist() == [3]
    # one-sided support allowed: the first frame is filled from frames 1 and 2 (2 of 2),
    # the last is not (only frame 4: 1 of 2)
    out1 = temporal_clusters(d, c, drift=dr, both_sides=False)
    assert out1.loc[out1["temporal"], "frame"].tolist() == [0]
    out2 = temporal_clusters(d, c, drift=dr, both_sides=False, min_significance=0.0)
    assert sorted(out2.loc[out2["temporal"], "frame"]) == [0, 3]
    # a reason outside `reasons` is not kept
    c2 = c.copy()
    c2["reason"] = "peak"
    assert not temporal_clusters(d, c2, drift=dr)["temporal"].any()


def test_unreliable_drift_frames_give_no_support():
    rng = np.random.default_rng(5)
    T = 5
    rel = np.array([False, False, True, False, True])
    dr = _drift(T, rng, reliable=rel)
    x0, y0 = 40.0, 40.0
    pos = [(x0 + dr.dx_A[k], y0 + dr.dy_A[k]) for k in range(T)]
    dets = [_det(k, *pos[k], 25.0) for k in (0, 1, 3, 4)]
    d, c = _tables(dets, [_cand(2, *pos[2], 1.0)])
    assert not temporal_clusters(d, c, drift=dr)["temporal"].any()  # frame 4 only
    dr["drift_reliable"] = True
    assert temporal_clusters(d, c, drift=dr)["temporal"].sum() == 1


def test_bad_input_messages():
    d, c = _tables([_det(0, 10.0, 10.0, 20.0)], [_cand(1, 10.0, 10.0, 1.0)])
    with pytest.raises(ParameterError, match="min_support"):
        temporal_clusters(d, c, min_support=0)
    with pytest.raises(ParameterError, match="window"):
        temporal_clusters(d, c, window=1.5)
    with pytest.raises(DataError, match="candidates.*reason"):
        temporal_clusters(d, c.drop(columns="reason"))
    with pytest.raises(DataError, match="drift"):
        temporal_clusters(d, c, drift=pd.DataFrame({"frame": [0, 1], "dx": [0, 0]}))
    with pytest.raises(DataError, match=r"frame\(s\) \[1\]"):
        temporal_clusters(d, c, drift=pd.DataFrame({"frame": [0], "dx_A": [0.0], "dy_A": [0.0]}))


def _frames(seed, n_frames=5, one_frame=2):
    """A 4 nm crystal with a persistent 40-atom Pb cluster beside it, moved by a drift
    over ``n_frames`` frames (fast HAADF model), and a 25-atom cluster present in frame
    ``one_frame`` only: (images, drift table)."""
    from ase import Atoms

    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(seed)
    at = nanocrystal(edge_A=40.0, rng=seed)
    pos = at.get_positions()
    c = pos.mean(0)
    half = (pos.max(0) - pos.min(0)) / 2
    persist = fcc_cluster(40, rng) + c + [half[0] + 9.0, rng.uniform(-8, 8), 0.0]
    once = fcc_cluster(25, rng) + c + [rng.uniform(-8, 8), -half[1] - 9.0, 0.0]
    v = np.array([0.8, -0.5]) + rng.normal(0, 0.2, 2)
    shifts = np.arange(n_frames)[:, None] * v[None]
    imgs = []
    for k in range(n_frames):
        parts = at + Atoms(["Pb"] * 40, positions=persist)
        if k == one_frame:
            parts = parts + Atoms(["Pb"] * 25, positions=once)
        for name in list(parts.arrays):
            if name not in ("numbers", "positions"):
                del parts.arrays[name]
        p = parts.get_positions()
        p[:, :2] += shifts[k]
        parts.set_positions(p)
        img, _ = haadf_image(
            parts, pixel_size_A=0.5, shape=(180, 180), center_A=(0, 0),
            dose_e_per_A2=5e3, rng=100 * seed + k,
        )  # fmt: skip
        imgs.append(img)
    dr = pd.DataFrame({"frame": np.arange(n_frames), "dx_A": shifts[:, 0], "dy_A": shifts[:, 1]})
    return imgs, dr


@pytest.mark.parametrize("seed", [11, 12])
def test_series_recovers_a_cluster_dropped_in_one_frame(seed):
    """End to end on images: in frame 2 both the persistent cluster and a one-frame
    cluster are dropped (``min_atoms`` raised there); the temporal pass gives the
    persistent one back, at its place, with its neighbours' count, and not the other."""
    imgs, dr = _frames(seed)
    dets, cands = [], []
    for k, img in enumerate(imgs):
        det, cand = detect_clusters(
            img, frame=k, return_candidates=True, min_atoms=500.0 if k == 2 else 5.0
        )
        # the detections do not depend on return_candidates
        pd.testing.assert_frame_equal(
            det, detect_clusters(img, frame=k, min_atoms=500.0 if k == 2 else 5.0)
        )
        assert list(cand.columns) == CANDIDATE_COLUMNS
        dets.append(det)
        cands.append(cand)
    assert len(dets[2]) == 0
    big = [d[d["n_atoms"] >= 30] for d in dets]
    assert all(len(b) == 1 for i, b in enumerate(big) if i != 2)
    allc = pd.concat(dets, ignore_index=True)
    out = temporal_clusters(allc, pd.concat(cands, ignore_index=True), drift=dr)
    new = out[out["temporal"]]
    assert len(new) == 1 and int(new["frame"].iloc[0]) == 2
    # at the persistent cluster's place (its detections in frames 1 and 3, drift removed)
    p1 = big[1][["x_A", "y_A"]].to_numpy()[0] - dr.loc[1, ["dx_A", "dy_A"]].to_numpy(float)
    p2 = new[["x_A", "y_A"]].to_numpy()[0] - dr.loc[2, ["dx_A", "dy_A"]].to_numpy(float)
    assert np.hypot(*(p1 - p2)) < 3.0
    nb = [float(big[k]["n_atoms"].iloc[0]) for k in (0, 1, 3, 4)]
    assert new["n_atoms"].iloc[0] == pytest.approx(np.median(nb))
    assert abs(new["n_atoms"].iloc[0] / 40 - 1) < 0.25
    # the one-frame cluster was a candidate of frame 2 too, and is not kept
    c2 = cands[2]
    assert (c2["reason"] == "min_atoms").sum() >= 2
