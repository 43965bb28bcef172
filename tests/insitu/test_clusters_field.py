"""Clusters in a frame the crystal crosses or fills (issue #7): the background noise floor
of :func:`perovstem.insitu.detect_clusters` must not be measured on the crystal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perovstem.insitu import detect_clusters

# crops (rows, cols) of a 192² series at 0.5 Å whose 60 Å crystal crosses two borders
# (35–45 % vacuum) and of one it fills (vacuum only in slivers within a cell of the crystal)
_CROSSES = {"rect": (0, 192, 24, 152), "rectT": (24, 152, 0, 192)}
_FILLS = {"sq128": (32, 160, 24, 152)}


def _series(tmp_path, seed):
    from perovstem import load
    from perovstem.cli.main import main

    out = tmp_path / f"s{seed}.npz"
    rc = main(["simulate", "series", "-o", str(out), "-n", "4", "--size-px", "192",
               "--seed", str(seed)])  # fmt: skip
    assert rc == 0
    return load(out), pd.read_parquet(tmp_path / f"s{seed}_clusters.parquet")


def _score(tmp_path, crops):
    """Per crop and for the full frame on the same window: ≥ 10-atom truth clusters in
    view found by a detection within 4 Å (hits), detections farther than 4 Å from every
    truth cluster of any size (false), seeds 1 and 2, frames 2 and 3."""
    crop = np.zeros(4, int)  # hits, truth, detections, false
    full = np.zeros(4, int)
    for seed in (1, 2):
        s, truth = _series(tmp_path, seed)
        px = s.pixel_size_A
        for f in (2, 3):
            t_all = truth[(truth["frame"] == f) & truth["in_view"]]
            kw = {"pixel_size_A": px, "dose_e_per_A2": float(s.dose_e_per_A2[f]),
                  "gain": 1.0, "offset": 0.0}  # fmt: skip
            det_full = detect_clusters(s.data[f], **kw)
            for r0, r1, c0, c1 in crops.values():
                inside = (
                    (t_all["row_px"] >= r0) & (t_all["row_px"] < r1)
                    & (t_all["col_px"] >= c0) & (t_all["col_px"] < c1)
                )  # fmt: skip
                t = t_all[inside]
                ty, tx = t["row_px"].to_numpy() - r0, t["col_px"].to_numpy() - c0
                big = t["n_atoms"].to_numpy() >= 10
                det = detect_clusters(s.data[f, r0:r1, c0:c1], **kw)
                fy, fx = det_full["y_px"].to_numpy() - r0, det_full["x_px"].to_numpy() - c0
                win = (fy >= 0) & (fy < r1 - r0) & (fx >= 0) & (fx < c1 - c0)
                for acc, dy, dx in (
                    (crop, det["y_px"].to_numpy(), det["x_px"].to_numpy()),
                    (full, fy[win], fx[win]),
                ):
                    d = np.hypot(dy[:, None] - ty[None], dx[:, None] - tx[None]) * px
                    acc[1] += int(big.sum())
                    acc[2] += len(dy)
                    if len(dy) and len(t):
                        acc[0] += int((d.min(0)[big] < 4.0).sum())
                        acc[3] += int((d.min(1) >= 4.0).sum())
                    else:
                        acc[3] += len(dy)
    return crop, full


def test_clusters_found_when_the_crystal_crosses_the_frame(tmp_path):
    """Crops where the crystal crosses two borders of the frame (seeds 1, 2; frames 2, 3;
    35–45 % vacuum): the floor now comes from the vacuum a cell away from the crystal,
    and the crops find the ≥ 10-atom clusters at least as well as the full frame does on
    the same windows.  Measured: crops 70/89 = 0.79 recall, precision 0.83 (full frame
    60/89 = 0.67, 0.91); AVX2 mode 70/89, 0.85 (59/89, 0.97); the frame-wide floor (the
    crystal's excess texture) found 2/89."""
    crop, full = _score(tmp_path, _CROSSES)
    recall, recall_full = crop[0] / crop[1], full[0] / full[1]
    precision = 1.0 - crop[3] / max(crop[2], 1)
    assert crop[1] >= 60, crop
    assert recall >= 0.6, (crop, full)
    assert recall >= 0.9 * recall_full, (crop, full)
    assert precision >= 0.7, (crop, full)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation (issue #7): a crystal that fills the frame leaves no vacuum "
    "to measure the noise floor on; the frame-wide value (the crystal's texture) is kept",
)
def test_clusters_found_when_the_crystal_fills_the_frame(tmp_path):
    """A 64 Å crop of the 60 Å crystal (vacuum only in slivers within a cell of it):
    measured 2/33 found against 20/33 by the full frame on the same windows (AVX2 mode
    0/33 against 18/33)."""
    crop, full = _score(tmp_path, _FILLS)
    assert crop[0] / crop[1] >= 0.5 * full[0] / full[1], (crop, full)
