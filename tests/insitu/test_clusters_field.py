"""Clusters in a frame the crystal crosses or fills (issue #7): the background noise floor
of :func:`perovstem.insitu.detect_clusters` must not be measured on the crystal's texture
(on the vacuum where there is some, by Poisson thinning where the crystal fills the
frame)."""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def test_clusters_found_when_the_crystal_fills_the_frame(tmp_path):
    """A 64 Å crop of the 60 Å crystal (vacuum only in slivers within a cell of it; seeds
    1, 2; frames 2, 3): no vacuum measures the noise floor, so it is measured by Poisson
    thinning (the excess of two binomial halves of the counts, whose difference holds no
    texture), with a floor on the half cell at the frame border.  Measured: crops 26/33 =
    0.79 recall, precision 0.86 (full frame on the same windows 20/33 = 0.61, 0.75); AVX2
    mode 22/33, 0.81 (18/33, 0.84); the frame-wide floor (the crystal's texture) found
    2/33 (AVX2 mode 0/33)."""
    crop, full = _score(tmp_path, _FILLS)
    recall, recall_full = crop[0] / crop[1], full[0] / full[1]
    precision = 1.0 - crop[3] / max(crop[2], 1)
    assert crop[1] >= 25, crop
    assert recall >= 0.6, (crop, full)
    assert recall >= 0.9 * recall_full, (crop, full)
    assert precision >= 0.7, (crop, full)


def test_filled_floor_is_the_noise_not_the_texture():
    """On a crystal that fills the field the thinned floor is the noise of the excess: a
    periodic host with a smooth ±5 % damage texture (no clusters), 200–310 counts per
    pixel: the
    frame-wide spread of the excess is the texture (measured 5.3–5.4 counts), the thinned
    floor stays within a factor 2 of the shot noise of the cell-averaged map (measured
    1.48–1.61 against 1.26), for three noise seeds."""
    from perovstem.insitu import clusters as cl

    px, a_A = 0.5, 5.87
    a_px = a_A / px
    yy, xx = np.mgrid[0:160, 0:160] * px
    host = 0.6 + 0.4 * (np.cos(np.pi * xx / a_A) ** 2) * (np.cos(np.pi * yy / a_A) ** 2)
    texture = 1.0 + 0.05 * np.sin(2 * np.pi * xx / 23.0) * np.cos(2 * np.pi * yy / 31.0)
    lam = 5e3 * px * px * host * texture / 4.0
    side = max(3, int(np.ceil(2 * 30.0 / px)) | 1)
    for seed in range(3):
        img = np.random.default_rng(seed).poisson(lam).astype(float)
        m = cl._cell_average(img, a_px, 0.0)
        var = np.clip(m, 0, None) / a_px**2
        e = cl._plateau_excess(m, side, 0.0, var, var_per_level=1.0 / a_px**2)

        def halves(img=img):
            n = img.astype(np.int64)
            n1 = np.random.default_rng(0).binomial(n, 0.5)
            out = []
            for k in (n1, n - n1):
                mk = cl._cell_average(k.astype(float), a_px, 0.0)
                vk = np.clip(mk, 0, None) / a_px**2
                out.append(cl._plateau_excess(mk, side, 0.0, vk, var_per_level=1.0 / a_px**2))
            return out[0], out[1]

        shot = float(np.sqrt(np.median(var)))
        fw = cl._noise_floor(m, e, a_px=a_px)[0]
        floor = cl._noise_floor(m, e, a_px=a_px, image=img, halves=halves)[0]
        assert fw > 2.0 * shot, (seed, fw, shot)
        assert 0.5 * shot < floor < 2.0 * shot, (seed, floor, shot, fw)
