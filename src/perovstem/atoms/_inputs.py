"""Input handling shared by the atoms modules (images, position tables, types)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Image
from perovstem._validation import check_finite
from perovstem.errors import DataError, ParameterError

__all__ = ["as_image", "as_positions", "px_to_A", "A_to_px", "insignificant_columns"]


def as_image(image: Any, pixel_size_A: float | None = None) -> Image:
    """Return an :class:`Image` (a bare 2-D array needs ``pixel_size_A``); reject NaN/inf.

    ``pixel_size_A`` given with an :class:`Image` must agree with the Image's own (it was
    silently ignored: a user correcting a wrong calibration this way got the old one).
    """
    if isinstance(image, Image):
        img = image
        if pixel_size_A is not None:
            try:
                px = float(pixel_size_A)
            except (TypeError, ValueError):
                px = float("nan")
            if not np.isclose(px, float(img.pixel_size_A), rtol=1e-6, atol=0.0):
                raise ParameterError(
                    f"`pixel_size_A` = {pixel_size_A!r} disagrees with the Image's pixel size "
                    f"{img.pixel_size_A:g} Å; leave it out, or pass "
                    "image.replace(pixel_size_A=...) to recalibrate"
                )
    else:
        if pixel_size_A is None:
            raise ParameterError(
                "`pixel_size_A` is required when `image` is a bare array, got None"
            )
        img = Image(np.asarray(image), pixel_size_A)
    data = np.asarray(img.data)
    if data.dtype.kind == "f":
        check_finite("image", data)
    return img


def as_positions(
    positions: Any, image: Image, *, types: Any = None, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(xy_A (N, 2), types (N,) str)`` from a DataFrame or an (N, 2) array in Å.

    Raises :class:`DataError` for NaNs, no positions, or positions outside the image.
    """
    if isinstance(positions, pd.DataFrame):
        for col in ("x_A", "y_A"):
            if col not in positions.columns:
                raise DataError(
                    f"`positions` needs columns 'x_A' and 'y_A', got {list(positions.columns)}"
                )
        xy = positions[["x_A", "y_A"]].to_numpy(dtype=float)
        if types is None and "type" in positions.columns:
            types = positions["type"].to_numpy()
    else:
        xy = np.asarray(positions, dtype=float)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise DataError(f"`positions` must have shape (N, 2) in Å, got {xy.shape}")
    if xy.shape[0] == 0 and not allow_empty:
        raise DataError("`positions` is empty: no atom columns (no peaks found?)")
    check_finite("positions", xy)
    n = xy.shape[0]
    if types is None:
        t = np.full(n, "column", dtype=object)
    else:
        t = np.asarray(types).astype(str).astype(object)
        if t.ndim == 0:
            t = np.full(n, str(t), dtype=object)
        if t.shape != (n,):
            raise ParameterError(f"`types` must have one entry per column ({n}), got {t.shape}")
    px = A_to_px(xy, image)
    ny, nx = image.shape
    m = 1.5  # centres may sit up to one pixel beyond the outer pixel edge
    bad = (px[:, 0] < -m) | (px[:, 0] > nx - 1 + m) | (px[:, 1] < -m) | (px[:, 1] > ny - 1 + m)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{int(bad.sum())} column position(s) lie outside the image "
            f"(first: #{k} at x_A={xy[k, 0]:.3f}, y_A={xy[k, 1]:.3f}; image covers "
            f"x_A {image.origin_A[0] - m * image.pixel_size_A:.3f}…"
            f"{image.origin_A[0] + (nx - 1 + m) * image.pixel_size_A:.3f}, "
            f"y_A {image.origin_A[1] - m * image.pixel_size_A:.3f}…"
            f"{image.origin_A[1] + (ny - 1 + m) * image.pixel_size_A:.3f})"
        )
    return xy, t


def A_to_px(xy_A: np.ndarray, image: Image) -> np.ndarray:
    """Convert (N, 2) ``(x_A, y_A)`` to pixel coordinates ``(col, row)`` (0-based centres)."""
    o = np.asarray(image.origin_A, dtype=float)
    return (np.asarray(xy_A, dtype=float) - o) / image.pixel_size_A


def px_to_A(xy_px: np.ndarray, image: Image) -> np.ndarray:
    """Convert (N, 2) pixel ``(col, row)`` to ``(x_A, y_A)``."""
    o = np.asarray(image.origin_A, dtype=float)
    return np.asarray(xy_px, dtype=float) * image.pixel_size_A + o


# Pile-up at the image maximum that marks a clipped (saturated) detector: at least this many
# pixels at the maximum, and this many times the pixels at the next lower value.  Unclipped
# Poisson lattices (peaks of 0.3-30000 counts, gain 1/400-20, 90² and 300² px, 10-20 seeds)
# have ratios <= 4 with <= 4 pixels at the maximum, and <= 0.2 where 10-19 pixels share it
# (peaks of 0.3-1 count); clipping at the 99.5th-97th percentile gives 40-270 pixels at
# ratios >= 4 for peaks of 30 counts and more (1.3-1.6 at 10 counts: not detectable).
_SATURATION_MIN_PIXELS = 10
_SATURATION_RATIO = 2.0
_SATURATION_PLATEAU_PX = 3  # and one 4-connected plateau of at least this many pixels


def saturation_note(data: Any) -> str | None:
    """A sentence on a clipped (saturated) detector when ``data`` piles up at its maximum,
    else None.

    A detector or an 8/16-bit conversion that clips the brightest columns leaves many pixels
    at exactly the largest value and few just below it; Poisson counts and their rescaled
    (normalised, gain/offset) versions tail off instead.  Clipped columns are fitted too wide
    and with a wrong cross-section, silently.
    """
    from scipy import ndimage

    img = np.asarray(data, dtype=float)
    a = img[np.isfinite(img)]
    if a.size == 0:
        return None
    top = a.max()
    n_top = int(np.count_nonzero(a == top))
    below = a[a < top]
    if n_top < _SATURATION_MIN_PIXELS or below.size == 0:
        return None
    n_next = int(np.count_nonzero(below == below.max()))
    if n_top < _SATURATION_RATIO * n_next:
        return None
    if img.ndim == 2:
        # a clipped column is a plateau; equal single-pixel maxima (identical columns of a
        # noise-free periodic image, or ties of low counts) are not
        lab, n_lab = ndimage.label(img == top)
        if n_lab == 0 or np.bincount(lab.ravel())[1:].max() < _SATURATION_PLATEAU_PX:
            return None
    return (
        f"{n_top} pixels ({100.0 * n_top / a.size:.2g} %) sit at the image maximum {top:.6g} "
        f"and only {n_next} at the next value below: a saturated (clipped) detector or "
        "conversion; the brightest columns' widths and cross-sections are then wrong "
        "(acquire with less gain or a lower beam current, or leave those columns out)"
    )


def scs_column(table: pd.DataFrame) -> str | None:
    """Name of the cross-section column (``scs`` or ``scs_A2``), or None."""
    return next((c for c in ("scs", "scs_A2") if c in table.columns), None)


def insignificant_columns(table: pd.DataFrame, min_significance: float) -> np.ndarray:
    """Rows whose cross-section is not above ``min_significance`` standard errors, or not
    positive: peaks a finder put on the vacuum or the support, not atom columns.

    Uses ``scs``/``scs_err`` (or ``scs_A2``/``scs_A2_err``); a table without a cross-section
    has none, one without errors is tested for a positive SCS only.
    """
    col = scs_column(table)
    if col is None:
        return np.zeros(len(table), bool)
    scs = table[col].to_numpy(float)
    err_col = next((c for c in (f"{col}_err", "scs_err") if c in table.columns), None)
    err = table[err_col].to_numpy(float) if err_col else np.zeros(len(table))
    return ~((scs > 0) & (scs > min_significance * np.nan_to_num(err)))


def offset_summary(anchor: dict) -> str:
    """``"P(0) = 0.45 (P(-1) = 0.40, P(+1) = 0.15"`` from a library anchor's
    ``offset_probability`` (whole-atom offsets of a type's counts, ``count_atoms``); the
    caller closes the parenthesis after its own remarks."""
    po = {int(d): float(v) for d, v in anchor.get("offset_probability", {}).items()}
    others = ", ".join(f"P({d:+d}) = {v:.2f}" for d, v in sorted(po.items()) if d != 0)
    return f"P(0) = {po.get(0, 0.0):.2f} ({others}"
