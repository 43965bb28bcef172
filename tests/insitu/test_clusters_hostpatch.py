"""Crystal pieces in the vacuum (detect_clusters step 4c): a piece of a broken-up
perovskite crystal, smaller than the background element, reaches the detection threshold
on the plateau excess but shows the host's fringes at its first reflections; a Pb cluster
(fcc, 2.48 Å columns) has little power there."""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import degrading_frames, fcc_cluster
from test_clusters import _score_frame

import perovstem.insitu._cluster_checks as checks
from perovstem.insitu import detect_clusters
from perovstem.insitu._cluster_checks import HOST_CONTRAST_VACUUM, host_fringe_contrast, near_mask


def _columns(shape, px, xy_A, amp, sigma_A=0.55):
    """Image of Gaussian columns at ``xy_A`` (Å, x first) of peak ``amp``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] * px
    img = np.zeros(shape)
    for (x, y), a in zip(xy_A, amp, strict=True):
        img += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_A**2))
    return img


def test_host_fringe_contrast_tells_host_lattice_from_fcc_pb():
    """A CsPbBr3 column pattern (Pb–Br : Cs : Br = 1 : 0.33 : 0.17, 5.87 Å cell, the
    abTEM ratios of shared/notes §0.4), rotated in the image, has a contrast well above
    the vacuum level; compact fcc Pb clusters (40 and 120 atoms, columns summed along
    [001]) in the vacuum are well below it, and on a host patch they dilute it."""
    px, a, ang = 0.5, 5.87, 17.0
    shape = (120, 120)
    t = np.radians(ang)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    cells = np.stack(np.meshgrid(np.arange(-8, 9), np.arange(-8, 9)), -1).reshape(-1, 2)
    host_xy, host_amp = [], []
    for off, amp in (((0, 0), 1.0), ((0.5, 0.5), 0.33), ((0.5, 0), 0.17), ((0, 0.5), 0.17)):
        host_xy.append(((cells + off) * a) @ rot.T + 30.0)
        host_amp.append(np.full(len(cells), amp))
    host_xy, host_amp = np.concatenate(host_xy), np.concatenate(host_amp)
    near = np.hypot(*(host_xy - 30.0).T) < 14.0  # a remnant patch of ~5 cells across
    host = _columns(shape, px, host_xy[near], host_amp[near])
    rng = np.random.default_rng(0)
    lc_host = host_fringe_contrast(host, 60.0, 60.0, 6.0 / px, a_px=a / px, angle_deg=ang)
    assert lc_host > HOST_CONTRAST_VACUUM + 0.2, lc_host
    for n in (40, 120):
        cl = fcc_cluster(n, rng)
        xy, cnt = np.unique(np.round(cl[:, :2], 3), axis=0, return_counts=True)
        pb = _columns(shape, px, xy + 30.0, 0.45 * cnt)  # per-atom column increments
        r = (3 * n * 4.95**3 / (16 * np.pi)) ** (1 / 3) / px + 2.0
        lc_pb = host_fringe_contrast(pb, 60.0, 60.0, r, a_px=a / px, angle_deg=ang)
        assert lc_pb < HOST_CONTRAST_VACUUM - 0.2, (n, lc_pb)
        lc_on = host_fringe_contrast(pb + host, 60.0, 60.0, r, a_px=a / px, angle_deg=ang)
        assert lc_on < lc_host - 0.3, (n, lc_on)
    # the vacuum test's neighbourhood: a mask pixel within the radius
    mask = np.zeros(shape, bool)
    mask[60, 80] = True
    got = near_mask(mask, [60.0, 60.0, 95.0], [60.0, 70.0, 60.0], [20.5, 20.5, 14.0])
    assert got.tolist() == [True, False, False]
    # no intensity or outside the frame: NaN
    assert np.isnan(host_fringe_contrast(np.zeros(shape), 60.0, 60.0, 8.0, a_px=11.7, angle_deg=0))
    assert np.isnan(host_fringe_contrast(host, -50.0, 60.0, 8.0, a_px=11.7, angle_deg=0))


@pytest.mark.slow
def test_crystal_pieces_in_the_vacuum_on_breaking_crystal_kmc(monkeypatch):
    """KMC series of small crystals that break up (3.5/4 nm, 300/320 K; seeds 175-178,
    not used to set the level), scored per frame against the projected truth objects with
    the check on and off: it removes false detections of crystal pieces and no true
    cluster.  Measured (tp / fp / fn, off -> on): 127 / 22 / 3 -> 127 / 14 / 3 (AVX-512),
    127 / 20 / 3 -> 127 / 15 / 3 (AVX2 mode)."""
    tot = {True: np.zeros(3), False: np.zeros(3)}
    cases = ((35.0, 3e3, 320.0, 175), (35.0, 6e3, 300.0, 176), (40.0, 6e3, 320.0, 177),
             (35.0, 1.5e3, 320.0, 178))  # fmt: skip
    for edge, rate, temp, seed in cases:
        images, truths, kw, field, _ = degrading_frames(
            edge, rate=rate, temperature_K=temp, seed=seed
        )
        for on in (True, False):
            level = HOST_CONTRAST_VACUUM if on else np.inf
            monkeypatch.setattr(checks, "HOST_CONTRAST_VACUUM", level)
            for img, tk in zip(images, truths, strict=True):
                a, b, c, _ = _score_frame(detect_clusters(img, **kw), tk, field)
                tot[on] += (a, b, c)
    (tp1, fp1, _), (tp0, fp0, _) = tot[True], tot[False]
    print("off", tot[False], "on", tot[True])
    assert fp0 - fp1 >= 2, (fp0, fp1)  # measured -8 / -5
    assert tp1 >= tp0 - 1, (tp0, tp1)  # measured 0 / 0
