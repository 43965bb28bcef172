"""Quality metrics for reconstructions: error to a truth, Dice, layer flatness."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem._validation import refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["relative_l2", "dice", "layer_flatness"]


def relative_l2(volume: Any, truth: Any, *, mask: Any = None) -> float:
    """``‖v − t‖₂ / ‖t‖₂`` (optionally inside ``mask``)."""
    refuse_text_numbers(locals())
    v = np.asarray(volume, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if v.shape != t.shape:
        raise DataError(f"`volume` shape {v.shape} differs from `truth` shape {t.shape}")
    if mask is not None:
        m = np.asarray(mask, bool)
        v, t = v[m], t[m]
    nt = np.linalg.norm(t)
    if nt == 0:
        raise DataError("`truth` is zero; relative error undefined")
    return float(np.linalg.norm(v - t) / nt)


def dice(a: Any, b: Any) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two boolean volumes."""
    refuse_text_numbers(locals())
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else 1.0


def layer_flatness(
    volume: Any, x_range: tuple[int, int], *, mask_fraction: float = 0.5
) -> dict[str, float]:
    """Flatness of a layer interface perpendicular to the tilt axis (x) in a tomogram.

    For every (z, y) column inside the object, the interface position is the sub-pixel x of
    the largest |∂v/∂x| within ``x_range``; a plane ``x = c + b_y·y + b_z·z`` is fitted by
    least squares.  A correctly aligned reconstruction of a flat multilayer gives small
    residuals; a wrong tilt axis or bad shifts bend and tilt the interface.

    Parameters
    ----------
    volume : (nz, ny, nx) array
    x_range : (int, int)
        Columns bracketing one interface.
    mask_fraction : float
        Columns whose mean value in ``x_range`` is above this fraction of the 99th
        percentile count as inside.

    Returns
    -------
    dict
        ``rms_px`` (residual about the plane), ``tilt_y_deg``, ``tilt_z_deg``,
        ``x_mean_px``, ``n_columns``.
    """
    refuse_text_numbers(locals())
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise DataError(f"`volume` must be 3-D, got shape {v.shape}")
    lo, hi = (int(x) for x in x_range)
    if not 0 <= lo < hi - 3 or hi > v.shape[2] - 1:
        raise ParameterError(f"`x_range` must satisfy 0 <= lo < hi-3, hi < nx-1; got {x_range}")
    g = np.diff(v, axis=2)[:, :, lo:hi]
    prof = v[:, :, lo:hi].mean(axis=2)
    mask = prof > mask_fraction * np.percentile(prof, 99)
    if np.count_nonzero(mask) < 10:
        raise DataError("fewer than 10 object columns in `x_range`")
    ag = np.abs(g)
    k = np.clip(np.argmax(ag, axis=2), 1, ag.shape[2] - 2)
    zz, yy = np.indices(k.shape)
    y0, y1, y2 = ag[zz, yy, k - 1], ag[zz, yy, k], ag[zz, yy, k + 1]
    den = y0 - 2 * y1 + y2
    safe = np.where(den < 0, den, -1.0)
    frac = np.where(den < 0, 0.5 * (y0 - y2) / safe, 0.0)
    xpos = lo + k + 0.5 + frac
    z, y, x = zz[mask], yy[mask], xpos[mask]
    design = np.stack([np.ones_like(x), y, z], axis=1).astype(float)
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    res = x - design @ coef
    return {
        "rms_px": float(np.sqrt(np.mean(res**2))),
        "tilt_y_deg": float(np.rad2deg(np.arctan(coef[1]))),
        "tilt_z_deg": float(np.rad2deg(np.arctan(coef[2]))),
        "x_mean_px": float(x.mean()),
        "n_columns": int(mask.sum()),
    }
