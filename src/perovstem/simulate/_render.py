"""Numba kernels of the fast HAADF renderer (imported lazily: numba compile on first use)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def splat_gaussians(img, yc, xc, amp, sig, sy_row, sx_row, nsig):  # pragma: no cover - numba
    """Add normalised 2-D Gaussians to ``img`` in place (all lengths in pixels).

    Pixel (i, j) is sampled at (i + sy_row[i], j + sx_row[i]) — per-scan-line position
    errors (drift, line jitter).  ``amp[k]`` is the integral of peak k in pixel² units.
    """
    m, n = img.shape
    smax = 0.0
    for i in range(m):
        a = abs(sy_row[i])
        if a > smax:
            smax = a
        a = abs(sx_row[i])
        if a > smax:
            smax = a
    for k in range(xc.shape[0]):
        s = sig[k]
        if amp[k] == 0.0:
            continue
        r = int(nsig * s + smax) + 2
        i0 = max(int(math.floor(yc[k])) - r, 0)
        i1 = min(int(math.floor(yc[k])) + r + 2, m)
        j0 = max(int(math.floor(xc[k])) - r, 0)
        j1 = min(int(math.floor(xc[k])) + r + 2, n)
        if i0 >= i1 or j0 >= j1:
            continue
        inv = 0.5 / (s * s)
        norm = amp[k] / (2.0 * math.pi * s * s)
        for i in range(i0, i1):
            dy = i + sy_row[i] - yc[k]
            ey = dy * dy * inv
            if ey > 0.5 * nsig * nsig:
                continue
            fy = norm * math.exp(-ey)
            for j in range(j0, j1):
                dx = j + sx_row[i] - xc[k]
                ex = dx * dx * inv
                if ex > 0.5 * nsig * nsig:
                    continue
                img[i, j] += fy * math.exp(-ex)


@njit(cache=True)
def deposit_bilinear(grid, yc, xc, amp):  # pragma: no cover - numba
    """Add ``amp`` at fractional positions with bilinear weights (preserves sum and centroid)."""
    m, n = grid.shape
    for k in range(xc.shape[0]):
        y, x = yc[k], xc[k]
        i = int(math.floor(y))
        j = int(math.floor(x))
        fy = y - i
        fx = x - j
        for di, wy in ((0, 1.0 - fy), (1, fy)):
            ii = i + di
            if ii < 0 or ii >= m:
                continue
            for dj, wx in ((0, 1.0 - fx), (1, fx)):
                jj = j + dj
                if jj < 0 or jj >= n:
                    continue
                grid[ii, jj] += amp[k] * wy * wx


def warm_up() -> None:
    """Compile the kernels (called by benchmarks before timing)."""
    img = np.zeros((8, 8))
    z = np.zeros(8)
    splat_gaussians(
        img, np.array([4.0]), np.array([4.0]), np.array([1.0]), np.array([1.0]), z, z, 4.0
    )
    deposit_bilinear(img, np.array([4.0]), np.array([4.0]), np.array([1.0]))
