"""Synthetic column images for the atoms tests (independent of the fitter's code path).

The images are rendered here with plain numpy (full, untruncated Gaussians) and Poisson noise, not with ``perovstem.atoms.model_image``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def render(shape, x, y, eta, rho, *, background=0.0):
    """Sum of full Gaussian columns on a pixel grid (pixel (i, j) at x = j, y = i), px units."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    img = np.zeros(shape) + background
    for xk, yk, ek, rk in zip(x, y, eta, rho, strict=True):
        img += ek * np.exp(-((xx - xk) ** 2 + (yy - yk) ** 2) / (2 * rk * rk))
    return img


def lattice(
    seed, *, n=12, spacing=8.0, rho=1.8, amp=400.0, background=10.0, jitter=1.0, pair_gap=None
):
    """Square lattice (optionally with a close partner column at ``pair_gap`` px)."""
    rng = np.random.default_rng(seed)
    g = np.arange(n) * spacing + spacing
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-jitter, jitter, gx.size)
    y = gy.ravel() + rng.uniform(-jitter, jitter, gx.size)
    if pair_gap is not None:
        x = np.concatenate([x, x + pair_gap])
        y = np.concatenate([y, y + 0.0])
    eta = amp * (1 + 0.15 * rng.standard_normal(x.size))
    shape = (int(g.max() + spacing + (pair_gap or 0)) + 1,) * 2
    lam = render(shape, x, y, eta, np.full(x.size, rho), background=background)
    data = rng.poisson(lam).astype(float)
    truth = pd.DataFrame(
        {"x_A": x, "y_A": y, "eta": eta, "rho_A": rho, "scs": 2 * np.pi * eta * rho**2}
    )
    return data, truth
