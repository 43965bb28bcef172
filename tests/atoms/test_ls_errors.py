"""Least-squares (``noise="gaussian"``) standard errors of ``fit_columns`` on count data.

The spread of the fitted positions and SCS over noise draws of one simulated crystal (same
starting columns) must equal the reported errors.  The residual variance model v = a + b·μ
was fitted to squared residuals that the fit itself had shrunk: at 0.5 Å pixels a column
covers a few pixels and its 3 parameters absorb a third of their noise, so the errors were
1.3-1.4× too small (1.1-1.2× at 0.3 Å); the squared residuals are now divided by 1 − h
(pixel leverage).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest


@pytest.mark.parametrize("px", [0.5, 0.3])
def test_ls_errors_equal_the_spread_over_noise_draws(px):
    import perovstem.simulate as sim
    from perovstem.atoms import cspbbr3_001_cell, find_columns, fit_columns

    nc = sim.nanocrystal(25.0, rng=3)
    ideal, _ = sim.haadf_image(nc, pixel_size_A=px, dose_e_per_A2=2e4, noise=False)
    rng = np.random.default_rng(7)
    draws, errs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = find_columns(
            dataclasses.replace(ideal, data=rng.poisson(ideal.data).astype(float)),
            cell=cspbbr3_001_cell(),
        )
        for _ in range(12):
            img = dataclasses.replace(ideal, data=rng.poisson(ideal.data).astype(float))
            f = fit_columns(img, start, noise="gaussian")
            draws.append(f[["x_A", "y_A", "scs"]].to_numpy())
            errs.append(f[["x_err_A", "y_err_A", "scs_err"]].to_numpy())
    spread = np.std(draws, axis=0, ddof=1)
    reported = np.sqrt(np.mean(np.square(errs), axis=0))
    # RMS over columns of spread / reported, for x, y, SCS of each type (before, 0.5 Å:
    # 1.28-1.51; now 1.0-1.1)
    for t in ("PbBr", "Br", "Cs"):
        m = (f["type"] == t).to_numpy()
        ratio = np.sqrt(np.mean((spread[m] / reported[m]) ** 2, axis=0))
        assert np.all((ratio > 0.8) & (ratio < 1.2)), (t, ratio)
