"""Cluster mobility from tracks, and the desorption hazard from atom counts.

* :func:`cluster_hop_rate`: tracked Pb clusters perform a lattice random walk; per frame the
  projected displacement obeys ``<|Δr|²> = (2/3)·a²·Γ_c·Δt + 4σ_loc²`` (a cubic lattice with
  hop length ``a``, total hop rate ``Γ_c``, two of three axes seen in projection, σ_loc the
  localisation error per axis), with ``Γ_c = Γ₁·n^(−α)`` for an n-atom cluster (periphery
  diffusion α = 4/3; Khare & Einstein, PRB 54, 11752 (1996)).  Γ₁ per condition, with a
  bootstrap over tracks, then :func:`fit_arrhenius` gives the activation energy.
* :func:`fit_desorption_hazard`: with ``N`` atoms at risk at the start of a frame of dose
  ``ΔD``, the number lost is Binomial(N, 1 − exp(−ΔD/D)); the maximum-likelihood D with a
  profile-likelihood interval (first-order electron-stimulated desorption; Egerton,
  Micron 35, 399 (2004)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from perovstem._validation import as_rng, check_positive, check_range
from perovstem.errors import DataError

__all__ = ["cluster_hop_rate", "fit_desorption_hazard"]


def cluster_hop_rate(
    tracks: pd.DataFrame,
    *,
    frame_time_s: float,
    hop_length_A: float = 5.87,
    size_exponent: float = 4.0 / 3.0,
    localization_error_A: float = 0.0,
    size_column: str = "n_atoms",
    track_column: str = "track_id",
    level: float = 0.95,
    n_boot: int = 300,
    rng: Any = None,
) -> dict[str, float]:
    """Monomer-equivalent hop rate Γ₁ (s⁻¹) from cluster tracks.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x_A, y_A, track_id`` and ``size_column`` (e.g. from
        :func:`perovstem.insitu.track_clusters`); only consecutive frames of a track count.
    frame_time_s : float
        Time between frames, s.
    hop_length_A : float
        Hop length (lattice vector), Å.
    size_exponent : float
        α of ``Γ_c = Γ₁ n^(−α)`` (0: size-independent).
    localization_error_A : float
        Position error per axis, Å (subtracted, 4σ² per step).
    level, n_boot, rng
        Bootstrap over tracks (percentile interval).

    Returns
    -------
    dict
        ``rate_per_s``, ``ci_low``, ``ci_high``, ``stderr``, ``n_steps``, ``n_tracks``.
    """
    dt = check_positive("frame_time_s", frame_time_s)
    a = check_positive("hop_length_A", hop_length_A)
    check_range("level", level, 0.5, 0.9999)
    need = {"frame", "x_A", "y_A", track_column} | ({size_column} if size_exponent else set())
    if not need <= set(tracks.columns):
        raise DataError(f"`tracks` lacks columns {sorted(need - set(tracks.columns))}")
    t = tracks.sort_values([track_column, "frame"])
    same = t[track_column].to_numpy()[1:] == t[track_column].to_numpy()[:-1]
    step = np.diff(t["frame"].to_numpy()) == 1
    ok = same & step
    if not ok.any():
        raise DataError("no track has two consecutive frames: cannot measure mobility")
    d2 = (np.diff(t["x_A"].to_numpy()) ** 2 + np.diff(t["y_A"].to_numpy()) ** 2)[ok]
    d2 = d2 - 4 * localization_error_A**2
    if size_exponent:
        n = 0.5 * (t[size_column].to_numpy()[1:] + t[size_column].to_numpy()[:-1])[ok]
        w = np.clip(n, 1e-9, None) ** (-size_exponent)
    else:
        w = np.ones(ok.sum())
    tid = t[track_column].to_numpy()[1:][ok]
    denom = (2.0 / 3.0) * a * a * dt * w
    est = float(d2.sum() / denom.sum())
    gen = as_rng(rng)
    uniq = np.unique(tid)
    idx = {u: np.flatnonzero(tid == u) for u in uniq}
    boots = []
    for _ in range(int(n_boot)):
        pick = np.concatenate([idx[u] for u in gen.choice(uniq, uniq.size, replace=True)])
        boots.append(d2[pick].sum() / denom[pick].sum())
    q = (1 - level) / 2
    return {
        "rate_per_s": est,
        "ci_low": float(np.quantile(boots, q)),
        "ci_high": float(np.quantile(boots, 1 - q)),
        "stderr": float(np.std(boots, ddof=1)),
        "n_steps": int(ok.sum()),
        "n_tracks": int(uniq.size),
    }


def fit_desorption_hazard(
    n_at_risk: Any, n_lost: Any, dose_e_per_A2: Any, *, level: float = 0.95
) -> dict[str, float]:
    """Characteristic desorption dose D (e⁻/Å²) from per-frame losses of atoms at risk.

    Parameters
    ----------
    n_at_risk : (T,) array_like
        Atoms exposed (e.g. surface Br) at the start of each frame.
    n_lost : (T,) array_like
        Atoms lost from that population during the frame.
    dose_e_per_A2 : (T,) array_like or float
        Dose of each frame, e⁻/Å².

    Returns
    -------
    dict
        ``D_e_per_A2``, ``ci_low``, ``ci_high`` (profile likelihood), ``sigma_A2`` (= 1/D),
        ``n_events``.
    """
    n = np.asarray(n_at_risk, float).ravel()
    k = np.asarray(n_lost, float).ravel()
    d = np.broadcast_to(np.asarray(dose_e_per_A2, float), n.shape).astype(float)
    if not (n.shape == k.shape == d.shape):
        raise DataError("`n_at_risk`, `n_lost` and `dose_e_per_A2` must have equal length")
    bad = ~np.isfinite(n) | ~np.isfinite(k) | ~np.isfinite(d)
    if bad.any():
        raise DataError(f"non-finite values in {int(bad.sum())} frame(s)")
    if np.any(k < 0) or np.any(k > n) or np.any(n < 0):
        raise DataError("need 0 <= n_lost <= n_at_risk in every frame")
    if np.any(d <= 0):
        raise DataError(f"dose per frame must be > 0, got {d[d <= 0].tolist()[:5]}")
    if k.sum() == 0:
        raise DataError("no atom was lost: the desorption dose is unbounded")
    use = n > 0
    n, k, d = n[use], k[use], d[use]

    def nll(log_d: float) -> float:
        p = -np.expm1(-d / np.exp(log_d))
        p = np.clip(p, 1e-300, 1 - 1e-16)
        return -float(np.sum(k * np.log(p) + (n - k) * np.log1p(-p)))

    # start from the small-dose estimate D ≈ Σ n·ΔD / Σ k
    x0 = np.log(np.sum(n * d) / k.sum())
    res = optimize.minimize_scalar(nll, bracket=(x0 - 1, x0 + 1))
    xh, f0 = float(res.x), float(res.fun)
    q = stats.chi2.ppf(level, 1) / 2

    def g(x: float) -> float:
        return nll(x) - f0 - q

    lo = hi = np.nan
    for sgn in (-1, 1):
        step = 0.05
        for _ in range(60):
            xb = xh + sgn * step
            if g(xb) > 0:
                r = optimize.brentq(g, min(xh, xb), max(xh, xb))
                if sgn < 0:
                    lo = r
                else:
                    hi = r
                break
            step *= 1.6
    dh = float(np.exp(xh))
    return {
        "D_e_per_A2": dh,
        "ci_low": float(np.exp(lo)),
        "ci_high": float(np.exp(hi)),
        "sigma_A2": 1.0 / dh,
        "n_events": int(k.sum()),
    }
