from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem import CalibrationError, DataError, ParameterError
from perovstem.insitu import (
    atoms_from_scs,
    cluster_scs_library,
    detect_clusters,
    estimate_lattice,
)

PB_A = 4.95


def _radius(n):
    return (3 * np.asarray(n, float) * PB_A**3 / (16 * np.pi)) ** (1 / 3)


def _truth_clusters(truth: pd.DataFrame) -> pd.DataFrame:
    """Projected truth clusters; clusters overlapping in projection count as one object."""
    tcol = truth[truth["cluster_id"] >= 0]
    rows = []
    for _, g in tcol.groupby("cluster_id"):
        w = g["n_Pb0"].to_numpy(float)
        rows.append([np.average(g["x_A"], weights=w), np.average(g["y_A"], weights=w), w.sum()])
    merged = True
    while merged:
        merged = False
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                (xi, yi, ni), (xj, yj, nj) = rows[i], rows[j]
                if np.hypot(xi - xj, yi - yj) < max(_radius(ni), _radius(nj)):
                    n = ni + nj
                    rows[i] = [(xi * ni + xj * nj) / n, (yi * ni + yj * nj) / n, n]
                    del rows[j]
                    merged = True
                    break
            if merged:
                break
    return pd.DataFrame(rows, columns=["x_A", "y_A", "n_atoms"])


def _match(tc, det):
    from scipy.optimize import linear_sum_assignment

    if len(tc) == 0 or len(det) == 0:
        return []
    d = np.hypot(
        tc["x_A"].to_numpy()[:, None] - det["x_A"].to_numpy()[None, :],
        tc["y_A"].to_numpy()[:, None] - det["y_A"].to_numpy()[None, :],
    )
    tol = np.maximum(5.0, _radius(tc["n_atoms"].to_numpy()))[:, None]
    r, c = linear_sum_assignment(np.where(d < tol, d, 1e6))
    return [(i, j) for i, j in zip(r, c, strict=True) if d[i, j] < tol[i, 0]]


def test_cluster_library_monotone_and_inverse():
    lib = cluster_scs_library(300)
    s = lib["scs_A2"].to_numpy()
    assert s[0] == 0 and np.all(np.diff(s) >= 0)
    # per-atom SCS between the single-atom value and the channelling-enhanced column value
    per_atom = s[100] / 100
    assert 0.009 < per_atom < 0.02
    n = np.array([10, 57, 250])
    np.testing.assert_allclose(atoms_from_scs(lib["scs_A2"].to_numpy()[n], lib), n, atol=1)
    with pytest.raises(ParameterError, match="max_atoms"):
        cluster_scs_library(0)


def test_lattice_estimate_on_simulated_crystal():
    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    img, _ = haadf_image(
        nanocrystal(edge_A=40.0, rng=0), pixel_size_A=0.4, dose_e_per_A2=2e4, rng=0
    )
    a, ang, strength = estimate_lattice(img.data, 0.4)
    assert a == pytest.approx(5.87, rel=0.01)
    assert min(ang, 90 - ang) < 1.0
    assert strength > 20


def test_clusters_detected_and_counted_on_simulated_frames():
    """Simulator frames (fast HAADF model, abTEM-calibrated SCS, Moffat PSF tail, Poisson noise):
    clusters of 10-190 atoms at corners, edges and faces, three doses, many seeds."""
    from perovstem.simulate import add_pb_cluster, nanocrystal
    from perovstem.simulate.haadf import haadf_image

    tp = fp = fn = 0
    rel = []
    for seed in range(200, 212):
        rng = np.random.default_rng(seed)
        at = nanocrystal(edge_A=40.0, rng=seed)
        for n in rng.choice([10, 15, 25, 40, 80, 150], 4, replace=False):
            site = str(rng.choice(["corner", "edge", "face"]))
            at = add_pb_cluster(at, int(n), site=site, rng=rng)
        dose = float(rng.choice([5e3, 2e4, 1e5]))
        img, truth = haadf_image(
            at, pixel_size_A=0.4, shape=(192, 192), center_A=(0, 0), dose_e_per_A2=dose, rng=seed
        )
        det = detect_clusters(img, frame=seed)
        assert (det["frame"] == seed).all()
        tc = _truth_clusters(truth)
        tc = tc[tc["n_atoms"] >= 10].reset_index(drop=True)
        ok = _match(tc, det)
        tp += len(ok)
        fn += len(tc) - len(ok)
        fp += len(det) - len(ok)
        rel += [det["n_atoms"].iloc[j] / tc["n_atoms"].iloc[i] - 1 for i, j in ok]
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    rel = np.asarray(rel)
    assert precision >= 0.9, precision
    assert recall >= 0.9, recall
    assert abs(np.median(rel)) < 0.05
    assert np.mean(np.abs(rel) < 0.15) >= 0.75


def test_clusters_on_support_without_crystal(synth):
    # Gaussian blobs on an empty support (model independent of the simulator): SCS is the
    # integrated excess over gain*dose
    shape, px, dose, gain = (128, 128), 0.5, 1e4, 2.0
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    true = [(30.0, 40.0, 0.5), (90.0, 70.0, 1.2), (50.0, 100.0, 0.25)]  # y_px, x_px, SCS Å²
    img = np.full(shape, 0.002 * gain * dose * px**2)
    for y, x, scs in true:
        s = 4.0
        img += (
            gain
            * dose
            * scs
            * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s**2))
            / (2 * np.pi * s**2)
        )
    rng = np.random.default_rng(0)
    obs = gain * rng.poisson(img / gain)
    det = detect_clusters(
        obs, pixel_size_A=px, dose_e_per_A2=dose, gain=gain, lattice_A=5.87, lattice_angle_deg=0
    )
    assert len(det) == 3
    for y, x, scs in true:
        i = int(np.argmin(np.hypot(det["y_px"] - y, det["x_px"] - x)))
        assert det["scs_A2"].iloc[i] == pytest.approx(scs, rel=0.1)
        assert abs(det["scs_A2"].iloc[i] - scs) < 4 * det["scs_err_A2"].iloc[i] + 0.05 * scs


def test_detect_clusters_bad_input():
    with pytest.raises(CalibrationError, match="pixel_size_A"):
        detect_clusters(np.ones((32, 32)))
    bad = np.ones((32, 32))
    bad[3, 3] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        detect_clusters(bad, pixel_size_A=0.5)
    with pytest.raises(ParameterError, match="threshold_sigma"):
        detect_clusters(np.ones((32, 32)), pixel_size_A=0.5, threshold_sigma=-1)
    # no dose: detection only, SCS and counts NaN
    det = detect_clusters(
        np.random.default_rng(0).poisson(5.0, (64, 64)).astype(float), pixel_size_A=0.5
    )
    assert det.empty or det["n_atoms"].isna().all()
