"""A clipped (saturated) detector is named, not fitted silently (uqa18: the brightest
columns of a 16-bit image clipped at its 97th percentile came out 47 % wider and their
cross-sections 11 % larger, with no word)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import perovstem as ps
from perovstem.atoms._inputs import saturation_note


def _lattice(rng, peak, *, n=90, step=15, gain=1.0, offset=0.0):
    """Poisson counts of a square lattice of Gaussian columns (σ 2 px, heights 0.3-1 ×
    ``peak``) on a background, then gain and offset; also the column centres (px)."""
    y, x = np.mgrid[:n, :n]
    lam = np.full((n, n), 0.05 * peak)
    centres = [(cx, cy) for cy in range(8, n, step) for cx in range(8, n, step)]
    for cx, cy in centres:
        lam += peak * rng.uniform(0.3, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
    return rng.poisson(lam) * gain + offset, np.asarray(centres, float)


@pytest.mark.parametrize("seed", range(6))
def test_unclipped_counts_are_not_called_saturated(seed):
    rng = np.random.default_rng(seed)
    for peak in (0.3, 1, 3, 10, 30, 100, 1000, 30000):
        for gain, offset in ((1.0, 0.0), (20.0, 1000.0), (1 / 400, 0.0)):
            data, _ = _lattice(rng, peak, gain=gain, offset=offset)
            assert saturation_note(data) is None, (peak, gain)
            assert saturation_note(data.astype(np.float32)) is None


def test_identical_columns_of_a_noise_free_periodic_image_are_not_saturated():
    # every interior column has the same peak value (single pixels, no plateau)
    y, x = np.mgrid[:150, :150]
    lam = sum(
        np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / 8.0))
        for cy in range(-15, 166, 15)
        for cx in range(-15, 166, 15)
    )
    for a in (lam, np.round(lam * 1000), np.round(lam * 1000).astype(np.uint16)):
        assert saturation_note(a) is None


@pytest.mark.parametrize("seed", range(4))
def test_clipped_counts_are_called_saturated(seed):
    rng = np.random.default_rng(100 + seed)
    for peak in (30, 100, 1000, 30000):
        data, _ = _lattice(rng, peak, gain=20.0, offset=1000.0)
        for q in (0.995, 0.99, 0.97):
            note = saturation_note(np.minimum(data, np.quantile(data, q)))
            assert note is not None and "saturated" in note, (peak, q)
        # a 16-bit detector at its ceiling
        scaled = data * (65535.0 / np.quantile(data, 0.98))  # the top 2 % over the ceiling
        assert saturation_note(np.minimum(scaled, 65535).astype(np.uint16)) is not None


def test_fit_columns_names_a_saturated_image():
    # old code: fitted without a word
    rng = np.random.default_rng(7)
    data, centres = _lattice(rng, 1000.0, gain=20.0, offset=1000.0)
    pos = centres * 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the unclipped image: no warning
        ps.atoms.fit_columns(ps.Image(data, 0.2), pos, max_iter=2)
    clipped = np.minimum(data, np.quantile(data, 0.98)).astype(np.uint16)
    with pytest.warns(UserWarning, match=r"fit_columns: \d+ pixels .* image maximum .*saturated"):
        ps.atoms.fit_columns(ps.Image(clipped, 0.2), pos, max_iter=2)
