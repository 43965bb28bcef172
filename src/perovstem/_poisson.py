"""CPU-independent seeded Poisson draws.

Shared by the image, series and tilt simulators (electron shot noise,
:func:`shot_noise`) and by the parametric bootstrap of
:func:`perovstem.quantify.kinetics.fit_model` (:func:`poisson_counts`): the same seed gives
the same counts on every CPU, whatever last bits numpy's SIMD kernels leave in the means.
"""

from __future__ import annotations

import numpy as np

from perovstem.errors import ParameterError

# Above this many electrons per pixel the Poisson law is its normal limit to < 1e-6 in
# skewness (numpy's Poisson sampler also refuses means above ~9e18).
_NORMAL_LIMIT = 1e12

# Significant bits kept of each mean before sampling (relative step 2⁻²⁰ ≈ 1e-6, far below
# the shot noise 1/√λ of any mean under 1e12).  numpy's exp/sin/power kernels differ in the
# last bits between SIMD levels (AVX-512, AVX2, scalar), and the Poisson sampler is a
# rejection method that uses a variable number of random numbers: one flipped acceptance
# shifts every later draw, so the same seed gave a different noise image on another CPU.
# On the 2⁻²⁰ grid a last-bit change moves a mean across a grid point with probability
# ≈ 1e-9 per pixel.
_MEAN_BITS = 20
# Means below this (electrons per pixel) are set to 0: vacuum pixels far from every atom hold
# 1e-20…1e-16 of rounding residue whose value (and whether it is exactly 0) depends on the
# CPU (and may be −1e-17 after an FFT), and numpy draws no random number for a mean of
# exactly 0 but one for any other.
_ZERO_BELOW = 2.0**-30


def _on_grid(lam: np.ndarray) -> np.ndarray:
    """``lam`` rounded to :data:`_MEAN_BITS` significant bits (exact, CPU-independent)."""
    mant, expo = np.frexp(np.where(np.abs(lam) < _ZERO_BELOW, 0.0, lam))
    return np.ldexp(np.round(mant * 2.0**_MEAN_BITS) / 2.0**_MEAN_BITS, expo)


def poisson_counts(
    lam: np.ndarray, gen: np.random.Generator, *, what: str = "Poisson means"
) -> np.ndarray:
    """Poisson counts of mean ``lam``, the same on every CPU for the same ``gen`` state.

    The means are rounded to :data:`_MEAN_BITS` (20) significant bits (a relative change
    ≤ 5e-7), means within ±2⁻³⁰ ≈ 1e-9 of 0 are set to 0 (more negative ones are an error),
    and the counts come from a child generator seeded by one draw of ``gen``, so ``gen``
    advances by exactly one draw whatever the means (a rare difference cannot shift later
    draws).  Why: numpy's Poisson sampler is a rejection method that uses a variable number
    of random numbers and draws nothing for a mean of exactly 0; means that differ in the
    last bits between SIMD levels (AVX-512, AVX2, scalar), or a 1e-17 rounding residue
    against an exact 0, desynchronised every later draw of a seeded run.  Means above
    10¹² are drawn from the normal limit N(λ, λ) (numpy refuses means above ~9e18).

    Parameters
    ----------
    lam : array_like
        Means (≥ 0; residues down to −2⁻³⁰ count as 0).
    gen : numpy.random.Generator
        Advanced by exactly one draw.
    what : str
        What the means are, for the error message.

    Returns
    -------
    ndarray of float64
        Counts, the shape of ``lam``.
    """
    lam = np.asarray(lam, dtype=float)
    if not np.all(np.isfinite(lam)):
        raise ParameterError(f"{what} are not finite")
    if np.any(lam <= -_ZERO_BELOW):
        raise ParameterError(f"{what} must be >= 0, got a minimum of {float(lam.min())!r}")
    child = np.random.default_rng(int(gen.integers(0, 2**63)))
    lam = _on_grid(lam)
    big = lam > _NORMAL_LIMIT
    if not big.any():
        return child.poisson(lam).astype(np.float64)
    out = np.empty(lam.shape)
    out[~big] = child.poisson(lam[~big])
    out[big] = child.normal(lam[big], np.sqrt(lam[big]))
    return out


def shot_noise(lam: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Poisson-distributed electron counts of mean ``lam`` (electrons per pixel).

    Means above 10¹² electrons are drawn from the normal limit N(λ, λ), so that absurdly
    high doses still simulate (nearly noise-free) instead of failing in numpy.  The same
    ``gen`` state gives the same counts on every CPU (:func:`poisson_counts`).
    """
    lam = np.asarray(lam, dtype=float)
    if not np.all(np.isfinite(lam)):
        raise ParameterError(
            "expected electrons per pixel are not finite (dose × pixel area too large?)"
        )
    return poisson_counts(lam, gen, what="expected electrons per pixel")
