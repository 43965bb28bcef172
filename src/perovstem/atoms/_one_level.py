"""Can the cross-sections hold more than one count level?  The test behind
``gmm_sweep(single_level_alpha=...)``.

ICL's entropy term makes k = 1 the global minimum of almost every SCS curve whose count
levels overlap (StatSTEM's own Pb example: ICL(1) is 128 below its k = 11), so the automatic
rules of :func:`perovstem.atoms.count.select_components` look at interior minima only.  On a
crystal of one thickness those rules split one Gaussian into several components (2-17 on
simulated cubes).  Two tests ask the data whether one level is enough:

* **spread against precision** (when the columns' standard errors ``scs_err`` are known, e.g.
  the Cramér-Rao bounds of :func:`perovstem.atoms.fit_columns`): an equal mixture of two
  levels ``s`` apart, each with noise ``sigma``, is bimodal only for ``s > 2 sigma``
  (Robertson & Fryer, Scand. Actuar. J. 1969, 137), and then its variance
  ``sigma^2 + s^2 / 4`` exceeds ``2 sigma^2``.  A type whose SCS variance is at most twice
  the mean squared error of its columns holds no two separable levels.
* **Shapiro-Wilk** (without errors, opt-in with ``single_level_alpha``; Shapiro & Wilk,
  Biometrika 52 (1965) 591, Royston's approximation as in :func:`scipy.stats.shapiro`): one
  Gaussian is kept unless rejected at ``alpha``.  It has little power on a few columns
  spread over many levels (40 columns of 1-30 atoms, the Cs columns of a roofed 8-cell
  nanocrystal), which it then reads as one level; the spread test does not need any.

A parametric-bootstrap likelihood-ratio test of one against two components (McLachlan, Appl.
Statist. 36 (1987) 318) was measured first: as weak as Shapiro-Wilk on those spreads and
0.2-30 s per sweep (docs/counting.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

_MAX_N = 5000
"""Above this many values (scipy's limit for an accurate p-value) an evenly spaced subset of
the sorted values is tested."""

SPREAD_LIMIT = 2.0
"""Largest variance ratio var(scs) / mean(scs_err^2) of one level (see the module text)."""


def spread_test(x: np.ndarray, err: np.ndarray) -> dict[str, Any] | None:
    """Variance of ``x`` against the mean squared standard error of its values.

    Returns ``None`` when fewer than half of ``err`` are finite and > 0 (no usable errors),
    else a dict ``test`` ("spread"), ``variance_ratio``, ``limit``, ``n``, ``rejected``
    (``variance_ratio > limit``: more than one level).
    """
    e = np.asarray(err, dtype=float).ravel()
    ok = np.isfinite(e) & (e > 0)
    if e.size != np.size(x) or ok.sum() < max(2, e.size / 2):
        return None
    ratio = float(np.var(np.asarray(x, dtype=float), ddof=1) / np.mean(e[ok] ** 2))
    return {
        "test": "spread",
        "variance_ratio": ratio,
        "limit": SPREAD_LIMIT,
        "n": int(e.size),
        "rejected": bool(ratio > SPREAD_LIMIT),
    }


MIN_GROUP = 5.0
"""Fewest columns (expected, from a fit's proportions) a component must hold for
:func:`resolved_choice` to count it as a level rather than a few outlying columns."""

RESOLVED_GAP = 2.0
"""Smallest distance between adjacent component means, in root-mean-square errors, of a
resolved level (the bimodality bound ``s > 2 sigma`` of Robertson & Fryer 1969)."""


BIC_MARGIN = 6.0
"""BIC drop a fit with more resolved levels needs over the best one with fewer: "strong"
evidence on Kass & Raftery's scale (JASA 90 (1995) 773, 2 ln B > 6).  Measured
(docs/counting.md): with margin 0 the Pb-Br columns of 5 of 224 one-thickness cubes took a
second level (2 of 224 with 6, as before this choice)."""


def is_resolved(means: np.ndarray, proportions: np.ndarray, n: int, rms: float) -> bool:
    """Are all components of a fit resolved levels?  Each holds at least :data:`MIN_GROUP`
    expected columns and adjacent means are more than :data:`RESOLVED_GAP` errors apart."""
    mu = np.sort(np.asarray(means, dtype=float))
    if mu.size == 1:
        return True
    if np.any(np.asarray(proportions, dtype=float) * n < MIN_GROUP):
        return False
    return bool(np.all(np.diff(mu) > RESOLVED_GAP * rms))


def resolved_choice(fits: list, err: np.ndarray) -> dict[str, Any]:
    """The number of levels of a set whose spread passed :func:`spread_test`.

    The spread bound is an equal-mixture argument: a level holding a few per cent of the
    columns (weight ``p``, ``s`` errors away, e.g. surface steps) adds only ``p (1 - p) s^2``
    to the variance ratio, so a set can pass it and still hold a resolved minority level.
    With the columns' errors known, a level cannot be narrower than them, so two components
    whose means are less than :data:`RESOLVED_GAP` rms errors apart are one level, and a
    component of fewer than :data:`MIN_GROUP` columns is not a level (the degenerate fits of
    a few columns).  Among the fits that satisfy both (:func:`is_resolved`; ``k = 1``
    always does) the one of lowest BIC (Schwarz, Ann. Stat. 6 (1978) 461; consistent for
    the order of a mixture, Keribin, Sankhya A 62 (2000) 49) is taken, a fit with more
    levels only when its BIC is lower by more than :data:`BIC_MARGIN`.

    Parameters
    ----------
    fits : list of GMMFit
        The sweep's fits, ``k = 1, 2, ...``.
    err : ndarray, shape (N,)
        Standard errors of the cross-sections (non-finite or <= 0 values are ignored).

    Returns
    -------
    dict
        ``levels`` (the chosen k), ``resolved`` (the k of all resolved fits), ``rms_error``,
        ``min_gap_errors`` (smallest adjacent gap of the chosen fit in rms errors; None for
        ``k = 1``).
    """
    e = np.asarray(err, dtype=float).ravel()
    e = e[np.isfinite(e) & (e > 0)]
    rms = float(np.sqrt(np.mean(e**2)))
    n = fits[0].n_columns
    ok = [f for f in fits if is_resolved(f.means, f.proportions, n, rms)]
    best = fits[0]
    for f in sorted(ok, key=lambda f: f.n_components):
        if f.bic < best.bic - BIC_MARGIN:
            best = f
    gap = float(np.min(np.diff(best.means)) / rms) if best.n_components > 1 else None
    return {
        "levels": int(best.n_components),
        "resolved": [int(f.n_components) for f in ok],
        "rms_error": rms,
        "min_gap_errors": gap,
    }


def one_gaussian_test(x: np.ndarray, *, alpha: float) -> dict[str, Any]:
    """Shapiro-Wilk test of ``x`` against one Gaussian.

    Parameters
    ----------
    x : ndarray, shape (N,)
        Cross-sections of one column type.
    alpha : float
        Level: one Gaussian is rejected when ``p < alpha``.

    Returns
    -------
    dict
        ``test`` ("shapiro-wilk"), ``statistic`` (W), ``p_value``, ``alpha``, ``n``,
        ``rejected`` (``p < alpha``).
    """
    v = np.sort(np.asarray(x, dtype=float).ravel())
    n = int(v.size)
    if n > _MAX_N:
        v = v[np.linspace(0, n - 1, _MAX_N).round().astype(int)]
    if n < 3 or np.ptp(v) == 0:
        w, p = 1.0, 1.0
    else:
        from scipy.stats import shapiro

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = shapiro(v)
        w, p = float(res.statistic), float(res.pvalue)
    return {
        "test": "shapiro-wilk",
        "statistic": w,
        "p_value": p,
        "alpha": float(alpha),
        "n": n,
        "rejected": bool(p < alpha),
    }
