"""Clusters in the vacuum beside a degrading crystal whose host-free-map reading is low
only through their own registry (step 4b of :mod:`perovstem.insitu.clusters`).

The detection test of a segment whose plateau excess E exceeds its host-free excess D
reads D (a host patch is no cluster).  Beside the crystal there is no host under the
segment: where the registry veto explains E − D by the cluster's own columns (the count
then stays on E), the detection now reads E too.  Before, such 10–30-atom clusters with
17–21σ on E failed the integrated test on D (issue #7, ``bench_cluster_misses``: 2 of the
80 misses of tune280/big280; bench_clusters split, 1971 / 55 / 127 → 1979 / 57 / 119
tp / fp / fn over the six sets).
"""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import kmc_imaged

from perovstem._data import Image
from perovstem.insitu import detect_clusters, estimate_lattice, projected_objects
from perovstem.insitu.evaluation import _radius_A, score_detections

# (seed, frame): tune280-recipe series (280 K, 40/55 Å, 3e3/6e3 e-/Å²/s), seeds not in
# bench_clusters; frames where the previous code missed such a cluster
CASES = [(243, 5), (244, 5), (244, 6), (192, 9)]


def _frame(seed, k):
    # the whole 12-frame series: its field of view follows all frames
    edge, rate = (55.0, 40.0)[seed % 2], (3e3, 6e3)[(seed // 2) % 2]
    _, s, truth = kmc_imaged(
        edge, rate=rate, temperature_K=280.0, seed=seed, n_frames=12, pixel_size_A=0.5,
        drift_A_per_s=(0.8, -0.5), jitter_A=0.3, rng=seed,
    )  # fmt: skip
    data = np.asarray(s.data, float)
    la, ang, _ = estimate_lattice(data[0], 0.5)
    kw = {"gain": s.metadata.get("gain", 1.0), "offset": s.metadata.get("offset", 0.0),
          "lattice_A": la, "lattice_angle_deg": ang}  # fmt: skip
    img = Image(data[k], 0.5, dose_e_per_A2=float(np.asarray(s.dose_e_per_A2)[k]))
    tc = truth["clusters"]
    return img, kw, projected_objects(tc[tc["frame"] == k]), (data.shape[1] - 1) * 0.5


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "k"), CASES)
def test_clusters_beside_the_crystal_are_detected_on_their_plateau_excess(seed, k):
    """Every ≥ 10-atom truth object in these frames whose centre lies off the crystal
    (the frame's background map above a quarter of its level, as the detector's plateau)
    and whose disc + 3 Å is inside the field is found (median |n − truth| / ``n_atoms_err``
    ≤ 1), and no detection off the crystal lies on nothing.  Old code: one such object
    missed in each frame."""
    from perovstem.insitu.clusters import _cell_average, _lattice_opening

    pulls = []
    img, kw, obj, field = _frame(seed, k)
    det = detect_clusters(img, split=True, **kw)
    sc = score_detections(det, obj)
    big, pairs = sc["objects"], dict(sc["pairs"])
    # the crystal plateau of the frame (cell average opened by 32 Å, > 1/4 of its level)
    a = np.asarray(img.data, float) - kw["offset"]
    m = _cell_average(a[None], kw["lattice_A"] / 0.5, kw["lattice_angle_deg"])[0]
    bg = _lattice_opening(m, int(np.ceil(32 / 0.5)) | 1)
    crystal = bg > 0.25 * np.percentile(m, 99.5)
    yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]] * 0.5
    checked = 0
    for i, (x, y, n) in enumerate(big[["x_A", "y_A", "n_atoms"]].to_numpy(float)):
        r = float(_radius_A(np.array([n]))[0])
        if min(x, y, field - x, field - y) - r <= 3.0:
            continue
        if crystal[int(round(y / 0.5)), int(round(x / 0.5))]:
            continue
        checked += 1
        assert i in pairs, (
            f"seed {seed} frame {k}: {n:.0f}-atom cluster at ({x:.0f}, {y:.0f}) Å missed"
        )
        j = pairs[i]
        pulls.append(abs(det["n_atoms"].iloc[j] - n) / det["n_atoms_err"].iloc[j])
    assert checked >= 1
    hit = set(pairs.values())
    for j in range(len(det)):
        x, y = det["x_A"].iloc[j], det["y_A"].iloc[j]
        if j in hit or crystal[np.hypot(xx - x, yy - y) < 8.0].any():
            continue
        near = np.hypot(obj["x_A"] - x, obj["y_A"] - y) < 8.0
        assert near.any(), f"seed {seed} frame {k}: detection at ({x:.0f}, {y:.0f}) Å on nothing"
    # their counts: |n − truth| / n_atoms_err (one 33-atom cluster of 244/6 on a
    # neighbour's flank reads 22 ± 3.4)
    assert np.median(pulls) <= 1.0, np.round(pulls, 2)
