"""Electron shot noise shared by the image, series and tilt simulators."""

from __future__ import annotations

import numpy as np

from perovstem.errors import ParameterError

# Above this many electrons per pixel the Poisson law is its normal limit to < 1e-6 in
# skewness (numpy's Poisson sampler also refuses means above ~9e18).
_NORMAL_LIMIT = 1e12


def shot_noise(lam: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Poisson-distributed electron counts of mean ``lam`` (electrons per pixel).

    Means above 10¹² electrons are drawn from the normal limit N(λ, λ), so that absurdly
    high doses still simulate (nearly noise-free) instead of failing in numpy.
    """
    lam = np.asarray(lam, dtype=float)
    if not np.all(np.isfinite(lam)):
        raise ParameterError(
            "expected electrons per pixel are not finite (dose × pixel area too large?)"
        )
    big = lam > _NORMAL_LIMIT
    if not big.any():
        return gen.poisson(lam).astype(np.float64)
    out = np.empty(lam.shape)
    out[~big] = gen.poisson(lam[~big])
    out[big] = gen.normal(lam[big], np.sqrt(lam[big]))
    return out
