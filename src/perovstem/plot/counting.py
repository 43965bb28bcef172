"""Figures for atom counting: criterion curves, mixture fits, HMM count paths, loss rates.

All functions take ``ax=None`` (a new figure is made) and return the Axes; matplotlib is
imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_criteria", "plot_gmm", "plot_hmm_paths", "plot_loss_rates"]


def _ax(ax: Any):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def plot_criteria(sweep: Any, *, criteria=("icl", "bic", "aic"), ax: Any = None):
    """ICL/BIC/AIC against the number of components, with local minima and the choice.

    Parameters
    ----------
    sweep : GMMSweep or DataFrame
        Result of :func:`perovstem.atoms.gmm_sweep` (or its ``table``).
    """
    ax = _ax(ax)
    table = getattr(sweep, "table", sweep)
    k = table["n_components"].to_numpy()
    for c in criteria:
        ax.plot(k, table[c].to_numpy(), marker=".", label=c.upper())
    crit = getattr(sweep, "criterion", "icl")
    mins = list(getattr(sweep, "local_minima", table.attrs.get("local_minima", [])))
    sel = getattr(sweep, "selected", table.attrs.get("selected"))
    y = table.set_index("n_components")[crit]
    if mins:
        ax.plot(
            mins,
            y.loc[mins].to_numpy(),
            "o",
            mfc="none",
            ms=9,
            color="k",
            label=f"local minima of {crit.upper()}",
        )
    if sel is not None:
        ax.axvline(sel, color="r", ls="--", lw=1, label=f"selected k = {sel}")
    ax.set_xlabel("number of components k")
    ax.set_ylabel("criterion")
    ax.legend(fontsize=8)
    return ax


def plot_gmm(scs: Any, fit: Any, *, bins: int = 60, first_count: int = 1, ax: Any = None):
    """Histogram of cross-sections with the fitted equal-width components.

    Parameters
    ----------
    scs : array_like, shape (N,)
    fit : GMMFit
    """
    ax = _ax(ax)
    x = np.asarray(scs, dtype=float).ravel()
    ax.hist(x, bins=bins, density=True, color="0.8", label="columns")
    g = np.linspace(x.min() - 3 * fit.width, x.max() + 3 * fit.width, 600)
    tot = np.zeros_like(g)
    for j, (m, p) in enumerate(zip(fit.means, fit.proportions, strict=True)):
        y = p * np.exp(-0.5 * ((g - m) / fit.width) ** 2) / (fit.width * np.sqrt(2 * np.pi))
        tot += y
        ax.plot(g, y, lw=0.8)
        ax.text(m, y.max(), str(first_count + j), ha="center", va="bottom", fontsize=7)
    ax.plot(g, tot, "k", lw=1.2, label=f"{fit.n_components} components")
    ax.set_xlabel("scattering cross-section")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax


def plot_hmm_paths(result: Any, *, columns: Any = None, dose_e_per_A2: Any = None, ax: Any = None):
    """Viterbi counts (and posterior means) of selected columns against frame or dose.

    Parameters
    ----------
    result : HMMResult
    columns : sequence of int, optional
        Column indices (default: the 8 columns that lose most atoms).
    dose_e_per_A2 : array_like, shape (T,), optional
        Per-frame dose; the x axis becomes the cumulative dose.
    """
    ax = _ax(ax)
    n = result.n_atoms
    if columns is None:
        lost = n[0] - n[-1]
        columns = np.argsort(-lost, kind="stable")[:8]
    T = n.shape[0]
    if dose_e_per_A2 is None:
        xs, xl = np.arange(T), "frame"
    else:
        xs = np.cumsum(np.broadcast_to(np.asarray(dose_e_per_A2, float), (T,)))
        xl = "cumulative dose (e⁻/Å²)"
    for c in columns:
        (line,) = ax.step(xs, n[:, c], where="mid", label=f"column {c}")
        ax.plot(xs, result.n_atoms_mean[:, c], ":", color=line.get_color(), lw=0.8)
    ax.set_xlabel(xl)
    ax.set_ylabel("atoms in column")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_loss_rates(result: Any, *, ax: Any = None):
    """Per-column atom-loss rate (atoms per e⁻/Å²) with error bars, sorted."""
    ax = _ax(ax)
    if result.loss_rate is None:
        from perovstem.errors import DataError

        raise DataError("the HMM result has no loss rates (fit it with dose_e_per_A2)")
    o = np.argsort(result.loss_rate)
    ax.errorbar(
        np.arange(o.size), result.loss_rate[o], yerr=result.loss_rate_err[o], fmt=".", ms=3, lw=0.5
    )
    ax.set_xlabel("column (sorted)")
    ax.set_ylabel("atoms lost per e⁻/Å²")
    return ax
