"""Tomography figures: orthogonal slices, alignment shifts, facet fractions, 4-D trends.

Every function follows the ``ax=None`` contract: it draws into the given axes (or creates a
figure) and returns the axes; matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.errors import DataError

__all__ = ["plot_orthoslices", "plot_alignment", "plot_facets", "plot_sequence"]


def _axes(ax: Any, n: int = 1, figsize=(6, 4)) -> Any:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, axs = plt.subplots(1, n, figsize=figsize, squeeze=False)
    return axs[0] if n > 1 else axs[0, 0]


def plot_orthoslices(
    volume: Any, *, voxel_size_A: float = 1.0, index: Any = None, ax: Any = None, cmap: str = "gray"
) -> Any:
    """Three central (or ``index = (k, i, j)``) slices: z (y–x), y (z–x), x (z–y).

    Returns the array of 3 axes.
    """
    v = np.asarray(volume)
    if v.ndim != 3:
        raise DataError(f"`volume` must be 3-D, got shape {v.shape}")
    k, i, j = index if index is not None else (s // 2 for s in v.shape)
    axs = _axes(ax, 3, figsize=(12, 4))
    nz, ny, nx = (s * voxel_size_A for s in v.shape)
    for a, img, ext, title, lab in (
        (axs[0], v[k], (0, nx, ny, 0), f"z slice {k}", ("x (Å)", "y (Å)")),
        (axs[1], v[:, i], (0, nx, nz, 0), f"y slice {i}", ("x (Å)", "z (Å)")),
        (axs[2], v[:, :, j], (0, ny, nz, 0), f"x slice {j}", ("y (Å)", "z (Å)")),
    ):
        a.imshow(img, cmap=cmap, extent=ext)
        a.set_title(title)
        a.set_xlabel(lab[0])
        a.set_ylabel(lab[1])
    return axs


def plot_alignment(
    alignment: Any, angles_deg: Any, *, reference_px: Any = None, ax: Any = None
) -> Any:
    """Shifts (dy, dx) vs tilt angle, optionally against a reference alignment."""
    ax = _axes(ax)
    ang = np.asarray(angles_deg, float)
    sh = np.asarray(alignment.shifts_px, float)
    ax.plot(ang, sh[:, 0], "o-", ms=3, label="dy (ours)")
    ax.plot(ang, sh[:, 1], "s-", ms=3, label="dx (ours)")
    if reference_px is not None:
        ref = np.asarray(reference_px, float)
        off = (sh - ref).mean(axis=0)
        ax.plot(ang, ref[:, 0] + off[0], "k--", lw=1, label="dy (reference + offset)")
        ax.plot(ang, ref[:, 1] + off[1], "k:", lw=1, label="dx (reference + offset)")
    ax.set_xlabel("tilt angle (°)")
    ax.set_ylabel("shift (px)")
    ax.set_title(f"tilt axis {alignment.tilt_axis_deg:.2f}°")
    ax.legend(fontsize=8)
    return ax


def plot_facets(table: Any, *, truth: Any = None, ax: Any = None) -> Any:
    """Bar chart of facet fractions (with calibrated values and error bars when present)."""
    ax = _axes(ax)
    fam = list(table["family"])
    x = np.arange(len(fam))
    ax.bar(x - 0.2, 100 * np.asarray(table["fraction"]), 0.4, label="measured")
    if "fraction_corrected" in table:
        ax.bar(
            x + 0.2,
            100 * np.asarray(table["fraction_corrected"]),
            0.4,
            yerr=100 * np.asarray(table["fraction_err"]),
            label="calibrated",
        )
    if truth is not None:
        t = dict(zip(truth["family"], truth["fraction"], strict=False))
        ax.plot(x, [100 * t.get(f, np.nan) for f in fam], "k_", ms=30, mew=2, label="truth")
    if "missing_wedge" in table:
        for xi, flag in zip(x, table["missing_wedge"], strict=False):
            if flag:
                ax.annotate("wedge", (xi, 1), ha="center", fontsize=8, color="red")
    ax.set_xticks(x, [f"{{{f}}}" if f != "other" else f for f in fam])
    ax.set_ylabel("surface area (%)")
    ax.legend(fontsize=8)
    return ax


def plot_sequence(table: Any, *, x: str = "cumulative_dose_e_per_A2", ax: Any = None) -> Any:
    """4-D trends: facet fractions and volumes vs dose (or ``x`` = "step"/"time_s")."""
    ax = _axes(ax)
    xv = np.asarray(table[x] if x in table and np.all(np.isfinite(table[x])) else table["step"])
    for col in ("frac_100", "frac_110", "frac_111", "frac_other"):
        ax.plot(xv, 100 * np.asarray(table[col]), "o-", label=col.replace("frac_", "{") + "}")
    ax.set_xlabel(x)
    ax.set_ylabel("surface area (%)")
    ax2 = ax.twinx()
    ax2.plot(xv, np.asarray(table["volume_A3"]) / 1e3, "k--", label="volume")
    if "cluster_volume_A3" in table:
        ax2.plot(xv, np.asarray(table["cluster_volume_A3"]) / 1e3, "r:", label="Pb clusters")
    ax2.set_ylabel("volume (nm³)")
    ax.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper right")
    return ax
