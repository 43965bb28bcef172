"""4-D tomography figure: facet fractions and volume of a nanocrystal over time or dose.

Follows the ``ax=None`` contract of :mod:`perovstem.plot.overview`: draws into the given
axes (two: facets, volume) or makes a new :class:`matplotlib.figure.Figure` (no pyplot
state, safe headless and in pipeline workers), and returns the axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.errors import DataError, ParameterError

__all__ = ["plot_facet_evolution", "sequence_axis"]

_FAMILIES = ("100", "110", "111", "other")
_X_LABELS = {
    "cumulative_dose_e_per_A2": "cumulative dose (e⁻/Å²)",
    "time_s": "time (s)",
    "step": "time point",
}


def sequence_axis(table: Any, x: str = "auto") -> str:
    """The column to plot a 4-D table against.

    ``"auto"``: the cumulative dose if every row has one, else the time if every row has
    one, else the time-point index (``step``).  An explicit column must exist and be finite.
    """
    if x == "auto":
        for col in ("cumulative_dose_e_per_A2", "time_s"):
            if col in table and np.all(np.isfinite(np.asarray(table[col], float))):
                return col
        return "step"
    if x not in _X_LABELS:
        raise ParameterError(f"`x` must be 'auto' or one of {list(_X_LABELS)}, got {x!r}")
    if x not in table or not np.all(np.isfinite(np.asarray(table[x], float))):
        raise DataError(f"column {x!r} is missing or has NaN values; use x='step' or 'auto'")
    return x


def plot_facet_evolution(
    table: Any,
    *,
    x: str = "auto",
    truth: Any = None,
    axes: Any = None,
    title: str | None = None,
) -> Any:
    """Facet area fractions (top) and volume (bottom) of a crystal along a 4-D sequence.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`perovstem.tomo.reconstruct_sequence` (``frac_100`` … ``frac_other``,
        ``volume_A3``, optionally ``cluster_volume_A3``, ``err_*`` 1-σ uncertainties and
        ``time_s`` / ``cumulative_dose_e_per_A2``).
    x : {"auto", "cumulative_dose_e_per_A2", "time_s", "step"}
        Horizontal axis (see :func:`sequence_axis`).
    truth : pandas.DataFrame, optional
        Ground truth with the same columns and one row per time point (e.g. from
        :func:`perovstem.simulate.degradation_phantoms`), drawn dashed.
    axes : sequence of two matplotlib Axes, optional
        Axes to draw into (a new figure when omitted).
    title : str, optional

    Returns
    -------
    ndarray of 2 Axes
    """
    need = {f"frac_{f}" for f in _FAMILIES} | {"volume_A3"}
    missing = sorted(need - set(getattr(table, "columns", ())))
    if missing:
        raise DataError(f"`table` lacks the 4-D columns {missing} (reconstruct_sequence output)")
    if len(table) == 0:
        raise DataError("`table` has no rows")
    xcol = sequence_axis(table, x)
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 6.0), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
    axes = np.asarray(axes).ravel()
    if axes.size != 2:
        raise ParameterError(f"`axes` must hold 2 Axes (facets, volume), got {axes.size}")
    ax_f, ax_v = axes
    xv = np.asarray(table[xcol], float)
    colors = {"100": "C0", "110": "C1", "111": "C2", "other": "0.5"}
    for f in _FAMILIES:
        y = 100 * np.asarray(table[f"frac_{f}"], float)
        if f == "other" and not np.any(y > 0):  # polyhedron method: no "other" area
            continue
        lab = f"{{{f}}}" if f != "other" else "other"
        err = table.get(f"err_{f}")
        if err is not None:
            ax_f.errorbar(xv, y, yerr=100 * np.asarray(err, float), fmt="o-", color=colors[f],
                          capsize=3, label=lab)  # fmt: skip
        else:
            ax_f.plot(xv, y, "o-", color=colors[f], label=lab)
        if truth is not None and f"frac_{f}" in truth:
            ax_f.plot(xv, 100 * np.asarray(truth[f"frac_{f}"], float), "--", color=colors[f])
    if truth is not None:
        ax_f.plot([], [], "k--", label="truth")
    ax_f.set_ylabel("surface area (%)")
    ax_f.set_ylim(bottom=0)
    ax_f.legend(fontsize=8, ncol=3)
    ax_v.plot(xv, np.asarray(table["volume_A3"], float) / 1e3, "ko-", label="crystal + clusters")
    if "cluster_volume_A3" in table and np.any(np.isfinite(table["cluster_volume_A3"])):
        ax_v.plot(
            xv, np.asarray(table["cluster_volume_A3"], float) / 1e3, "rs-", label="Pb clusters"
        )
    if truth is not None and "volume_A3" in truth:
        ax_v.plot(xv, np.asarray(truth["volume_A3"], float) / 1e3, "k--", label="truth")
    ax_v.set_ylabel("volume (nm³)")
    ax_v.set_ylim(bottom=0)
    ax_v.set_xlabel(_X_LABELS.get(xcol, xcol))
    ax_v.legend(fontsize=8)
    if title:
        ax_f.set_title(title)
    return axes
