"""Cluster counts at the crystal edge: the aperture background of a cluster whose disc
straddles the edge of a degrading crystal (clusters on the side faces are seen there)."""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import fcc_cluster

from perovstem.insitu import detect_clusters
from perovstem.insitu.clusters import _aperture_counts, _fcc_radius_A

PX = 0.5


def _dome(shape, cy, cx, r_px, blur_px):
    """A projected sphere (thickness ∝ sqrt(R² − r²)) blurred by a Gaussian, unit sum."""
    from scipy import ndimage

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rr = np.hypot(yy - cy, xx - cx)
    d = np.sqrt(np.clip(r_px**2 - rr**2, 0, None))
    d = ndimage.gaussian_filter(d, blur_px)
    return d / d.sum()


@pytest.mark.parametrize("n", [20, 40, 80])
@pytest.mark.parametrize("offset_A", [-2.0, 0.0, 2.0])
def test_aperture_background_is_stratified_at_a_crystal_edge(n, offset_A):
    """A cluster at the edge of a crystal whose excess map keeps a host residual h on the
    plateau (a degrading crystal: the opening sits on its thinnest columns; ≈ 0.2 of the
    plateau level on KMC series) and 0 in the vacuum.  One ring median takes one side's
    level for the whole disc; the stratified ring takes each side's own."""
    shape = (160, 160)
    cy, cx = 80.0, 80.0
    r_px = float(_fcc_radius_A(np.array([n]))[0]) / PX
    total = 1000.0 * n
    dome = total * _dome(shape, cy, cx, r_px, 1.5 / PX)
    crystal = np.zeros(shape, bool)
    edge = int(round(cx + offset_A / PX))  # the cluster centre is offset_A inside
    crystal[:, :edge] = True
    h = 0.08 * dome.max()
    e = dome + np.where(crystal, h, 0.0)
    seg = (dome > 0.05 * dome.max()).astype(np.int32)
    box = (slice(0, shape[0]), slice(0, shape[1]))
    args = (e, seg, box, np.array([cx]), np.array([cy]), np.array([dome[seg > 0].sum()]))
    kw = dict(px=PX, g=1.0, dose=None, library=None, aperture_A=3.0, floor=0.0, cell_px=1.0)
    npx, which, raw = np.array([seg.sum()], float), np.array([True]), e + 1.0
    strat, _, _ = _aperture_counts(*args, npx, which, raw, crystal=crystal, **kw)
    plain, _, _ = _aperture_counts(*args, npx, which, raw, **kw)
    # the dome lies within the disc (R + 3 Å): each side's level is removed exactly
    # (measured −0.01 %)
    assert strat[0] == pytest.approx(total, rel=0.01), strat[0] / total - 1
    # the configuration is a real trap for one ring median (h over a part of the disc):
    # measured −15…+19 %
    assert abs(plain[0] / total - 1) > 0.1, plain[0] / total - 1


def _side_face_frame(seed, n, gap_A, *, depletion=0.5, px=PX, dose=5e3):
    """A 4 nm CsPbBr3 cube whose columns lost a random share (0 … ``depletion``) of their
    atoms from the top (uneven beam damage), and a compact fcc Pb cluster of ``n`` atoms
    beside its +x facet, ``gap_A`` between its outermost atom and the facet (negative:
    it overlaps the ragged facet in projection, as on a side face)."""
    from ase import Atoms

    from perovstem.simulate import nanocrystal
    from perovstem.simulate.haadf import haadf_image

    rng = np.random.default_rng(seed)
    at = nanocrystal(edge_A=40.0, rng=seed)
    pos = at.get_positions()
    key = np.round(pos[:, :2]).astype(int)
    _, col = np.unique(key, axis=0, return_inverse=True)
    keep = np.ones(len(at), bool)
    for c in range(col.max() + 1):
        idx = np.flatnonzero(col == c)
        idx = idx[np.argsort(-pos[idx, 2])]
        keep[idx[: int(round(rng.uniform(0, depletion) * len(idx)))]] = False
    at = at[keep]
    pos = at.get_positions()
    cl = fcc_cluster(n, rng, 1.0, 0.0)
    shift = [pos[:, 0].max() + np.abs(cl[:, 0]).max() + gap_A, pos[:, 1].mean(), pos[:, 2].mean()]
    new = Atoms(["Pb"] * n, positions=cl + shift)
    for k, v in at.arrays.items():
        if k not in ("numbers", "positions"):
            fill = {"label": 2, "cluster_id": int(v.max()) + 1}.get(k, 0)
            new.set_array(k, np.full((n, *v.shape[1:]), fill, v.dtype))
    img, truth = haadf_image(
        at + new, pixel_size_A=px, shape=(180, 180), center_A=(0, 0), dose_e_per_A2=dose, rng=seed
    )
    t = truth[truth["n_Pb0"] > 0]
    return img, float(t["x_A"].mean()), float(t["y_A"].mean())


def test_side_face_cluster_counts_on_a_damaged_crystal():
    """Clusters of 40 and 80 atoms at the ragged facet of an unevenly damaged crystal
    (the edge geometry of KMC side-face clusters): one detection each, within 2σ of
    ``n_atoms_err`` of the truth (σ/n 0.14–0.25 here) and not biased by more than 15 % in
    the median.  Measured: −2, +11, +12, +13 % (−0, +12, +13, +19 % with one ring median);
    a guard for the edge geometry end to end, the stratified ring itself is tested above."""
    errs = []
    for seed, n, gap in ((1, 40, 0.0), (2, 80, 2.0), (4, 40, 2.0), (5, 80, 0.0)):
        img, x, y = _side_face_frame(seed, n, gap)
        det = detect_clusters(img)
        near = det[np.hypot(det["x_A"] - x, det["y_A"] - y) < _fcc_radius_A(n) + 4.0]
        assert len(near) == 1, (seed, near)
        nd, sd = float(near["n_atoms"].iloc[0]), float(near["n_atoms_err"].iloc[0])
        assert abs(nd - n) <= 2.0 * sd, (seed, n, nd, sd)
        errs.append(nd / n - 1)
    assert abs(float(np.median(errs))) < 0.15, errs
