"""Synthetic lattice frames for in-situ tests (independent of the simulator's image model)."""

from __future__ import annotations

import numpy as np
import pytest
from _insitu_kmc import kmc_imaged as _kmc_imaged


def render_frame(shape, positions_px, amplitudes, sigma_px, background=2.0):
    """Sum of analytic Gaussians (no interpolation of a template: no inverse crime)."""
    yy = np.arange(shape[0])[:, None, None]
    xx = np.arange(shape[1])[None, :, None]
    pos = np.asarray(positions_px, float)
    amp = np.asarray(amplitudes, float)
    if pos.size == 0:
        return np.full(shape, float(background))
    g = np.exp(-((yy - pos[:, 0]) ** 2 + (xx - pos[:, 1]) ** 2) / (2 * sigma_px**2))
    return background + (g * amp).sum(-1)


def lattice_positions(lo, hi, spacing):
    g = np.arange(lo, hi, spacing)
    y, x = np.meshgrid(g, g, indexing="ij")
    return np.c_[y.ravel(), x.ravel()]


def drifting_series(n_frames, *, shape=(96, 96), step_px=0.7, counts=3.0, rng=0):
    """Poisson-noisy lattice NC frames with a random-walk drift; returns (frames, drift)."""
    rng = np.random.default_rng(rng)
    pos = lattice_positions(22, shape[0] - 22, 7.3)
    drift = np.cumsum(rng.normal(0, step_px, (n_frames, 2)), 0)
    drift -= drift[0]
    frames = np.empty((n_frames, *shape))
    for k in range(n_frames):
        img = render_frame(shape, pos + drift[k], np.full(len(pos), 20.0), 1.4)
        frames[k] = rng.poisson(img * counts)
    return frames, drift


@pytest.fixture
def synth():
    class _S:
        render_frame = staticmethod(render_frame)
        lattice_positions = staticmethod(lattice_positions)
        drifting_series = staticmethod(drifting_series)

    return _S


@pytest.fixture(scope="session")
def kmc_imaged():
    """:func:`_insitu_kmc.kmc_imaged` for module-scoped fixtures."""
    return _kmc_imaged
