"""Robust scale estimates shared by the analysis modules."""

from __future__ import annotations

import numpy as np


def robust_sd(values: np.ndarray, center: float | None = None) -> float:
    """Robust standard deviation ``1.4826 · median(|v − c|)`` (the median absolute
    deviation scaled to σ for Gaussian data; Rousseeuw & Croux, J. Am. Stat. Assoc. 88,
    1273 (1993)), about ``center`` (default: the median of ``values``)."""
    v = np.asarray(values)
    c = float(np.median(v)) if center is None else center
    return 1.4826 * float(np.median(np.abs(v - c)))
