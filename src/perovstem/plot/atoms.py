"""Figures of atom-column results: overlay of fitted columns, SCS histogram, strain map.

Every function takes ``ax=None`` (a new :class:`matplotlib.figure.Figure`, no pyplot state)
or an existing Axes, draws on it and returns it.  matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem._data import Image
from perovstem.errors import DataError

__all__ = ["plot_columns", "plot_scs_histogram", "plot_strain_map", "plot_strain_maps"]

_COLOURS = ["tab:red", "tab:cyan", "tab:orange", "tab:green", "tab:purple", "tab:pink"]


def _ax(ax: Any, figsize: tuple[float, float] = (6.0, 5.0)) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _need(df: pd.DataFrame, cols: list[str]) -> None:
    miss = [c for c in cols if c not in df]
    if miss:
        raise DataError(f"table lacks column(s) {miss}; has {list(df.columns)}")


def plot_columns(
    image: Image,
    columns: pd.DataFrame,
    *,
    ax: Any = None,
    marker_size: float = 12.0,
    show_errors: bool = False,
    title: str | None = None,
) -> Any:
    """Image (Å axes) with the columns overlaid, one colour per type.

    Parameters
    ----------
    image : Image
    columns : DataFrame with ``x_A, y_A[, type]`` (e.g. :func:`perovstem.atoms.fit_columns`).
    show_errors : bool
        Draw 2σ position-error ellipses (×20 exaggerated) when ``x_err_A, y_err_A`` exist.
    """
    _need(columns, ["x_A", "y_A"])
    ax = _ax(ax)
    data = np.asarray(image.data, dtype=float)
    dx = image.pixel_size_A
    ox, oy = image.origin_A
    ny, nx = data.shape
    ext = (ox - dx / 2, ox + (nx - 0.5) * dx, oy + (ny - 0.5) * dx, oy - dx / 2)
    lo, hi = np.percentile(data, [0.5, 99.8])
    ax.imshow(data, cmap="gray", extent=ext, vmin=lo, vmax=hi, interpolation="nearest")
    types = (
        columns["type"].astype(str) if "type" in columns else pd.Series(["column"] * len(columns))
    )
    for i, t in enumerate(dict.fromkeys(types)):
        m = (types == t).to_numpy()
        ax.scatter(
            columns.x_A[m],
            columns.y_A[m],
            s=marker_size,
            facecolors="none",
            edgecolors=_COLOURS[i % len(_COLOURS)],
            linewidths=0.8,
            label=f"{t} ({m.sum()})",
        )
        if show_errors and {"x_err_A", "y_err_A"} <= set(columns.columns):
            from matplotlib.patches import Ellipse

            for _, r in columns[m].iterrows():
                ax.add_patch(
                    Ellipse(
                        (r.x_A, r.y_A),
                        40 * r.x_err_A,
                        40 * r.y_err_A,
                        fill=False,
                        lw=0.5,
                        color=_COLOURS[i % len(_COLOURS)],
                    )
                )
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    if ax.get_legend_handles_labels()[0]:  # no columns: no legend (and no warning)
        ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_title(title or f"{len(columns)} columns")
    return ax


def plot_scs_histogram(columns: pd.DataFrame, *, ax: Any = None, bins: int = 60) -> Any:
    """Histogram of scattering cross-sections per column type."""
    _need(columns, ["scs"])
    ax = _ax(ax, (5.0, 3.6))
    types = (
        columns["type"].astype(str) if "type" in columns else pd.Series(["column"] * len(columns))
    )
    edges = np.histogram_bin_edges(columns["scs"], bins=bins)
    for i, t in enumerate(dict.fromkeys(types)):
        ax.hist(
            columns["scs"][(types == t).to_numpy()],
            bins=edges,
            alpha=0.6,
            color=_COLOURS[i % len(_COLOURS)],
            label=t,
        )
    unit = columns.attrs.get("scs_units", "image units·Å²")
    ax.set_xlabel(f"SCS ({unit})")
    ax.set_ylabel("columns")
    ax.legend(fontsize=7)
    return ax


def plot_strain_map(
    strain: pd.DataFrame, component: str = "eps_xx", *, ax: Any = None, limit: float | None = None
) -> Any:
    """Per-column strain component (from :func:`perovstem.atoms.lattice_strain`) as a scatter map."""
    _need(strain, ["x_A", "y_A", component])
    ax = _ax(ax, (5.5, 4.5))
    v = strain[component].to_numpy(float)
    lim = limit if limit is not None else float(np.nanpercentile(np.abs(v), 98) or 1e-3)
    sc = ax.scatter(strain.x_A, strain.y_A, c=v, cmap="RdBu_r", vmin=-lim, vmax=lim, s=18)
    ax.figure.colorbar(sc, ax=ax, label=component)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    return ax


def plot_strain_maps(strain: pd.DataFrame, *, limit: float | None = None) -> Any:
    """ε_xx, ε_yy, ε_xy and ω_xy maps side by side on one colour scale (a 2 × 2 figure).

    ``limit`` (dimensionless) defaults to the 98th percentile of |ε| over the four maps.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    comps = ["eps_xx", "eps_yy", "eps_xy", "omega_xy"]
    _need(strain, ["x_A", "y_A", *comps])
    v = np.abs(strain[comps].to_numpy(float))
    lim = (
        limit
        if limit is not None
        else float(np.nanpercentile(v, 98) if np.isfinite(v).any() else 0)
    )
    lim = lim or 1e-3
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 8.5))
    for ax, c in zip(axes.ravel(), comps, strict=True):
        plot_strain_map(strain, c, ax=ax, limit=lim)
        ax.set_title(c)
    fig.tight_layout()
    return fig
