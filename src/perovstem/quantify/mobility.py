"""Cluster mobility from tracks, and the desorption hazard from atom counts.

* :func:`cluster_hop_rate`: tracked Pb clusters perform a lattice random walk; per frame the
  projected displacement obeys ``<|Δr|²> = (2/3)·a²·Γ_c·Δt + 4σ_loc²`` (a cubic lattice with
  hop length ``a``, total hop rate ``Γ_c``, two of three axes seen in projection, σ_loc the
  localisation error per axis), with ``Γ_c = Γ₁·n^(−α)`` for an n-atom cluster (periphery
  diffusion α = 4/3; Khare & Einstein, PRB 54, 11752 (1996)).  Γ₁ per condition, with a
  bootstrap over tracks, then :func:`fit_arrhenius` gives the activation energy;
  :func:`pool_field_tracks` pools the tracks of several fields of one condition.
* :func:`fit_desorption_hazard`: with ``N`` atoms at risk at the start of a frame of dose
  ``ΔD``, the number lost is Binomial(N, 1 − exp(−ΔD/D)); the maximum-likelihood D with a
  profile-likelihood interval (first-order electron-stimulated desorption; Egerton,
  Micron 35, 399 (2004)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from perovstem._validation import (
    as_rng,
    check_choice,
    check_positive,
    check_range,
    item_names,
    refuse_text_numbers,
)
from perovstem.errors import DataError, ParameterError
from perovstem.quantify.nucleation import _garwood

__all__ = ["cluster_hop_rate", "fit_desorption_hazard", "hop_rate_arrhenius", "pool_field_tracks"]


def _frame_time(frame_time_s: float | None, frame_time_column: str | None) -> float:
    """The frame interval (s; 1 where ``frame_time_column`` gives each step its own)."""
    if (frame_time_s is None) == (frame_time_column is None):
        raise ParameterError(
            "give `frame_time_s` (the frame interval, s) or `frame_time_column` (a column of "
            "per-detection frame intervals, for pooled fields), not "
            + ("both" if frame_time_s is not None else "neither")
        )
    return 1.0 if frame_time_s is None else check_positive("frame_time_s", frame_time_s)


def _check_tracks(
    tracks: pd.DataFrame, need: set[str], track_column: str, frame_time_column: str | None
) -> None:
    """Refuse missing or non-finite columns of ``tracks`` (one NaN position turned a whole
    rate and its interval into NaN, without an error) and frame intervals that are not
    positive or differ within a track."""
    if not need <= set(tracks.columns):
        raise DataError(f"`tracks` lacks columns {sorted(need - set(tracks.columns))}")
    for c in sorted(need - {track_column}):
        v = pd.to_numeric(tracks[c], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(v)):
            raise DataError(
                f"`tracks` column {c!r} has {int(np.sum(~np.isfinite(v)))} NaN/inf or "
                "non-numeric value(s)"
            )
    if frame_time_column is None:
        return
    if frame_time_column not in tracks:
        raise DataError(f"`tracks` has no column {frame_time_column!r} (`frame_time_column`)")
    ft = pd.to_numeric(tracks[frame_time_column], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(ft) & (ft > 0)):
        raise DataError(
            f"`tracks` column {frame_time_column!r} must hold positive frame intervals, s "
            f"({int(np.sum(~(np.isfinite(ft) & (ft > 0))))} value(s) are not)"
        )
    if (tracks.groupby(track_column)[frame_time_column].nunique() > 1).any():
        raise DataError(
            f"`tracks` column {frame_time_column!r}: a track has several frame intervals "
            "(one value per track: each field its own)"
        )


def _track_steps(
    tracks: pd.DataFrame,
    track_column: str,
    size_column: str | None,
    max_lag: int,
    time_column: str | None = None,
    mean_columns: tuple[str, ...] = (),
) -> tuple[np.ndarray, ...]:
    """Squared displacements of every track over lags 1..max_lag (frames).

    Returns ``d2`` (Å²), ``lag`` (frames), ``n`` (mean size over the step, or 1), the
    track id of each displacement, its frame time (``time_column`` of the later
    detection, s; 1 without a column) and, per name in ``mean_columns``, the mean of that
    column over the step's two detections.
    """
    t = tracks.sort_values([track_column, "frame"])
    tid = t[track_column].to_numpy()
    fr = t["frame"].to_numpy(int)
    x, y = t["x_A"].to_numpy(float), t["y_A"].to_numpy(float)
    size = t[size_column].to_numpy(float) if size_column else np.ones(len(t))
    ft = t[time_column].to_numpy(float) if time_column else np.ones(len(t))
    extra = [t[c].to_numpy(float) for c in mean_columns]
    out = []
    for k in range(1, max_lag + 1):
        if len(t) <= k:
            break
        # a lag-k displacement only counts if the track has all frames in between
        ok = (tid[k:] == tid[:-k]) & (fr[k:] - fr[:-k] == k)
        d2 = (x[k:] - x[:-k]) ** 2 + (y[k:] - y[:-k]) ** 2
        means = [(0.5 * (v[k:] + v[:-k]))[ok] for v in (size, *extra)]
        out.append(
            (d2[ok], np.full(int(ok.sum()), k), means[0], tid[k:][ok], ft[k:][ok], *means[1:])
        )
    if not out or sum(o[0].size for o in out) == 0:
        raise DataError("no track has two consecutive frames: cannot measure mobility")
    return tuple(np.concatenate([o[i] for o in out]) for i in range(5 + len(mean_columns)))


def _moment_fit(
    d2: np.ndarray, c: np.ndarray, lag: np.ndarray, sigma2: float | None
) -> tuple[float, float]:
    """Γ₁ (and σ² when not given) from ``E[d²] = 4σ² + c·Γ₁`` by moments.

    With σ² unknown, the pooled mean-squared displacement per lag, ``Σd²/N`` against
    ``Σc/N``, is fitted by a straight line (weights N, the number of displacements); its
    intercept is 4σ² (Michalet, PRE 82, 041914 (2010)).  Γ₁ then comes from the lag-1 steps
    only, ``Γ₁ = Σ(d² − 4σ²)/Σc`` (the lag-1 steps carry most of the information and are
    least affected by confinement).
    """
    if sigma2 is None:
        lags = np.unique(lag)
        msd = np.array([d2[lag == k].mean() for k in lags])
        cm = np.array([c[lag == k].mean() for k in lags])
        nk = np.array([np.sum(lag == k) for k in lags], float)
        A = np.c_[np.full(lags.size, 4.0), cm] * np.sqrt(nk)[:, None]
        sol, *_ = np.linalg.lstsq(A, msd * np.sqrt(nk), rcond=None)
        sigma2 = max(float(sol[0]), 0.0)
    one = lag == 1
    g = float(np.sum(d2[one] - 4.0 * sigma2) / np.sum(c[one]))
    return max(g, 0.0), float(sigma2)


def _truncated_fit(d2: np.ndarray, c: np.ndarray, sigma2: float, r2: float) -> float:
    """Γ₁ by maximum likelihood from steps with ``|Δr|² <= r2`` (the tracker's largest link).

    A 2-D Gaussian displacement of mean square ``μ = 4σ² + c·Γ₁`` has ``|Δr|² ~ Exp(μ)``;
    only steps up to ``r2`` are kept, so each contributes the truncated density
    ``exp(−d²/μ) / (μ·(1 − exp(−r2/μ)))``.  Longer steps are left out: the tracker cannot
    measure them (censoring) and those it did link are mostly links between two clusters
    (on the demo's imaged series 24–31 % of the lag-1 steps joined two clusters; with the
    steps to unmatched detections they carried 83–84 % of Σ|Δr|²).
    """
    keep = d2 <= r2
    d2, c = d2[keep], c[keep]
    if d2.size == 0:
        return float("nan")
    g0 = max(float(np.sum(d2 - 4.0 * sigma2) / np.sum(c)), 1e-12 * r2 / float(np.max(c)))

    def nll(lg: float) -> float:
        mu = 4.0 * sigma2 + c * np.exp(lg)
        return float(np.sum(np.log(mu) + d2 / mu + np.log(-np.expm1(-r2 / mu))))

    lg0 = np.log(g0)
    res = optimize.minimize_scalar(nll, bounds=(lg0 - 8.0, lg0 + 8.0), method="bounded")
    if res.x > lg0 + 7.9:
        # the likelihood still rises at the bound: the kept steps fill the link radius
        # (mean |Δr|² near R²/2, the limit of a truncated exponential), so no finite
        # maximum exists — the data only bound Γ₁ from below (few steps, or R too small)
        return float("inf")
    return float(np.exp(res.x))


# fewer tracks than this: the bootstrap over tracks cannot see the spread of the steps
_MIN_BOOT_TRACKS = 5


def cluster_hop_rate(
    tracks: pd.DataFrame,
    *,
    frame_time_s: float | None = None,
    hop_length_A: float = 5.87,
    size_exponent: float = 4.0 / 3.0,
    localization_error_A: float | None = 0.0,
    max_lag: int = 4,
    max_step_A: float | None = None,
    size_column: str = "n_atoms",
    track_column: str = "track_id",
    estimator: str = "moment",
    level: float = 0.95,
    n_boot: int = 300,
    rng: Any = None,
    frame_time_column: str | None = None,
) -> dict[str, float]:
    """Monomer-equivalent hop rate Γ₁ (s⁻¹) from cluster tracks.

    Model: a cluster of ``n`` atoms hops on the host lattice (hop length ``a``) at rate
    ``Γ_c = Γ₁·n^(−α)`` (periphery diffusion α = 4/3; Khare & Einstein, PRB 54, 11752
    (1996)); in projection a displacement over ``k`` frames has
    ``E|Δr|² = (2/3)·a²·Γ_c·k·Δt + 4σ²`` (two of three axes seen; σ the localisation error
    per axis, which also absorbs the registration jitter).  The estimate is the moment
    estimator over lag-1 steps, ``Γ₁ = Σ(|Δr|² − 4σ²) / Σ (2/3)a²n^(−α)Δt`` — it needs only
    the mean to be right, so it holds for the discrete lattice walk at any number of hops
    per frame (finite frame time).  The interval is a bootstrap over tracks (steps of one
    track are not independent).

    Biases to know (see ``docs/insitu.md``):

    * localisation error adds 4σ² to every step: give ``localization_error_A``, or pass
      ``None`` to estimate it from the intercept of the pooled MSD against the lag
      (lags 1..``max_lag``; Michalet, PRE 82, 041914 (2010)) — that assumes free
      (unconfined) diffusion over ``max_lag`` frames;
    * steps longer than the tracker's largest link ``max_step_A`` are never measured
      (censoring, low bias for fast clusters): choose the frame time so that clusters make
      ≲ 1 hop per frame; ``frac_long_steps`` (steps beyond half of ``max_step_A``) flags
      the problem;
    * only relative sizes matter for an activation energy (a constant size bias cancels);
    * links between two different clusters (a mis-link, or a merge) make long steps that
      dominate Σ|Δr|²: ``estimator="truncated"`` keeps the lag-1 steps up to
      ``max_step_A`` and fits Γ₁ by maximum likelihood of a 2-D Gaussian step truncated
      there.  It assumes Gaussian steps (several hops per frame, or the same hops per frame
      at every temperature, so that its bias is one factor that cancels in Ea); on the
      demo's imaged mobility series it halved the RMS error of Ea (0.094 → 0.051 eV over
      24 seeds, ``benchmarks/bench_kinetics.py``), but not on synthetic lattice walks at
      ~1 hop per frame, and with the fast demo's few steps (3 × 12 frames) it failed
      (RMS 0.42 against 0.21 eV): opt-in, see ``docs/insitu.md``;
    * fewer mis-links to begin with: track the detections for the mobility with cheap ends
      and births (``track_clusters(..., end_cost=2, birth_cost=2)``, what the
      ``quantify.mechanism`` step does by default) rather than with the lineage tracker's
      6 nats; on the demo's series the moment estimator's Ea RMS error went from 0.094 to
      0.046 eV over 24 seeds (``docs/insitu.md``, kinetics).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x_A, y_A, track_id`` and ``size_column`` (e.g. from
        :func:`perovstem.insitu.track_clusters`).
    frame_time_s : float, optional
        Time between frames, s (or give ``frame_time_column``).
    hop_length_A : float
        Hop length (lattice vector), Å.
    size_exponent : float
        α of ``Γ_c = Γ₁ n^(−α)`` (0: size-independent).
    localization_error_A : float or None
        Position error per axis, Å (subtracted, 4σ² per step); None: estimated.
    max_lag : int
        Largest lag (frames) used to estimate the localisation error.
    max_step_A : float, optional
        The tracker's largest link, Å (for the ``frac_long_steps`` diagnostic, and the
        truncation radius of ``estimator="truncated"``).
    estimator : {"moment", "truncated"}
        ``"moment"``: Σ(|Δr|² − 4σ²)/Σc over all lag-1 steps (exact in the mean for the
        lattice walk at any hops per frame, sensitive to mis-links); ``"truncated"``:
        maximum likelihood on the steps up to ``max_step_A`` (needs ``max_step_A`` and a
        given ``localization_error_A``), robust to mis-links; ``rate_per_s`` is ``inf``
        where the kept steps fill the link radius (no finite maximum: few steps, or a
        radius too small for the hops per frame).
    level, n_boot, rng
        Bootstrap over tracks (percentile interval).
    frame_time_column : str, optional
        Column of ``tracks`` with each detection's frame interval, s, one value per track:
        tracks of fields imaged with different frame times pooled into one Γ₁ (each step
        weighted by its own Δt, the moment estimator stays exact in the mean).  Instead of
        ``frame_time_s``.

    Returns
    -------
    dict
        ``rate_per_s``, ``ci_low``, ``ci_high``, ``stderr`` (of Γ₁), ``localization_error_A``
        (given or estimated), ``n_steps`` (lag-1 steps), ``n_steps_dropped`` (of those,
        beyond ``max_step_A`` and left out by ``estimator="truncated"``), ``n_tracks``,
        ``frac_long_steps``.
    """
    refuse_text_numbers(locals())
    dt = _frame_time(frame_time_s, frame_time_column)
    a = check_positive("hop_length_A", hop_length_A)
    check_choice("estimator", estimator, ("moment", "truncated"))
    if estimator == "truncated":
        if max_step_A is None:
            raise ParameterError(
                "`estimator='truncated'` needs `max_step_A` (the tracker's largest link, Å)"
            )
        check_positive("max_step_A", max_step_A)
        if localization_error_A is None:
            raise ParameterError(
                "`estimator='truncated'` needs a given `localization_error_A` (not None)"
            )
    check_range("level", level, 0.5, 0.9999)
    if isinstance(max_lag, bool) or int(max_lag) != max_lag or int(max_lag) < 1:
        raise ParameterError(f"`max_lag` must be an integer >= 1, got {max_lag!r}")
    s2_fixed = None
    if localization_error_A is not None:
        s2_fixed = (
            check_positive("localization_error_A", localization_error_A, allow_zero=True) ** 2
        )
    elif int(max_lag) < 2:
        raise ParameterError(
            "estimating the localisation error needs `max_lag` >= 2 (or give "
            "`localization_error_A`)"
        )
    need = {"frame", "x_A", "y_A", track_column} | ({size_column} if size_exponent else set())
    _check_tracks(tracks, need, track_column, frame_time_column)
    lag_max = int(max_lag) if s2_fixed is None else 1
    d2, lag, n, tid, step_dt = _track_steps(
        tracks, track_column, size_column if size_exponent else None, lag_max, frame_time_column
    )
    w = np.clip(n, 1e-9, None) ** (-size_exponent) if size_exponent else np.ones(d2.size)
    c = (2.0 / 3.0) * a * a * dt * w * lag
    if frame_time_column is not None:  # each step its own field's Δt
        c = c * step_dt
    if s2_fixed is None and np.unique(lag).size < 2:
        raise DataError("no track spans two lags: cannot estimate the localisation error")
    g, s2 = _moment_fit(d2, c, lag, s2_fixed)
    r2 = float(max_step_A) ** 2 if estimator == "truncated" else None

    def fit(idx: np.ndarray) -> float:
        if r2 is None:
            return _moment_fit(d2[idx], c[idx], lag[idx], s2_fixed)[0]
        return _truncated_fit(d2[idx], c[idx], s2, r2)

    if r2 is not None:
        g = fit(np.flatnonzero(lag == 1))
    gen = as_rng(rng)
    one = lag == 1
    uniq = np.unique(tid[one])
    idx = {u: np.flatnonzero(tid == u) for u in uniq}
    # resampled in an order of the tracks' steps, not of their ids: pooled fields' ids
    # depend on the order the fields come in (renaming a series in `perovstem kinetics`
    # moved its interval)
    uniq = np.array(
        sorted(
            uniq, key=lambda u: (float(np.sum(d2[idx[u]])), idx[u].size, float(np.sum(c[idx[u]])))
        )
    )
    boots = []
    for _ in range(int(n_boot)):
        pick = np.concatenate([idx[u] for u in gen.choice(uniq, uniq.size, replace=True)])
        if s2_fixed is None and np.unique(lag[pick]).size < 2:
            continue
        boots.append(fit(pick))
    q = (1 - level) / 2
    b = np.asarray(boots) if boots else np.array([np.nan])
    # the truncated fit may be unbounded (inf) in some replicates: order statistics
    how = "linear" if r2 is None else "inverted_cdf"
    lo, hi = float(np.quantile(b, q, method=how)), float(np.quantile(b, 1 - q, method=how))
    if uniq.size < _MIN_BOOT_TRACKS:
        # a bootstrap over one track resamples that track only: a zero-width interval
        # (Γ₁ = 2.81e3 [2.81e3, 2.81e3] from one step).  With few tracks the interval is at
        # least as wide as those of the lag-1 steps themselves: Gaussian steps,
        # Σ|Δr|² ~ (Γ/Γ̂)·χ²(2N)/(2N), and lattice hops, m = Σ|Δr|²/a² in-plane hops
        # ~ Poisson (Garwood interval; an upper bound also where no hop was seen)
        k = 2 * int(one.sum())
        per_hop = a * a / float(c[one].sum())  # Γ₁ of one in-plane hop
        m = float(d2[one].sum()) / (a * a)
        m_lo, m_hi = _garwood(m, level)
        cand_lo, cand_hi = [per_hop * m_lo], [per_hop * m_hi]
        if g > 0:
            cand_lo.append(g * k / stats.chi2.ppf(1 - q, k))
            cand_hi.append(g * k / stats.chi2.ppf(q, k))
        lo = min([lo, *cand_lo]) if np.isfinite(lo) else min(cand_lo)
        hi = max([hi, *cand_hi]) if np.isfinite(hi) else max(cand_hi)
    long = float(np.mean(d2[one] > (0.5 * max_step_A) ** 2)) if max_step_A else float("nan")
    return {
        "rate_per_s": g,
        "ci_low": lo,
        "ci_high": hi,
        "stderr": float(np.std(b, ddof=1)) if b.size > 1 else float("nan"),
        "localization_error_A": float(np.sqrt(s2)),
        "n_steps": int(one.sum()),
        "n_steps_dropped": int(np.sum(d2[one] > r2)) if r2 is not None else 0,
        "n_tracks": int(uniq.size),
        "frac_long_steps": long,
    }


def _ramp_fit(
    d2: np.ndarray, c: np.ndarray, beta: np.ndarray, sigma2: float
) -> tuple[float, float]:
    """(ln Γ₁ at β = 0, Ea in eV) of ``E d² = 4σ² + c·Γ₁·exp(−Ea·β)``, β the step's
    1/k_BT less the mean; Poisson quasi-likelihood (variance ∝ mean: a step of few lattice
    hops, |Δr|² ≈ a² × a Poisson number), whose score needs only the mean to be right
    (McCullagh & Nelder, *Generalized Linear Models*, 2nd ed., 1989, ch. 9); at one
    temperature it is the moment estimator of :func:`cluster_hop_rate`."""

    def nll(p: np.ndarray) -> float:
        mu = 4.0 * sigma2 + c * np.exp(p[0] - p[1] * beta)
        return float(np.sum(mu - d2 * np.log(mu)))

    g0 = max(float(np.sum(d2 - 4.0 * sigma2) / np.sum(c)), 1e-300)
    res = optimize.minimize(
        nll,
        np.array([np.log(g0), 0.0]),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000},
    )
    return float(res.x[0]), float(res.x[1])


def hop_rate_arrhenius(
    tracks: pd.DataFrame,
    *,
    frame_time_s: float | None = None,
    temperature_column: str = "temperature_K",
    hop_length_A: float = 5.87,
    size_exponent: float = 4.0 / 3.0,
    localization_error_A: float = 0.0,
    size_column: str = "n_atoms",
    track_column: str = "track_id",
    level: float = 0.95,
    n_boot: int = 300,
    rng: Any = None,
    frame_time_column: str | None = None,
) -> dict[str, float]:
    """Activation energy of cluster hopping from tracks made while the temperature changed.

    A temperature ramp (or any series whose temperature changes from frame to frame) leaves
    too few frames at each temperature for a hop rate per temperature
    (:func:`cluster_hop_rate`, then :func:`~perovstem.quantify.kinetics.fit_arrhenius`),
    and cutting tracks where the temperature steps loses the steps across the cuts.  Here
    every lag-1 step of the whole tracks keeps its own temperature (mean 1/T of its two
    frames) and the mean model of :func:`cluster_hop_rate`,
    ``E|Δr|² = 4σ² + (2/3)a²·n^(−α)·Δt·Γ₁(T)`` with
    ``Γ₁(T) = Γ₁(T_ref)·exp(−Ea/k_B·(1/T − 1/T_ref))`` (Arrhenius), is fitted to all steps
    at once by a Poisson quasi-likelihood (|Δr|² of a few lattice hops: variance ∝ mean;
    at one temperature the moment estimator of :func:`cluster_hop_rate`), consistent
    whenever the mean model holds (McCullagh & Nelder, *Generalized Linear Models*, 2nd
    ed., 1989, ch. 9).  ``T_ref`` is the temperature of the mean 1/T of the
    steps, where Γ₁ and Ea are least correlated.  The interval is a bootstrap over tracks
    (percentile).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x_A, y_A, track_id``, ``size_column`` and ``temperature_column`` (K, per
        detection: its frame's temperature, e.g. :func:`perovstem.insitu.hop_tracks`).
    frame_time_s : float, optional
        Time between frames, s (or give ``frame_time_column``).
    temperature_column : str
        Column of temperatures, K.
    hop_length_A, size_exponent, localization_error_A, size_column, track_column
        As :func:`cluster_hop_rate` (the localisation error is given, not estimated: the
        intercept of the MSD against the lag mixes temperatures on a ramp).
    level, n_boot, rng
        Bootstrap over tracks.
    frame_time_column : str, optional
        Per-detection frame intervals, s, instead of ``frame_time_s``.

    Returns
    -------
    dict
        ``Ea_eV``, ``ci_low``, ``ci_high``, ``stderr`` (of Ea, bootstrap), ``rate_ref_per_s``
        (Γ₁ at ``T_ref_K``), ``T_ref_K``, ``T_min_K``, ``T_max_K`` (of the steps),
        ``n_steps``, ``n_tracks``.
    """
    refuse_text_numbers(locals())
    dt = _frame_time(frame_time_s, frame_time_column)
    a = check_positive("hop_length_A", hop_length_A)
    s2 = check_positive("localization_error_A", localization_error_A, allow_zero=True) ** 2
    check_range("level", level, 0.5, 0.9999)
    from perovstem.quantify.kinetics import K_B_EV_PER_K

    need = {"frame", "x_A", "y_A", track_column, temperature_column}
    need |= {size_column} if size_exponent else set()
    _check_tracks(tracks, need, track_column, frame_time_column)
    temps = tracks[temperature_column].to_numpy(float)
    if np.any(temps <= 0):
        raise DataError(f"`tracks` column {temperature_column!r} must be in K (> 0)")
    # lag-1 steps of the whole tracks, each with the mean 1/T of its two detections
    d2, _, n, tid, step_dt, inv_t = _track_steps(
        tracks.assign(_inv_T=1.0 / temps),
        track_column,
        size_column if size_exponent else None,
        1,
        frame_time_column,
        mean_columns=("_inv_T",),
    )
    if np.ptp(1.0 / inv_t) <= 0:
        raise DataError(
            "every step was made at one temperature: no activation energy from one "
            "temperature (cluster_hop_rate gives its hop rate)"
        )
    w = np.clip(n, 1e-9, None) ** (-size_exponent) if size_exponent else np.ones(d2.size)
    c = (2.0 / 3.0) * a * a * dt * w * (step_dt if frame_time_column else 1.0)
    inv_ref = float(np.mean(inv_t))
    beta = (inv_t - inv_ref) / K_B_EV_PER_K
    lg, ea = _ramp_fit(d2, c, beta, s2)
    gen = as_rng(rng)
    uniq = np.unique(tid)
    idx = {u: np.flatnonzero(tid == u) for u in uniq}
    boots = []
    for _ in range(int(n_boot)):
        pick = np.concatenate([idx[u] for u in gen.choice(uniq, uniq.size, replace=True)])
        if np.ptp(beta[pick]) > 0:
            boots.append(_ramp_fit(d2[pick], c[pick], beta[pick], s2)[1])
    q = (1 - level) / 2
    b = np.asarray(boots) if boots else np.array([np.nan])
    return {
        "Ea_eV": ea,
        "ci_low": float(np.quantile(b, q)),
        "ci_high": float(np.quantile(b, 1 - q)),
        "stderr": float(np.std(b, ddof=1)) if b.size > 1 else float("nan"),
        "rate_ref_per_s": float(np.exp(lg)),
        "T_ref_K": 1.0 / inv_ref,
        "T_min_K": float(np.min(1.0 / inv_t)),
        "T_max_K": float(np.max(1.0 / inv_t)),
        "n_steps": int(d2.size),
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
    refuse_text_numbers(locals())
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


def pool_field_tracks(
    tables: Sequence[pd.DataFrame],
    *,
    names: Sequence[str] | None = None,
    track_column: str = "track_id",
) -> pd.DataFrame:
    """The tracks of several fields (crystals, series) of one condition as one table.

    A hop rate is measured on the steps within each track, so the fields' steps pool only if
    their track ids stay apart: a later field's ids are shifted past the largest id of the
    fields before it (the first field's ids are kept as they are).  Used to pool the fields
    of one temperature for :func:`cluster_hop_rate` (an activation energy within 0.05 eV
    needs about 200 hops per temperature, ``docs/insitu.md``).

    Parameters
    ----------
    tables : sequence of DataFrame
        Each field's tracks (``track_column`` numeric where more than one field is given).
    names : sequence of str, optional
        The fields' names for error messages (default ``field 0``, ``field 1``, ...).
    track_column : str
        Track id column.

    Returns
    -------
    DataFrame
        The tables concatenated in order, ``track_column`` shifted per field.
    """
    refuse_text_numbers(locals())
    tables = list(tables)
    if not tables:
        raise DataError("no tracks to pool: give at least one field's table")
    names = item_names(names, len(tables), default="field", what="tables")
    out = []
    offset = 0  # a further field's track ids follow the earlier's: no step across fields
    for f, (name, t) in enumerate(zip(names, tables, strict=True)):
        if not isinstance(t, pd.DataFrame) or track_column not in t:
            raise DataError(f"{name}: a tracks table with column {track_column!r} is needed")
        ids = pd.to_numeric(t[track_column], errors="coerce")
        if f:  # (the first field's tracks go in as they are)
            if ids.isna().any():
                raise DataError(f"{name}: {track_column} must be numbers for pooling fields")
            ids = ids + offset
            t = t.assign(**{track_column: ids})
        if ids.notna().any():
            offset = int(ids.max()) + 1
        out.append(t)
    return pd.concat(out, ignore_index=True)
