"""Segmentation of reconstructed volumes: Otsu and multi-level Otsu thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem._validation import check_int, check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = ["otsu_threshold", "multi_otsu_thresholds", "segment", "label_volumes"]


def _finite_volume(volume: Any) -> np.ndarray:
    v = np.asarray(volume)
    if v.ndim != 3:
        raise DataError(f"`volume` must be 3-D (nz, ny, nx), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise DataError("`volume` contains NaN/inf values")
    return v


def _gap_midpoints(v: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Move each threshold to the middle of the empty interval of data values around it.

    Otsu's criterion is flat between two neighbouring data values; the histogram-based
    implementation returns the interval's lower end (the first bin centre).  On a discrete
    volume (DART: background and one grey level) that is a threshold next to the background,
    and a surface meshed there on the smoothed volume encloses the blur around the object
    (1.8× the volume).  The midpoint keeps the threshold's class split and is symmetric.
    """
    out = np.asarray(thresholds, float).copy()
    for i, t in enumerate(out):
        below = v[v <= t]
        above = v[v > t]
        if below.size and above.size:
            out[i] = 0.5 * (float(below.max()) + float(above.min()))
    return out


def otsu_threshold(volume: Any, *, nbins: int = 256) -> float:
    """Otsu's threshold (IEEE Trans. SMC 9, 62 (1979)) of a volume, data units."""
    refuse_text_numbers(locals())
    from skimage.filters import threshold_otsu

    v = _finite_volume(volume)
    if np.ptp(v) == 0:
        raise DataError("`volume` is constant; no threshold exists")
    return float(_gap_midpoints(v, np.array([threshold_otsu(v, nbins=nbins)]))[0])


def multi_otsu_thresholds(volume: Any, *, n_classes: int = 3, nbins: int = 256) -> np.ndarray:
    """Multi-level Otsu thresholds (Liao, Chen & Chung, J. Inf. Sci. Eng. 17, 713 (2001)).

    Returns ``n_classes − 1`` increasing thresholds (data units).
    """
    refuse_text_numbers(locals())
    from skimage.filters import threshold_multiotsu

    if int(n_classes) < 2:
        raise ParameterError(f"`n_classes` must be >= 2, got {n_classes}")
    v = _finite_volume(volume)
    if np.ptp(v) == 0:
        raise DataError("`volume` is constant; no threshold exists")
    if n_classes == 2:
        return np.array([otsu_threshold(v, nbins=nbins)])
    return _gap_midpoints(v, threshold_multiotsu(v, classes=int(n_classes), nbins=nbins))


def segment(
    volume: Any, *, n_classes: int = 2, thresholds: Any = None, sigma_px: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Label a volume into ``n_classes`` grey-level classes.

    Parameters
    ----------
    volume : (nz, ny, nx) array
    n_classes : int
        2: background/crystal; 3: background/crystal/Pb clusters.
    thresholds : array_like, optional
        Explicit increasing thresholds (data units); Otsu/multi-Otsu when None.
    sigma_px : float
        Gaussian pre-smoothing, voxels.

    Returns
    -------
    labels : (nz, ny, nx) uint8
        0 = background … ``n_classes − 1`` = brightest class.
    thresholds : (n_classes − 1,) ndarray
    """
    refuse_text_numbers(locals())
    check_int("n_classes", n_classes, 2)  # int(nan) raised a bare ValueError
    check_positive("sigma_px", sigma_px, allow_zero=True)  # NaN was no smoothing, inf overflowed
    v = _finite_volume(volume)
    if sigma_px > 0:
        from scipy import ndimage

        v = ndimage.gaussian_filter(v.astype(np.float32), sigma_px)
    if thresholds is None:
        th = multi_otsu_thresholds(v, n_classes=n_classes)
    else:
        th = np.sort(np.asarray(thresholds, float).ravel())
        if not np.all(np.isfinite(th)) or th.size < 1:
            raise ParameterError(f"`thresholds` must be finite numbers, got {thresholds}")
    return np.digitize(v, th).astype(np.uint8), th


def label_volumes(labels: Any, voxel_size_A: float) -> dict[str, float]:
    """Volume of every class ≥ 1 (and of the union of classes ≥ 1), Å³.

    Returns
    -------
    dict
        ``class_<c>_A3`` for each class and ``object_A3`` for all non-background voxels.
    """
    refuse_text_numbers(locals())
    lab = np.asarray(labels)
    if not np.isfinite(voxel_size_A) or voxel_size_A <= 0:
        raise ParameterError(f"`voxel_size_A` must be > 0, got {voxel_size_A}")
    v3 = float(voxel_size_A) ** 3
    out = {
        f"class_{c}_A3": float(np.count_nonzero(lab == c)) * v3
        for c in range(1, int(lab.max()) + 1)
    }
    out["object_A3"] = float(np.count_nonzero(lab > 0)) * v3
    return out
