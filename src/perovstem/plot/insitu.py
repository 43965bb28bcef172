"""Figures of in-situ degradation: clusters and sizes vs dose, size distributions, lineage,
crystal area, drift, kinetic fits, per-column atoms-lost map, cluster hop rates against
temperature (Arrhenius).

Every function takes ``ax=None`` (a new :class:`matplotlib.figure.Figure` is made, no pyplot
state) or an existing Axes, draws on it and returns it.  matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perovstem.errors import DataError

__all__ = [
    "plot_cluster_kinetics",
    "plot_size_distribution",
    "plot_lineage",
    "plot_crystal_area",
    "plot_drift",
    "plot_kinetic_fit",
    "plot_atoms_lost_map",
    "plot_hop_rates",
]

_DOSE = "cumulative_dose_e_per_A2"


def _ax(ax: Any, figsize: tuple[float, float] = (5.0, 3.6)) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _need(df: pd.DataFrame, cols: list[str], name: str) -> None:
    miss = [c for c in cols if c not in df]
    if miss:
        raise DataError(f"`{name}` lacks column(s) {miss}")


def _xcol(frames: pd.DataFrame) -> tuple[str, str]:
    if _DOSE in frames and frames[_DOSE].notna().all():
        return _DOSE, "cumulative dose (e⁻/Å²)"
    return "frame", "frame"


def plot_cluster_kinetics(frames: pd.DataFrame, *, ax: Any = None) -> Any:
    """Number of Pb clusters and mean cluster size (atoms) against cumulative dose."""
    _need(frames, ["n_clusters"], "frames")
    ax = _ax(ax)
    x, xl = _xcol(frames)
    ax.plot(frames[x], frames["n_clusters"], "o-", ms=3, color="C0", label="clusters")
    ax.set_xlabel(xl)
    ax.set_ylabel("Pb clusters", color="C0")
    if "mean_cluster_atoms" in frames and frames["mean_cluster_atoms"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(frames[x], frames["mean_cluster_atoms"], "s-", ms=3, color="C3")
        ax2.set_ylabel("mean size (atoms)", color="C3")
    return ax


def plot_size_distribution(
    clusters: pd.DataFrame, *, frames: list[int] | None = None, bins: int = 20, ax: Any = None
) -> Any:
    """Histograms of cluster sizes (atoms) at a few frames (default: 4 evenly spaced)."""
    _need(clusters, ["frame", "n_atoms"], "clusters")
    ax = _ax(ax)
    avail = np.unique(clusters["frame"])
    if avail.size == 0:
        ax.text(0.5, 0.5, "no clusters", ha="center", transform=ax.transAxes)
        return ax
    if frames is None:
        frames = list(avail[np.linspace(0, avail.size - 1, min(4, avail.size)).astype(int)])
    sizes = clusters["n_atoms"].to_numpy(float)
    edges = np.histogram_bin_edges(sizes[np.isfinite(sizes)], bins=bins)
    for f in frames:
        v = clusters.loc[clusters["frame"] == f, "n_atoms"].dropna()
        ax.hist(v, bins=edges, histtype="step", lw=1.5, label=f"frame {f}")
    ax.set_xlabel("cluster size (atoms)")
    ax.set_ylabel("clusters")
    ax.legend(fontsize="small")
    return ax


def plot_lineage(lineage: pd.DataFrame, *, ax: Any = None) -> Any:
    """Cluster lineage: one horizontal bar per track (birth → end), merges as connectors."""
    _need(lineage, ["track_id", "start_frame", "end_frame", "parents", "origin"], "lineage")
    ax = _ax(ax, (5.5, 4.0))
    order = lineage.sort_values(["start_frame", "track_id"]).reset_index(drop=True)
    ypos = {int(t): i for i, t in enumerate(order["track_id"])}
    colors = {
        "first_frame": "0.4",
        "nucleation": "C2",
        "merge": "C3",
        "merge_uncertain": "C4",
        "overlap": "C1",
        "separation": "C1",
        "unresolved": "0.7",
    }
    for r in order.itertuples(index=False):
        y = ypos[int(r.track_id)]
        ax.plot([r.start_frame, r.end_frame], [y, y], color=colors.get(r.origin, "C0"), lw=2)
        for p in r.parents or []:
            if int(p) in ypos:
                c = "C3" if r.origin == "merge" else colors.get(r.origin, "C0")
                ax.plot([r.start_frame - 1, r.start_frame], [ypos[int(p)], y], color=c, lw=0.8)
    ax.set_xlabel("frame")
    ax.set_ylabel("track")
    ax.set_title(
        "lineage (green: nucleation, red: merge, purple: uncertain merge, "
        "orange: overlap in projection)",
        fontsize="small",
    )
    return ax


def plot_crystal_area(frames: pd.DataFrame, *, ax: Any = None) -> Any:
    """Projected crystal area (and void area) against cumulative dose."""
    _need(frames, ["area_A2"], "frames")
    ax = _ax(ax)
    x, xl = _xcol(frames)
    ax.plot(frames[x], frames["area_A2"] / 100.0, "o-", ms=3, label="crystal")
    if "void_area_A2" in frames:
        ax.plot(frames[x], frames["void_area_A2"] / 100.0, "s-", ms=3, label="voids")
    ax.set_xlabel(xl)
    ax.set_ylabel("projected area (nm²)")
    ax.legend(fontsize="small")
    return ax


def plot_drift(drift: pd.DataFrame, *, ax: Any = None) -> Any:
    """Measured drift track (x against y, pixels), skipped frames marked."""
    _need(drift, ["dy_px", "dx_px"], "drift")
    ax = _ax(ax, (4.0, 4.0))
    ax.plot(drift["dx_px"], drift["dy_px"], ".-", ms=4)
    if "skipped" in drift and drift["skipped"].any():
        s = drift[drift["skipped"]]
        ax.plot(s["dx_px"], s["dy_px"], "rx", label="skipped (interpolated)")
        ax.legend(fontsize="small")
    ax.set_xlabel("dx (px)")
    ax.set_ylabel("dy (px)")
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def plot_kinetic_fit(x: Any, y: Any, fit: Any, *, ax: Any = None, label: str = "") -> Any:
    """Data and the fitted model of a :class:`~perovstem.quantify.kinetics.FitResult`."""
    ax = _ax(ax)
    x = np.asarray(x, float)
    ax.plot(x, y, "o", ms=3, label=label or "data")
    xx = np.linspace(x.min(), x.max(), 200)
    ax.plot(xx, fit.predict(xx), "-", label=fit.model)
    ax.set_xlabel("cumulative dose (e⁻/Å²)")
    ax.legend(fontsize="small")
    return ax


def plot_atoms_lost_map(
    columns: pd.DataFrame,
    *,
    first: str = "n_atoms_first",
    last: str = "n_atoms_last",
    column_type: str | None = None,
    ax: Any = None,
) -> Any:
    """Per-column atoms lost (first − last count) at the column positions, Å.

    ``columns`` needs ``x_A, y_A`` and the two count columns, e.g. the ``columns`` table of
    :func:`perovstem.insitu.analyze_series` (``columns=True``: hidden-Markov Viterbi counts
    of the first and last usable frames).  With a ``type`` column the column types get
    different markers (``column_type`` keeps one type only).
    """
    _need(columns, ["x_A", "y_A", first, last], "columns")
    if column_type is not None:
        _need(columns, ["type"], "columns")
        columns = columns[columns["type"] == column_type]
        if columns.empty:
            raise DataError(f"no column of type {column_type!r} in `columns`")
    ax = _ax(ax, (4.8, 4.0))
    lost = columns[first].to_numpy(float) - columns[last].to_numpy(float)
    vmax = max(float(np.nanmax(lost)) if lost.size else 1.0, 1.0)
    vmin = min(float(np.nanmin(lost)) if lost.size else 0.0, 0.0)
    kinds = columns["type"].to_numpy() if "type" in columns else np.full(len(columns), "")
    markers = dict(zip(dict.fromkeys(kinds), "osD^v<>ph", strict=False))
    sc = None
    for kind, mk in markers.items():
        m = kinds == kind
        sc = ax.scatter(
            columns["x_A"].to_numpy()[m],
            columns["y_A"].to_numpy()[m],
            c=lost[m],
            cmap="magma",
            vmin=vmin,
            vmax=vmax,
            s=14,
            marker=mk,
            label=str(kind) if kind != "" else None,
        )
    if sc is not None:
        ax.figure.colorbar(sc, ax=ax, label="atoms lost")
    if len(markers) > 1:
        ax.legend(fontsize="x-small", loc="upper right")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    return ax


def plot_hop_rates(summary: pd.DataFrame, *, ax: Any = None) -> Any:
    """Pb⁰ cluster hop rate Γ₁ of each condition against 1/T (Arrhenius plot).

    ``summary`` is a mechanism table (:func:`perovstem.quantify.mechanism.mechanism_summary`,
    :func:`perovstem.insitu.combine_series`): its ``mobility`` rows (Γ₁ with interval, s⁻¹)
    as points with error bars and their temperature, coloured by dose rate where a dose
    rate repeats across temperatures (a dose-rate series); the activation energy
    of its ``Ea_eV`` row (from the same rates) in the title, and its Arrhenius line (the
    same weighted fit) from three temperatures on.
    """
    from perovstem.quantify.kinetics import K_B_EV_PER_K

    _need(summary, ["process", "temperature_K", "value", "ci_low", "ci_high"], "summary")
    mob = summary[(summary["process"] == "mobility") & summary["value"].notna()]
    mob = mob[np.isfinite(mob["temperature_K"].to_numpy(float))]
    if mob.empty:
        raise DataError("`summary` has no mobility row with a temperature (no hop rates)")
    ax = _ax(ax)
    x = 1.0 / (K_B_EV_PER_K * mob["temperature_K"].to_numpy(float))
    v = mob["value"].to_numpy(float)
    err = np.vstack([v - mob["ci_low"].to_numpy(float), mob["ci_high"].to_numpy(float) - v])
    rates = mob["dose_rate_e_per_A2_s"] if "dose_rate_e_per_A2_s" in mob else None
    groups = [("", np.ones(len(mob), bool))]
    # colours only for a dose-rate series (a rate repeated across temperatures); a rate
    # that changes with each temperature (fixed dose per frame) is no grouping
    if rates is not None and 1 < rates.nunique() < len(mob):
        groups = [(f"{r:g} e⁻/Å²/s", (rates == r).to_numpy()) for r in sorted(rates.unique())]
    for label, m in groups:
        ax.errorbar(
            x[m],
            v[m],
            yerr=np.clip(err[:, m], 0, None),
            fmt="o",
            ms=4,
            capsize=2,
            label=label or None,
        )
    ea = summary.iloc[:0]
    if {"param", "observable"} <= set(summary.columns):
        ea = summary[
            (summary["param"] == "Ea_eV")
            & (summary["process"] == "temperature")
            & (summary["observable"] == "Gamma1_per_s")
        ]
    ramp = (
        len(ea) > 0
        and "selected_model" in ea
        and str(ea["selected_model"].iloc[0]) == "arrhenius_ramp"
    )
    # the Arrhenius line of the Ea row's fit (a ramp's Ea is fitted to the steps of whole
    # tracks, not to these per-temperature rates: no line)
    if len(ea) and not ramp and np.unique(x).size >= 3:
        from perovstem.errors import PerovstemError
        from perovstem.quantify.kinetics import fit_arrhenius
        from perovstem.quantify.mechanism import arrhenius_hop_rates

        used, _ = arrhenius_hop_rates(summary)  # the rows the Ea row's fit used
        e = (used["ci_high"] - used["ci_low"]).to_numpy(float) / 3.92
        try:
            fit = fit_arrhenius(
                used["temperature_K"], used["value"], rate_err=e if np.all(e > 0) else None
            )
            xx = np.linspace(x.min(), x.max(), 50)
            ax.plot(xx, np.exp(fit.params["ln_A"] - fit.params["Ea_eV"] * xx), "-", lw=1)
        except PerovstemError:
            pass
    for xi, vi, t in zip(x, v, mob["temperature_K"].to_numpy(float), strict=True):
        ax.annotate(f"{t:g} K", (xi, vi), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("1 / k_B T (eV⁻¹)")
    ax.set_ylabel("hop rate Γ₁ (s⁻¹)")
    if len(ea):
        r = ea.iloc[0]
        ax.set_title(
            f"Pb⁰ diffusion{' over the ramp' if ramp else ''}: Ea = {r['value']:.3f} eV "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            fontsize="small",
        )
    if len(groups) > 1:
        ax.legend(fontsize="small")
    return ax
