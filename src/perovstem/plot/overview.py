"""Generic overview plots used by the pipeline report (curves from tables, images).

matplotlib is imported inside the functions; with ``ax=None`` a new
:class:`matplotlib.figure.Figure` (no pyplot state, safe in threads and headless runs) is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from perovstem.errors import DataError, ParameterError

__all__ = ["plot_xy", "plot_image", "plot_hist", "plot_bars"]


def _new_ax(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def plot_xy(
    table: Any,
    x: str,
    ys: Sequence[str],
    *,
    yerr: Sequence[str] | None = None,
    group: str | None = None,
    ax: Any = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    marker: str = "o",
) -> Any:
    """Plot table columns ``ys`` (optionally ± ``yerr`` columns) against column ``x``.

    Parameters
    ----------
    table : pandas.DataFrame
        Source table (units in column names).
    x : str
        Column on the horizontal axis.
    ys : sequence of str
        Columns to draw, one line each.
    yerr : sequence of str, optional
        Column of the 1-σ uncertainty of each ``ys`` column (error bars).
    group : str, optional
        Column splitting rows into separately drawn groups (e.g. the dose rate).
    ax : matplotlib Axes, optional
        Axes to draw into (a new figure when omitted).

    Returns
    -------
    matplotlib.axes.Axes
    """
    missing = [
        c for c in [x, *ys, *(yerr or []), *([group] if group else [])] if c not in table.columns
    ]
    if missing:
        raise ParameterError(f"columns {missing} are not in the table (has {list(table.columns)})")
    if yerr is not None and len(yerr) != len(ys):
        raise ParameterError(f"`yerr` needs one column per y column ({len(ys)}), got {len(yerr)}")
    if len(table) == 0:
        raise DataError("cannot plot an empty table")
    ax = _new_ax(ax, (5.2, 3.4))
    groups = [(None, table)] if group is None else list(table.groupby(group, sort=True))
    for gname, sub in groups:
        for i, col in enumerate(ys):
            label = col if gname is None else f"{col} ({group} = {gname})"
            if len(ys) == 1 and gname is not None:
                label = f"{group} = {gname}"
            xs = np.asarray(sub[x], dtype=float)
            yv = np.asarray(sub[col], dtype=float)
            if yerr is not None:
                ax.errorbar(
                    xs,
                    yv,
                    yerr=np.asarray(sub[yerr[i]], dtype=float),
                    marker=marker,
                    ms=3,
                    lw=1,
                    capsize=2,
                    label=label,
                )
            else:
                ax.plot(xs, yv, marker=marker, ms=3, lw=1, label=label)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or (ys[0] if len(ys) == 1 else ""))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(ys) > 1 or group is not None:
        ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return ax


def plot_image(
    data: Any,
    *,
    pixel_size_A: float = 1.0,
    ax: Any = None,
    points: Any = None,
    point_labels: Any = None,
    title: str | None = None,
    cmap: str = "gray",
) -> Any:
    """Show a 2-D image with axes in Å, optionally with points (x_A, y_A) overlaid.

    Parameters
    ----------
    data : (M, N) array_like
        The image.
    pixel_size_A : float
        Pixel size, Å (pixel (i, j) centre at x = j·dx, y = i·dx).
    points : (K, 2) array_like, optional
        ``(x_A, y_A)`` positions to mark.
    point_labels : (K,) array_like, optional
        Values colouring the points (e.g. atom counts).

    Returns
    -------
    matplotlib.axes.Axes
    """
    a = np.asarray(data, dtype=float)
    if a.ndim != 2:
        raise DataError(f"`data` must be a 2-D image, got shape {a.shape}")
    ax = _new_ax(ax, (4.2, 4.0))
    m, n = a.shape
    dx = float(pixel_size_A)
    ax.imshow(
        a, cmap=cmap, origin="upper", extent=(-0.5 * dx, (n - 0.5) * dx, (m - 0.5) * dx, -0.5 * dx)
    )
    if points is not None and len(points):
        p = np.asarray(points, dtype=float)
        if point_labels is not None:
            sc = ax.scatter(p[:, 0], p[:, 1], c=np.asarray(point_labels), s=8, cmap="viridis")
            ax.figure.colorbar(sc, ax=ax, shrink=0.8)
        else:
            ax.scatter(p[:, 0], p[:, 1], s=6, c="tab:red")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    if title:
        ax.set_title(title)
    return ax


def plot_hist(
    values: Any,
    *,
    groups: Any = None,
    bins: int = 60,
    ax: Any = None,
    xlabel: str = "",
    title: str | None = None,
) -> Any:
    """Histogram of ``values`` (stacked by ``groups`` labels when given).

    Parameters
    ----------
    values : (N,) array_like
        Values (e.g. scattering cross-sections, Å²).
    groups : (N,) array_like, optional
        Label per value (e.g. the atom count); one colour per label.
    bins : int
        Number of bins.

    Returns
    -------
    matplotlib.axes.Axes
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)] if groups is None else v
    if v.size == 0:
        raise DataError("cannot draw a histogram of no values")
    ax = _new_ax(ax, (5.2, 3.4))
    if groups is None:
        ax.hist(v, bins=bins, color="#4c72b0")
    else:
        g = np.asarray(groups).ravel()
        if g.shape != v.shape:
            raise ParameterError(f"`groups` needs one label per value ({v.size}), got {g.size}")
        labels = sorted(set(g.tolist()))
        edges = np.histogram_bin_edges(v[np.isfinite(v)], bins=bins)
        ax.hist(
            [v[g == lab] for lab in labels],
            bins=edges,
            stacked=True,
            label=[str(lab) for lab in labels],
        )
        if len(labels) <= 12:
            ax.legend(fontsize=7, frameon=False, ncol=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    return ax


def plot_bars(
    table: Any,
    category: str,
    ys: Sequence[str],
    *,
    yerr: Sequence[str] | None = None,
    ax: Any = None,
    ylabel: str = "",
    title: str | None = None,
) -> Any:
    """Grouped bar chart: one group per row (labelled by ``category``), one bar per ``ys``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    missing = [c for c in [category, *ys, *(yerr or [])] if c not in table.columns]
    if missing:
        raise ParameterError(f"columns {missing} are not in the table (has {list(table.columns)})")
    if len(table) == 0:
        raise DataError("cannot plot an empty table")
    ax = _new_ax(ax, (5.2, 3.4))
    n = len(ys)
    x = np.arange(len(table))
    w = 0.8 / n
    for i, col in enumerate(ys):
        err = None if yerr is None else np.asarray(table[yerr[i]], dtype=float)
        ax.bar(
            x + (i - (n - 1) / 2) * w,
            np.asarray(table[col], dtype=float),
            w,
            yerr=err,
            label=col,
            capsize=2,
        )
    ax.set_xticks(x, [str(v) for v in table[category]])
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if n > 1:
        ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return ax
