"""Nucleation rate of Pb⁰ clusters: truth definition, template population balance, identifiability.

The nucleation rate ``J`` used throughout the package (``J_per_e_per_A2`` of
:mod:`perovstem.quantify.kinetics`) is the number of new nuclei in the field of view per
unit dose, nuclei per (e⁻/Å²).  In the lattice KMC (:func:`perovstem.simulate.degradation_kmc`)
a nucleus is born when an adatom arrives next to ``critical_nucleus − 1`` other adatoms
(``"birth"`` events, ``frame_table["n_births"]``); the realised rate is
:func:`kmc_nucleation_rate`: births per dose while Pb⁰ is being produced.

Images see clusters only above a detection limit (≈ 5–10 Pb atoms), and on a nanocrystal
most nuclei coalesce (Smoluchowski) before they reach it.  :func:`nucleation_profile`
compares the observed per-frame detected cluster numbers with a family of population
models — the package's lattice KMC run at the series' conditions with different
nucleation laws (critical nucleus 2–4, acceptance scaled), i.e. a stochastic version of the
rate equations of Venables (monomer supply, nucleation, capture, coalescence) — each giving
its own ``J`` and its expected number of *detectable* clusters per frame (through a
detection completeness curve).  The Poisson deviance of the observed counts as a function
of ``J`` is the profile.  Where coalescence controls the cluster number (the regime of the
KMC nanocrystals at 10³–10⁴ e⁻/Å²/s) the detectable number is almost independent of ``J``
(``elasticity`` ``∂ln N_det/∂ln J`` = −0.05…0.16 on analysed images of 5 nm cubes): the profile is flat, ``identifiable`` is
False and the interval spans the whole template range.  ``J`` is then not measurable from
the images; the tracked births (:func:`perovstem.insitu.lineage_events`) are the rate of
*detectable* appearances, not the nucleation rate.

References
----------
J. A. Venables, G. D. T. Spiller, M. Hanbücken, "Nucleation and growth of thin films",
Rep. Prog. Phys. 47, 399 (1984).
M. von Smoluchowski, "Versuch einer mathematischen Theorie der Koagulationskinetik
kolloider Lösungen", Z. Phys. Chem. 92, 129 (1917).
F. Garwood, "Fiducial limits for the Poisson distribution", Biometrika 28, 437 (1936).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from perovstem.errors import DataError, ParameterError

__all__ = [
    "NucleationProfile",
    "kmc_nucleation_rate",
    "detection_completeness",
    "nucleation_templates",
    "nucleation_profile",
]

#: default template family: (critical_nucleus, acceptance scale of corner/edge/face)
DEFAULT_LAWS = ((2, 1.0), (3, 0.25), (3, 1.0), (4, 1.0))
#: |∂ln N_det/∂ln J| below which a count bias of 10 % moves J by more than 20 %
MIN_ELASTICITY = 0.5


def _garwood(n: float, level: float) -> tuple[float, float]:
    a = 1 - level
    lo = 0.0 if n <= 0 else stats.chi2.ppf(a / 2, 2 * n) / 2
    hi = stats.chi2.ppf(1 - a / 2, 2 * n + 2) / 2
    return float(lo), float(hi)


def kmc_nucleation_rate(frame_table: pd.DataFrame, *, level: float = 0.95) -> dict[str, float]:
    """Realised nucleation rate of a KMC trajectory (the truth the image estimates target).

    Parameters
    ----------
    frame_table : DataFrame
        ``KMCTrajectory.frame_table`` (``n_births``, ``n_Pb_reduced``,
        ``cumulative_dose_e_per_A2``).
    level : float
        Confidence level of the exact Poisson (Garwood) interval.

    Returns
    -------
    dict
        ``J_per_e_per_A2`` = Σ births / D_active (nuclei per e⁻/Å² in the field of view),
        ``ci_low``, ``ci_high``, ``n_births``, ``dose_active_e_per_A2`` (cumulative dose at
        the end of the last frame in which Pb⁰ was still produced; after it nothing nucleates
        and the rate per dose would be diluted).
    """
    need = ("n_births", "n_Pb_reduced", "cumulative_dose_e_per_A2")
    if not isinstance(frame_table, pd.DataFrame) or any(c not in frame_table for c in need):
        raise DataError(f"`frame_table` must be a KMC frame table with columns {need}")
    red = frame_table["n_Pb_reduced"].to_numpy(float)
    active = np.nonzero(red > 0)[0]
    if active.size == 0:
        raise DataError("`frame_table`: no Pb⁰ produced in any frame (n_Pb_reduced all 0)")
    k = int(active.max())
    d = float(frame_table["cumulative_dose_e_per_A2"].iloc[k])
    b = float(frame_table["n_births"].to_numpy(float)[: k + 1].sum())
    lo, hi = _garwood(b, level)
    return {
        "J_per_e_per_A2": b / d,
        "ci_low": lo / d,
        "ci_high": hi / d,
        "n_births": b,
        "dose_active_e_per_A2": d,
    }


def detection_completeness(n_atoms: Any, *, n50: float = 7.0, width: float = 1.5) -> np.ndarray:
    """Probability that a cluster of ``n_atoms`` Pb atoms is detected (logistic curve).

    ``c(n) = 1 / (1 + exp(−(n − n50)/width))``; the defaults (n50 = 7 atoms, width 1.5
    atoms) follow the detector's ≈ 5–10-atom limit on simulated KMC frames (docs/insitu.md).
    """
    if not (np.isfinite(n50) and np.isfinite(width) and width > 0):
        raise ParameterError(f"completeness needs finite n50 and width > 0, got {n50}, {width}")
    n = np.asarray(n_atoms, float)
    return 1.0 / (1.0 + np.exp(-(n - n50) / width))


def nucleation_templates(
    edge_A: float,
    *,
    n_frames: int,
    frame_time_s: float,
    dose_rate_e_per_A2_s: float,
    temperature_K: float = 300.0,
    laws: tuple[tuple[int, float], ...] = DEFAULT_LAWS,
    n_seeds: int = 2,
    completeness: tuple[float, float] = (7.0, 1.5),
    params: Any = None,
    rng: Any = None,
) -> pd.DataFrame:
    """Population-model templates: lattice KMC runs with different nucleation laws.

    Parameters
    ----------
    edge_A : float
        Edge of the cubic crystal, Å (e.g. from the segmented outline of the first frame).
    n_frames, frame_time_s, dose_rate_e_per_A2_s, temperature_K
        The series' frame schedule and conditions (s, e⁻/Å²/s, K).
    laws : tuple of (int, float)
        ``(critical_nucleus, scale)`` pairs; ``scale`` multiplies the corner/edge/face
        nucleation acceptance probabilities (1, 0.1, 0.01 by default).
    n_seeds : int
        Runs per law.
    completeness : (float, float)
        ``(n50, width)`` of :func:`detection_completeness`, atoms.
    params : KineticParameters, optional
        Everything but the nucleation law (e.g. the measured hop activation energy or
        cluster mobility); package defaults if omitted.
    rng : int or Generator, optional
        Seeds of the runs.

    Returns
    -------
    DataFrame
        One row per run: ``law, critical_nucleus, scale, seed, J_per_e_per_A2`` (from
        :func:`kmc_nucleation_rate`) and ``expected_detected`` (array: Σ c(n) over the
        clusters alive at the end of each frame, clusters).
    """
    from perovstem.simulate import degradation_kmc, nanocrystal
    from perovstem.simulate.kmc_params import KineticParameters

    if not (np.isfinite(edge_A) and edge_A > 0):
        raise ParameterError(f"`edge_A` must be > 0, got {edge_A}")
    if int(n_frames) < 2 or int(n_seeds) < 1 or not laws:
        raise ParameterError(
            f"need n_frames >= 2, n_seeds >= 1 and laws, got {n_frames}, {n_seeds}, {laws}"
        )
    import dataclasses

    gen = np.random.default_rng(rng)
    base = KineticParameters() if params is None else params
    if not isinstance(base, KineticParameters):
        raise ParameterError(f"`params` must be KineticParameters, got {type(params).__name__}")
    rows = []
    for li, (nc, sc) in enumerate(laws):
        if int(nc) < 2 or not (0 < sc <= 1):
            raise ParameterError(f"`laws`: critical_nucleus >= 2 and 0 < scale <= 1, got {nc, sc}")
        p = dataclasses.replace(
            base,
            critical_nucleus=int(nc),
            nucleation_probability_corner=base.nucleation_probability_corner * sc,
            nucleation_probability_edge=base.nucleation_probability_edge * sc,
            nucleation_probability_face=base.nucleation_probability_face * sc,
        )
        for _ in range(int(n_seeds)):
            seed = int(gen.integers(2**31))
            tr = degradation_kmc(
                nanocrystal(edge_A, rng=seed),
                n_frames=int(n_frames),
                frame_time_s=frame_time_s,
                dose_rate_e_per_A2_s=dose_rate_e_per_A2_s,
                temperature_K=temperature_K,
                params=p,
                rng=seed,
            )
            c = tr.clusters
            w = detection_completeness(c["n_atoms"], n50=completeness[0], width=completeness[1])
            lam = np.bincount(c["frame"].to_numpy(int), weights=w, minlength=int(n_frames))
            rows.append(
                {
                    "law": li,
                    "critical_nucleus": int(nc),
                    "scale": float(sc),
                    "seed": seed,
                    "J_per_e_per_A2": kmc_nucleation_rate(tr.frame_table)["J_per_e_per_A2"],
                    "expected_detected": lam[: int(n_frames)],
                }
            )
    return pd.DataFrame(rows)


@dataclass
class NucleationProfile:
    """Result of :func:`nucleation_profile`.

    Attributes
    ----------
    J_per_e_per_A2 : float
        Template ``J`` with the smallest deviance, nuclei per e⁻/Å².
    ci_low, ci_high : float
        Range of template ``J`` whose deviance is within the χ²₁ quantile (scaled by the
        template over-dispersion) of the minimum; the whole template range when ``J`` is
        not identifiable.
    identifiable : bool
        True when the interval excludes at least one template law at each end and
        ``|elasticity| >= MIN_ELASTICITY`` (0.5), i.e. the images constrain ``J`` within the
        family even allowing for a detector count bias.
    elasticity : float
        Least-squares slope of ln(Σ expected detected clusters) against ln J over the
        templates (0: the detectable clusters carry no information on J).
    profile : DataFrame
        Per law: ``J_per_e_per_A2`` (mean over seeds), ``expected_total``, ``deviance``,
        ``delta``.
    """

    J_per_e_per_A2: float
    ci_low: float
    ci_high: float
    identifiable: bool
    elasticity: float
    level: float
    profile: pd.DataFrame = field(repr=False)

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        return bool(self.ci_low <= value <= self.ci_high)

    def frame_columns(self) -> dict[str, float]:
        """Columns for a frames table read by :func:`~perovstem.quantify.mechanism_summary`."""
        return {
            "J_nucleation": self.J_per_e_per_A2,
            "J_nucleation_ci_low": self.ci_low,
            "J_nucleation_ci_high": self.ci_high,
            "J_nucleation_identifiable": float(self.identifiable),
        }


def nucleation_profile(
    n_detected: Any,
    templates: pd.DataFrame,
    *,
    level: float = 0.95,
) -> NucleationProfile:
    """Profile (Poisson deviance) of the nucleation rate from detected cluster numbers.

    Parameters
    ----------
    n_detected : array_like
        Detected clusters per frame (``frames["n_clusters"]`` of
        :func:`perovstem.insitu.analyze_series`), same frames as the templates.
    templates : DataFrame
        :func:`nucleation_templates` at the series' conditions.
    level : float
        Confidence level.

    Returns
    -------
    NucleationProfile
        Deviance per template law, best ``J``, interval and identifiability.

    Notes
    -----
    The deviance of law ℓ is ``2 Σ_k [N_k ln(N_k/λ_ℓk) − (N_k − λ_ℓk)]`` with λ_ℓk the mean
    expected detected number over its seeds; it is divided by the over-dispersion of the
    templates (between-seed variance of Σλ over its mean, at least 1) so that the
    realisation-to-realisation noise of coalescence on a small crystal widens the interval.
    The models are the package's KMC with the generating parameters apart from the
    nucleation law: mobility, capture and coalescence are those of the truth (an inverse
    crime for them), so the flat profile is a best case.
    """
    if not isinstance(templates, pd.DataFrame) or "expected_detected" not in templates:
        raise DataError("`templates` must come from nucleation_templates")
    n = np.asarray(n_detected, float)
    if n.ndim != 1 or n.size < 2 or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise DataError(f"`n_detected` must be >= 2 finite counts >= 0, got {n!r}")
    if not 0 < level < 1:
        raise ParameterError(f"`level` must be in (0, 1), got {level}")
    lam_all = np.stack(templates["expected_detected"].to_list())
    if lam_all.shape[1] != n.size:
        raise DataError(f"`n_detected` has {n.size} frames, the templates {lam_all.shape[1]}")
    rows = []
    disp = []
    for law, g in templates.groupby("law", sort=True):
        idx = g.index.to_numpy()
        lam = np.maximum(lam_all[idx].mean(axis=0), 1e-6)
        dev = 2 * np.sum(np.where(n > 0, n * np.log(np.maximum(n, 1e-300) / lam), 0) - (n - lam))
        if len(idx) > 1:  # per-frame between-seed variance / mean, + template-mean noise
            v = np.var(lam_all[idx], axis=0, ddof=1).sum() / max(lam_all[idx].mean(0).sum(), 1e-9)
            disp.append(max(v, 1.0) * (1 + 1 / len(idx)))
        rows.append(
            {
                "law": law,
                "critical_nucleus": int(g["critical_nucleus"].iloc[0]),
                "scale": float(g["scale"].iloc[0]),
                "J_per_e_per_A2": float(g["J_per_e_per_A2"].mean()),
                "expected_total": float(lam.sum()),
                "deviance": float(dev),
            }
        )
    prof = pd.DataFrame(rows).sort_values("J_per_e_per_A2", ignore_index=True)
    phi = max(1.0, float(np.mean(disp))) if disp else 1.0
    prof["delta"] = (prof["deviance"] - prof["deviance"].min()) / phi
    q = float(stats.chi2.ppf(level, 1))
    inside = prof["delta"].to_numpy() <= q
    j = prof["J_per_e_per_A2"].to_numpy()
    best = int(np.argmin(prof["delta"].to_numpy()))
    lo, hi = float(j[inside].min()), float(j[inside].max())
    ok = (j > 0) & (prof["expected_total"].to_numpy() > 0)
    if ok.sum() >= 2 and np.ptp(np.log(j[ok])) > 0:
        el = float(np.polyfit(np.log(j[ok]), np.log(prof["expected_total"].to_numpy()[ok]), 1)[0])
    else:
        el = float("nan")
    # the detector's count bias (0.7-1.0 on KMC frames) is not in the deviance: a bias b
    # moves J by b^(1/elasticity), so J counts as identifiable only when |elasticity| >= 0.5
    ident = bool((~inside[0]) and (~inside[-1]) and abs(el) >= MIN_ELASTICITY)
    if not ident:
        lo, hi = float(j.min()), float(j.max())
    return NucleationProfile(
        J_per_e_per_A2=float(j[best]),
        ci_low=lo,
        ci_high=hi,
        identifiable=ident,
        elasticity=el,
        level=level,
        profile=prof,
    )
