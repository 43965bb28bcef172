"""Host-free detection pass of detect_clusters (step 3c): clusters on a degrading crystal
that the plateau excess does not show (the host columns under them lost the Pb they
gained) are found as compact peaks of the host-free map D and counted on it."""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import degrading_frames
from test_clusters import _score_frame

import perovstem.insitu.clusters as clusters
from perovstem.insitu import detect_clusters


def _textured_crystal(rng, shape=(160, 160), px=0.5, a_px=11.7):
    """A host-free map: zero-mean host texture correlated over a cell on a crystal
    square (the rest vacuum), the crystal mask."""
    from scipy import ndimage

    tex = ndimage.gaussian_filter(rng.normal(size=shape), a_px / 3)
    tex *= 1.0 / tex.std()
    crystal = np.zeros(shape, bool)
    crystal[20:140, 20:140] = True
    return np.where(crystal, tex, 0.0), crystal


def _blob(shape, y, x, sigma_px, amp):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_px**2))


def test_host_free_peaks_find_a_compact_blob_on_the_texture_only():
    """A compact 4 Å blob 3x the texture amplitude is found (within a pixel of the grid
    step), on texture alone nothing passes the threshold, a blob in the vacuum is not a
    host-free peak and the reference noise ignores the segments (a bright segment does
    not raise the threshold)."""
    px, a_px, step = 0.5, 11.7, 2
    kw = dict(step=step, px=px, smooth_A=2.0, min_separation_A=6.0, threshold=5.0)
    found, false = 0, 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        d, crystal = _textured_crystal(rng, px=px, a_px=a_px)
        none = np.zeros(d.shape, bool)
        false += len(clusters._host_free_peaks(d, crystal, none, **kw))
        y, x = rng.integers(50, 110, 2)
        pk = clusters._host_free_peaks(d + _blob(d.shape, y, x, 4.0, 8.0), crystal, none, **kw)
        found += int(len(pk) and np.min(np.hypot(pk[:, 0] - y, pk[:, 1] - x)) <= 2 * step)
        # in the vacuum: not on the crystal
        out = clusters._host_free_peaks(d + _blob(d.shape, 150, 150, 4.0, 8.0), crystal, none, **kw)
        assert not np.any(np.hypot(out[:, 0] - 150, out[:, 1] - 150) < 10) if len(out) else True
    assert found == 6
    assert false <= 1
    # a strong segment covering part of the crystal is left out of the reference noise
    rng = np.random.default_rng(99)
    d, crystal = _textured_crystal(rng, px=px, a_px=a_px)
    seg = np.zeros(d.shape, bool)
    seg[30:60, 30:60] = True
    d2 = (
        d + np.where(seg, 20.0 * rng.normal(size=d.shape), 0.0) + _blob(d.shape, 100, 100, 4.0, 8.0)
    )
    pk = clusters._host_free_peaks(d2, crystal, seg, **kw)
    assert len(pk) and np.min(np.hypot(pk[:, 0] - 100, pk[:, 1] - 100)) <= 2 * step


def test_host_free_pass_needs_a_crystal():
    """No crystal in the map (fewer than 100 pixels' worth of samples): no peak."""
    d = np.zeros((80, 80))
    d[40, 40] = 50.0
    crystal = np.zeros(d.shape, bool)
    crystal[38:43, 38:43] = True
    pk = clusters._host_free_peaks(
        d, crystal, np.zeros(d.shape, bool), step=2, px=0.5, smooth_A=2.0,
        min_separation_A=6.0, threshold=5.0,
    )  # fmt: skip
    assert len(pk) == 0


# recall of >= 10-atom objects on the four series with the pass (see the test)
RECALL_MIN = 0.925


@pytest.mark.slow
def test_host_free_pass_recall_on_degrading_crystal_kmc(monkeypatch):
    """KMC series at 280 K (seeds 151-154, not used to set the pass), scored per frame
    against the projected truth objects, with and without the host-free pass: it finds
    clusters on the crystal that the plateau excess misses, at the same precision.
    Measured (tp / fp / fn, pass off -> on): 328 / 25 / 36 -> 333 / 25 / 31 (AVX-512) and
    323 / 28 / 41 -> 327 / 28 / 37 (AVX2 mode).  Since the blob markers
    (``insitu/_markers.py``) these clusters get their own segment on E and the pass adds
    none here: 341 / 20 / 23 both ways (AVX-512, recall 0.937) and 345 / 22 / 19 (AVX2,
    0.948); recall with the pass was 0.915 / 0.898 before, hence :data:`RECALL_MIN`."""
    tot = {True: np.zeros(3), False: np.zeros(3)}
    cases = ((40.0, 3e3, 151), (55.0, 6e3, 152), (40.0, 6e3, 153), (55.0, 3e3, 154))
    for edge, rate, seed in cases:
        images, truths, kw, field, _ = degrading_frames(
            edge, rate=rate, temperature_K=280.0, seed=seed
        )
        for on in (True, False):
            monkeypatch.setattr(clusters, "HOSTFREE_SIGMA", 5.0 if on else np.inf)
            for img, tk in zip(images, truths, strict=True):
                a, b, c, _ = _score_frame(detect_clusters(img, **kw), tk, field)
                tot[on] += (a, b, c)
    (tp1, fp1, fn1), (tp0, fp0, _) = tot[True], tot[False]
    recall1 = tp1 / (tp1 + fn1)
    prec0, prec1 = tp0 / (tp0 + fp0), tp1 / (tp1 + fp1)
    assert tp1 >= tp0, (tot[False], tot[True])
    assert recall1 >= RECALL_MIN, (tot[False], tot[True])
    assert prec1 >= prec0 - 0.01, (prec0, prec1)
