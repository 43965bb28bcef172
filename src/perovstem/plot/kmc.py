"""Plots of degradation-KMC ground truth (:func:`perovstem.simulate.degradation_kmc`).

matplotlib is imported inside the functions; with ``ax=None`` a new
:class:`matplotlib.figure.Figure` is made (no pyplot state).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perovstem.errors import DataError

__all__ = ["plot_kmc_fractions", "plot_cluster_histories"]


def _new_ax(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _need(table: Any, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in getattr(table, "columns", ())]
    if missing:
        raise DataError(f"`{what}` lacks column(s) {missing}")


def plot_kmc_fractions(frame_table: Any, *, ax: Any = None, title: str | None = None) -> Any:
    """Br left, Pb reduced and Cs left (fractions of the initial counts) vs cumulative dose.

    Parameters
    ----------
    frame_table : pandas.DataFrame
        ``KMCTrajectory.frame_table`` (needs ``cumulative_dose_e_per_A2``, ``n_Br``,
        ``n_Pb0``, ``n_Pb_host``, ``n_Cs`` and ``attrs["initial"]``).
    ax : matplotlib Axes, optional
        Axes to draw into (a new figure when omitted).
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    _need(
        frame_table,
        ("cumulative_dose_e_per_A2", "n_Br", "n_Pb0", "n_Pb_host", "n_Cs"),
        "frame_table",
    )
    init = frame_table.attrs.get("initial")
    if not init:
        raise DataError("`frame_table.attrs['initial']` is missing (use KMCTrajectory.frame_table)")
    ax = _new_ax(ax, (5.0, 3.4))
    d0 = float(frame_table.attrs.get("conditions", {}).get("initial_dose_e_per_A2", 0.0))
    dose = np.concatenate([[d0], frame_table["cumulative_dose_e_per_A2"].to_numpy(float)])
    n_pb = init["n_Pb_host"] + init["n_Pb0"]
    series = {
        "Br left": (init["n_Br"], frame_table["n_Br"], max(init["n_Br"], 1)),
        "Pb as Pb⁰": (init["n_Pb0"], frame_table["n_Pb0"], max(n_pb, 1)),
        "Cs left": (init["n_Cs"], frame_table["n_Cs"], max(init["n_Cs"], 1)),
    }
    for label, (v0, v, norm) in series.items():
        ax.plot(dose, np.concatenate([[v0], v.to_numpy(float)]) / norm, label=label)
    ax.set_xlabel("cumulative dose (e⁻/Å²)")
    ax.set_ylabel("fraction of initial")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_cluster_histories(
    clusters: Any,
    events: Any = None,
    *,
    frame_table: Any = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Size of every Pb cluster vs frame (or cumulative dose), merges marked.

    Parameters
    ----------
    clusters : pandas.DataFrame
        ``KMCTrajectory.clusters`` or the ``"clusters"`` truth of ``insitu_series``
        (``frame``, ``cluster_id``, ``n_atoms``).
    events : pandas.DataFrame, optional
        ``KMCTrajectory.events``; merges are drawn as dotted lines from each parent's last
        point to the child's first point.
    frame_table : pandas.DataFrame, optional
        When given, the x axis is the cumulative dose at the end of each frame.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    _need(clusters, ("frame", "cluster_id", "n_atoms"), "clusters")
    ax = _new_ax(ax, (5.0, 3.4))
    if frame_table is not None:
        _need(frame_table, ("frame", "cumulative_dose_e_per_A2"), "frame_table")
        to_x = dict(zip(frame_table["frame"], frame_table["cumulative_dose_e_per_A2"], strict=True))
        xlabel = "cumulative dose (e⁻/Å²)"
    else:
        to_x = None
        xlabel = "frame"

    def xs(frames: Any) -> np.ndarray:
        f = np.asarray(frames)
        return np.array([to_x[int(k)] for k in f], dtype=float) if to_x else f.astype(float)

    last: dict[int, tuple[float, float]] = {}
    first: dict[int, tuple[float, float]] = {}
    for cid, g in clusters.sort_values("frame").groupby("cluster_id"):
        x = xs(g["frame"])
        y = g["n_atoms"].to_numpy(float)
        ax.plot(x, y, lw=1.0, color="0.3")
        first[int(cid)] = (x[0], y[0])
        last[int(cid)] = (x[-1], y[-1])
    if events is not None and len(events):
        merges = events[events["kind"] == "merge"]
        for _, m in merges.iterrows():
            child = first.get(int(m["cluster_id"]))
            if child is None:
                continue
            for p in m["parents"]:
                if int(p) in last:
                    (x0, y0), (x1, y1) = last[int(p)], child
                    ax.plot([x0, x1], [y0, y1], ls=":", lw=0.8, color="tab:red")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("atoms per cluster")
    if len(clusters):
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    return ax
