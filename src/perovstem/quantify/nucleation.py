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

:func:`nucleation_rate` measures ``J`` where it *is* measurable: it counts detectable births
(:func:`detectable_births` on truth, tracked births on images) and divides by the survival
``s`` = detectable births / births of the template laws consistent with the count.  In the
sparse-nucleation regime (few nuclei for the crystal's room, e.g. low acceptance on ≥ 10 nm
cubes near the 233 K Pb⁰ immobility threshold) ``s`` ≈ 0.9–1 for every consistent law, the
detectable births follow ``J`` (elasticity 0.8–1) and ``J`` is identifiable (within 10 %);
in the coalescence-limited regime the consistent laws disagree on ``s`` (0.25–0.9) and ``J``
is reported as a range whose lower bound (detectable births per dose) holds for any law.
The truth is then all births of the series per its dose (``window="series"``).
benchmarks/bench_nucleation.py maps the regimes (crystal size, temperature, dose rate).

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

from perovstem._validation import check_int, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "NucleationProfile",
    "kmc_nucleation_rate",
    "detection_completeness",
    "detectable_births",
    "nucleation_templates",
    "nucleation_profile",
    "NucleationRate",
    "nucleation_rate",
]

#: default template family: (critical_nucleus, acceptance scale of corner/edge/face)
DEFAULT_LAWS = ((2, 1.0), (3, 0.25), (3, 1.0), (4, 1.0))
#: family of :func:`nucleation_rate`: critical nucleus 2 and 4, acceptance from the package
#: default (×1, coalescence-limited) down to ×0.003 (sparse nucleation)
SURVIVAL_LAWS = tuple((nc, sc) for nc in (2, 4) for sc in (1.0, 0.1, 0.03, 0.01, 0.003))
#: least survival (detectable births / births) of the consistent laws for an identifiable J:
#: the model-dependent correction 1/s stays ≤ 25 %
MIN_SURVIVAL = 0.8
#: relative uncertainty of the survival correction (≈ 2 σ) up to which J is identifiable
TOLERANCE = 0.1
#: detector check: Σ detected clusters / Σ expected (consistent laws) must lie in this band
#: (count bias 0.7–1.0 of the detector on 5 nm KMC frames, docs/insitu.md)
DETECTOR_BAND = (0.7, 1.3)
#: |∂ln N_det/∂ln J| below which a count bias of 10 % moves J by more than 20 %
MIN_ELASTICITY = 0.5


def _garwood(n: float, level: float) -> tuple[float, float]:
    a = 1 - level
    lo = 0.0 if n <= 0 else stats.chi2.ppf(a / 2, 2 * n) / 2
    hi = stats.chi2.ppf(1 - a / 2, 2 * n + 2) / 2
    return float(lo), float(hi)


def kmc_nucleation_rate(
    frame_table: pd.DataFrame, *, level: float = 0.95, window: str = "active"
) -> dict[str, float]:
    """Realised nucleation rate of a KMC trajectory (the truth the image estimates target).

    Parameters
    ----------
    frame_table : DataFrame
        ``KMCTrajectory.frame_table`` (``n_births``, ``n_Pb_reduced``,
        ``cumulative_dose_e_per_A2``).
    level : float
        Confidence level of the exact Poisson (Garwood) interval.
    window : {"active", "series"}
        ``"active"``: births up to the end of the last frame in which Pb⁰ was still
        produced, per the cumulative dose there (at 300 K nothing nucleates afterwards and
        the rate per dose would be diluted).  ``"series"``: all births of the series per its
        total dose; the truth of :func:`nucleation_rate`, because near 233 K the adatoms
        left when the crystal is consumed still nucleate (and are counted in the images).

    Returns
    -------
    dict
        ``J_per_e_per_A2`` = Σ births / D (nuclei per e⁻/Å² in the field of view),
        ``ci_low``, ``ci_high``, ``n_births``, ``dose_active_e_per_A2`` (the dose D of the
        window, e⁻/Å²).
    """
    refuse_text_numbers(locals())
    need = ("n_births", "n_Pb_reduced", "cumulative_dose_e_per_A2")
    if not isinstance(frame_table, pd.DataFrame) or any(c not in frame_table for c in need):
        raise DataError(f"`frame_table` must be a KMC frame table with columns {need}")
    if window not in ("active", "series"):
        raise ParameterError(f"`window` must be 'active' or 'series', got {window!r}")
    red = frame_table["n_Pb_reduced"].to_numpy(float)
    active = np.nonzero(red > 0)[0]
    if active.size == 0:
        raise DataError("`frame_table`: no Pb⁰ produced in any frame (n_Pb_reduced all 0)")
    k = int(active.max()) if window == "active" else len(frame_table) - 1
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


def detectable_births(
    clusters: pd.DataFrame,
    events: pd.DataFrame,
    *,
    n_frames: int | None = None,
    n_min: float = 7.0,
) -> np.ndarray:
    """Births a detector with a size limit can see: the truth of tracked births.

    A lineage *appears* in the first frame at whose end it has at least ``n_min`` atoms,
    unless one of its ancestors (through merges) appeared before: nuclei that merge with
    each other before any of them is detectable appear once, nuclei absorbed by a detectable
    cluster never.  Σ appearances ≤ Σ births, with equality when every nucleus grows to the
    detection limit on its own.

    Parameters
    ----------
    clusters : DataFrame
        ``frame, cluster_id, n_atoms`` of every cluster alive at the end of each frame
        (``KMCTrajectory.clusters``).
    events : DataFrame
        ``kind, cluster_id, parents`` (``KMCTrajectory.events``; merges give the parents).
    n_frames : int, optional
        Length of the output (default: last frame + 1).
    n_min : float
        Detection limit, atoms (the n₅₀ of :func:`detection_completeness`).

    Returns
    -------
    ndarray of int
        Appearances per frame.
    """
    refuse_text_numbers(locals())
    need_c, need_e = ("frame", "cluster_id", "n_atoms"), ("kind", "cluster_id", "parents")
    if not isinstance(clusters, pd.DataFrame) or any(c not in clusters for c in need_c):
        raise DataError(f"`clusters` must be a DataFrame with columns {need_c}")
    if not isinstance(events, pd.DataFrame) or any(c not in events for c in need_e):
        raise DataError(f"`events` must be a DataFrame with columns {need_e}")
    if not (np.isfinite(n_min) and n_min > 0):
        raise ParameterError(f"`n_min` must be > 0 atoms, got {n_min}")
    nf = int(clusters["frame"].max()) + 1 if n_frames is None else int(n_frames)
    big = clusters[clusters["n_atoms"].to_numpy(float) >= n_min]
    first = big.groupby("cluster_id")["frame"].min().astype(int).to_dict()
    merges = events[events["kind"] == "merge"]
    parents = {
        int(i): [int(q) for q in p]
        for i, p in zip(merges["cluster_id"], merges["parents"], strict=True)
    }
    seen: dict[int, bool] = {}

    def detected_line(i: int) -> bool:  # i or an ancestor was detectable (iterative DFS)
        stack, order = [i], []
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            order.append(j)
            stack.extend(q for q in parents.get(j, []) if q not in seen)
        for j in reversed(order):
            seen[j] = j in first or any(seen.get(q, False) for q in parents.get(j, []))
        return seen[i]

    out = np.zeros(max(nf, 0), dtype=int)
    for i, f in first.items():
        if f < nf and not any(detected_line(q) for q in parents.get(i, [])):
            out[f] += 1
    return out


MAX_TEMPLATE_SEEDS = 1000
"""Most KMC runs per law in :func:`nucleation_templates` (each run takes ~0.1–10 s)."""
MAX_TEMPLATE_LAWS = 100
"""Most nucleation laws in one :func:`nucleation_templates` call."""


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
        The series' frame schedule and conditions (s, e⁻/Å²/s, K); ``n_frames`` is an
        integer in [2, ``perovstem.simulate.kmc.MAX_FRAMES``].
    laws : tuple of (int, float)
        ``(critical_nucleus, scale)`` pairs; ``scale`` multiplies the corner/edge/face
        nucleation acceptance probabilities (1, 0.1, 0.01 by default); at most
        ``MAX_TEMPLATE_LAWS`` pairs.
    n_seeds : int
        Runs per law, 1 to ``MAX_TEMPLATE_SEEDS``.
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
        :func:`kmc_nucleation_rate`), ``expected_detected`` (array: Σ c(n) over the
        clusters alive at the end of each frame, clusters), ``n_births`` (all births of the
        run) and ``detectable_births`` (array: :func:`detectable_births` per frame with
        ``n_min`` = n₅₀).
    """
    refuse_text_numbers(locals())
    from perovstem.simulate import degradation_kmc, nanocrystal
    from perovstem.simulate.kmc_params import KineticParameters

    if not (np.isfinite(edge_A) and edge_A > 0):
        raise ParameterError(f"`edge_A` must be > 0, got {edge_A}")
    from perovstem.simulate.kmc import MAX_FRAMES

    # every (law, seed) pair is a full lattice-KMC run of n_frames frames: bound the sizes
    # so that a typo (n_frames=1e12) is an error, not an out-of-memory crash or a days-long run
    n_frames = check_int("n_frames", n_frames, 2, MAX_FRAMES)
    n_seeds = check_int("n_seeds", n_seeds, 1, MAX_TEMPLATE_SEEDS)
    try:
        n_laws = len(laws)
    except TypeError:
        n_laws = -1
    if not 1 <= n_laws <= MAX_TEMPLATE_LAWS:
        raise ParameterError(
            f"`laws` must be 1 to {MAX_TEMPLATE_LAWS} (critical_nucleus, scale) pairs, got {laws!r}"
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
                    "n_births": int(tr.frame_table["n_births"].sum()),
                    "detectable_births": detectable_births(
                        c, tr.events, n_frames=int(n_frames), n_min=completeness[0]
                    ),
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
    refuse_text_numbers(locals())
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


@dataclass
class NucleationRate(NucleationProfile):
    """Result of :func:`nucleation_rate` (the interval fields, :meth:`covers` and the
    ``J_nucleation*`` frame columns of :class:`NucleationProfile`, plus the survival).

    Attributes
    ----------
    J_per_e_per_A2 : float
        Counted births / (efficiency · survival · dose), nuclei per e⁻/Å² (series
        window; efficiency = geometric mean of ``count_efficiency``).
    ci_low, ci_high : float
        ``A_lo / (e_high · dose)`` (without survival correction: every detectable birth has
        at least one nucleus, so this bound holds under any nucleation law) and
        ``A_hi / (e_low · survival_min · dose)``; ``A_lo, A_hi`` the Garwood interval of
        the count.
    identifiable : bool
        True when every template law consistent with the count has survival ≥
        ``min_survival``, ``correction_uncertainty`` ≤ ``tolerance`` and (with
        ``n_detected``) the detected cluster numbers agree with a consistent law: J is then
        the count corrected by at most 1/min_survival and known to about ±10 %.
    detector_ratio : float
        Σ detected clusters / Σ expected detected clusters, for the consistent law closest
        to 1 (NaN without ``n_detected``).
    correction_uncertainty : float
        ``sqrt(u_s² + (2·u_b)² + u_e²)``: ``u_s = (s_max − s_min)/(s_max + s_min)``
        (survival spread over the consistent laws), ``u_b = sqrt((1 − s̄)/(s̄·A))``
        (binomial scatter of the realised survival with A detected births), ``u_e`` the
        spread of ``count_efficiency``.
    survival, survival_min, survival_max : float
        Mean, least and largest template survival (detectable births / births) over the
        consistent laws.
    elasticity : float
        Local ∂ln(template detectable births)/∂ln J at the consistent laws (≈ 1 where
        births are counted, ≈ 0 where coalescence sets them; NaN without neighbours).
    n_births_detected : float
        Observed detectable births (Σ over frames).
    dose_e_per_A2 : float
        Dose of the window, e⁻/Å².
    profile : DataFrame
        Per law: ``critical_nucleus, scale, J_per_e_per_A2, expected_births_detected,
        n_births, survival, deviance, consistent``.
    """

    survival: float
    survival_min: float
    survival_max: float
    correction_uncertainty: float
    detector_ratio: float
    n_births_detected: float
    dose_e_per_A2: float

    def frame_columns(self) -> dict[str, float]:
        """Columns for a frames table read by :func:`~perovstem.quantify.mechanism_summary`
        (those of :meth:`NucleationProfile.frame_columns` plus the survival)."""
        return {
            **super().frame_columns(),
            "J_nucleation_survival": self.survival,
            "J_nucleation_survival_min": self.survival_min,
        }


def _law_table(templates: pd.DataFrame) -> pd.DataFrame:
    """Per template law: mean J (series window), detectable births, births, survival and the
    between-seed over-dispersion of the detectable births."""
    need = ("detectable_births", "n_births", "J_per_e_per_A2", "critical_nucleus", "scale")
    if not isinstance(templates, pd.DataFrame) or any(c not in templates for c in need):
        raise DataError(f"`templates` must come from nucleation_templates (columns {need})")
    t = templates.assign(a=templates["detectable_births"].map(np.sum).astype(float))
    rows = []
    for law, g in t.groupby("law", sort=True):
        a, b = g["a"].to_numpy(float), g["n_births"].to_numpy(float)
        disp = np.var(a, ddof=1) / max(a.mean(), 1e-9) if len(a) > 1 else 1.0
        rows.append(
            {
                "law": law,
                "critical_nucleus": int(g["critical_nucleus"].iloc[0]),
                "scale": float(g["scale"].iloc[0]),
                "J_per_e_per_A2": float(g["J_per_e_per_A2"].mean()),
                "expected_births_detected": float(a.mean()),
                "n_births": float(b.mean()),
                "survival": float(min(a.mean() / b.mean(), 1.0)) if b.sum() > 0 else 1.0,
                "dispersion": max(float(disp), 1.0) * (1 + 1 / len(a)),
                "expected_detected_total": float(g["expected_detected"].map(np.sum).mean()),
            }
        )
    return pd.DataFrame(rows).sort_values(["critical_nucleus", "J_per_e_per_A2"], ignore_index=True)


def _consistent(prof: pd.DataFrame, a_obs: float, level: float) -> np.ndarray:
    """Laws whose detectable births agree with ``a_obs`` (over-dispersed Poisson deviance
    within the χ²₁ quantile) or bracket it along the J ladder of one critical nucleus."""
    lam = np.maximum(prof["expected_births_detected"].to_numpy(float), 1e-6)
    dev = 2 * ((a_obs * np.log(a_obs / lam) if a_obs > 0 else 0.0) - (a_obs - lam))
    prof["deviance"] = dev / prof["dispersion"].to_numpy(float)
    ok = prof["deviance"].to_numpy() <= float(stats.chi2.ppf(level, 1))
    for _, g in prof.groupby("critical_nucleus"):
        idx = g.index.to_numpy()
        lg = lam[idx]
        if a_obs <= lg.min():
            ok[idx[np.argmin(lg)]] = True
        elif a_obs >= lg.max():
            ok[idx[np.argmax(lg)]] = True
        for i, j in zip(idx[:-1], idx[1:], strict=True):
            if min(lam[i], lam[j]) <= a_obs <= max(lam[i], lam[j]):
                ok[[i, j]] = True
    return ok


def _detector_check(
    prof: pd.DataFrame,
    ok: np.ndarray,
    n_detected: Any,
    templates: pd.DataFrame,
    band: tuple[float, float],
) -> tuple[float, bool]:
    """Σ detected / Σ expected clusters for the consistent law that matches best, and
    whether that ratio lies inside ``band``."""
    if n_detected is None:
        return float("nan"), True
    n = np.asarray(n_detected, float)
    n_frames = len(templates["expected_detected"].iloc[0])
    if n.ndim != 1 or n.size != n_frames or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise DataError(f"`n_detected` must be {n_frames} counts >= 0 (one per frame), got {n!r}")
    if not (0 < band[0] <= 1 <= band[1]):
        raise ParameterError(f"`detector_band` must satisfy 0 < low <= 1 <= high, got {band}")
    lam = np.maximum(prof.loc[ok, "expected_detected_total"].to_numpy(float), 1e-9)
    r = n.sum() / lam
    best = float(r[np.argmin(np.abs(np.log(np.maximum(r, 1e-300))))])
    return best, bool(band[0] <= best <= band[1])


def _local_elasticity(prof: pd.DataFrame, ok: np.ndarray) -> float:
    """Mean ∂ln(detectable births)/∂ln J between neighbours on each critical nucleus's J
    ladder, over the pairs that contain a consistent law (NaN if none)."""
    lj = np.log(np.maximum(prof["J_per_e_per_A2"].to_numpy(float), 1e-300))
    la = np.log(np.maximum(prof["expected_births_detected"].to_numpy(float), 1e-6))
    slopes = [
        (la[j] - la[i]) / (lj[j] - lj[i])
        for _, g in prof.groupby("critical_nucleus")
        for i, j in zip(g.index[:-1], g.index[1:], strict=True)
        if (ok[i] or ok[j]) and lj[j] > lj[i]
    ]
    return float(np.mean(slopes)) if slopes else float("nan")


def nucleation_rate(
    n_births_detected: Any,
    templates: pd.DataFrame,
    *,
    dose_e_per_A2: float,
    n_detected: Any = None,
    count_efficiency: tuple[float, float] = (1.0, 1.0),
    level: float = 0.95,
    min_survival: float = MIN_SURVIVAL,
    tolerance: float = TOLERANCE,
    detector_band: tuple[float, float] = DETECTOR_BAND,
) -> NucleationRate:
    """Nucleation rate from detectable births, corrected for nuclei lost before detection.

    Parameters
    ----------
    n_births_detected : float or array_like
        Births of detectable clusters in the series (a count, or counts per frame that are
        summed): tracked births (``origin`` ``"nucleation"`` or ``"first_frame"`` of
        :func:`perovstem.insitu.track_clusters`) or :func:`detectable_births`.
    templates : DataFrame
        :func:`nucleation_templates` at the series' conditions, with a family of nucleation
        laws from coalescence-limited to sparse (:data:`SURVIVAL_LAWS`).
    dose_e_per_A2 : float
        Total dose of the series, e⁻/Å² (the window of the count).
    n_detected : array_like, optional
        Detected clusters per frame (``frames["n_clusters"]`` of
        :func:`perovstem.insitu.analyze_series`), same frames as the templates.  **Pass it
        for image data**: the count of births is only as good as the detector, and a
        detector that misses clusters (e.g. on the far faces of a thick crystal) makes a
        coalescence-limited series look sparse.  J is identifiable only if Σ n_detected /
        Σ expected detected clusters of the consistent laws lies in ``detector_band`` for
        one of them.  Omit only for detection-limited truth.  The check cannot see a
        detector that misses births and clusters in proportion.
    count_efficiency : (float, float)
        Range of counted births per detectable birth of the counting method: (1, 1) for
        :func:`detectable_births`; for tracked births on images it must be measured on
        simulated series of the same crystal size, dose and temperature (tracker
        spurious births > 1, clusters hidden in projection < 1).  The count is divided by
        its geometric mean, the interval uses its ends, and its spread
        ``u_e = (high − low)/(high + low)`` enters ``correction_uncertainty``.
    level : float
        Confidence level.
    min_survival : float
        Least template survival for which J is called identifiable (default 0.8:
        correction ≤ 25 %).
    tolerance : float
        Largest ``correction_uncertainty`` for which J is called identifiable (default
        0.1: J within ≈ 10 % of the realised births per dose).
    detector_band : (float, float)
        Accepted range of detected / expected clusters (default 0.7–1.3).

    Returns
    -------
    NucleationRate
        ``J = A / (ē·s̄·D)``, interval, survival range, identifiability.

    Notes
    -----
    Rate equations (Venables et al. 1984): every nucleus either grows by monomer capture to
    the detection limit, or meets another cluster first (coalescence).  Whether it survives
    depends on the nucleation density, not on J alone.  Where nucleation is sparse (low
    acceptance, a crystal large compared with the spacing of nuclei, adatoms slow near the
    233 K immobility threshold) nearly every nucleus is detected and the detectable births
    count J directly (elasticity ≈ 1); where nucleation is dense, most nuclei merge and the
    detectable births saturate at a coalescence-limited number (elasticity ≈ 0).  The
    templates (lattice KMC at the series' conditions with nucleation laws from the package
    default down to ×0.003 acceptance) give the survival ``s`` = detectable births / births
    of each law; the laws consistent with the observed count (over-dispersed Poisson) or
    bracketing it decide the regime: identifiable only when all of them have
    ``s ≥ min_survival`` and the correction is known within ``tolerance`` (survival spread
    of those laws and binomial scatter of the realised survival: with ≲ 25 detected births
    J is not known to 10 % even at s̄ = 0.95).  The estimate itself is the count (templates
    only correct it by ``1/s̄`` ≤ ``1/min_survival``), so the non-nucleation parameters
    shared with the truth (mobility, capture, coalescence: an inverse crime) enter only
    through ``s``.  The count itself must be right: the detector's completeness and the
    tracker's spurious births enter J one to one (``count_efficiency``).  On simulated
    images of 6–14 nm cubes the tracked births are 0.05–2.9 × the detectable births,
    depending on the law (clusters on the side and far faces hidden in projection, spurious
    births on sparse series), and the births and the detected cluster numbers shrink
    together, so the ``n_detected`` check does not catch it: with the measured efficiency
    range J is not identifiable from those images (benchmarks/bench_nucleation.py).
    """
    refuse_text_numbers(locals())
    a = np.asarray(n_births_detected, float)
    if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise DataError(f"`n_births_detected` must be counts >= 0, got {n_births_detected!r}")
    a_obs = float(a.sum())
    if not (np.isfinite(dose_e_per_A2) and dose_e_per_A2 > 0):
        raise ParameterError(f"`dose_e_per_A2` must be > 0 e⁻/Å², got {dose_e_per_A2}")
    if not 0 < level < 1:
        raise ParameterError(f"`level` must be in (0, 1), got {level}")
    if not 0 < min_survival <= 1:
        raise ParameterError(f"`min_survival` must be in (0, 1], got {min_survival}")
    if not tolerance > 0:
        raise ParameterError(f"`tolerance` must be > 0, got {tolerance}")
    e_lo, e_hi = (float(v) for v in count_efficiency)
    if not (np.isfinite(e_lo) and np.isfinite(e_hi) and 0 < e_lo <= e_hi):
        raise ParameterError(f"`count_efficiency` must be 0 < low <= high, got {count_efficiency}")
    e_mid = float(np.sqrt(e_lo * e_hi))
    prof = _law_table(templates)
    ok = _consistent(prof, a_obs / e_mid, level)
    prof["consistent"] = ok
    det_ratio, det_ok = _detector_check(prof, ok, n_detected, templates, detector_band)
    s = prof.loc[ok, "survival"].to_numpy(float)
    s_mean, s_min, s_max = float(s.mean()), float(s.min()), float(s.max())
    a_lo, a_hi = _garwood(a_obs, level)
    d = float(dose_e_per_A2)
    u_b = np.sqrt((1 - s_mean) / (s_mean * a_obs)) if a_obs > 0 else np.inf
    u_e = (e_hi - e_lo) / (e_hi + e_lo)
    u = float(np.sqrt(((s_max - s_min) / (s_max + s_min)) ** 2 + (2 * u_b) ** 2 + u_e**2))
    return NucleationRate(
        J_per_e_per_A2=a_obs / (e_mid * s_mean * d),
        ci_low=a_lo / (e_hi * d),
        ci_high=a_hi / (e_lo * max(s_min, 1e-9) * d),
        identifiable=bool(a_obs > 0 and s_min >= min_survival and u <= tolerance and det_ok),
        detector_ratio=det_ratio,
        survival=s_mean,
        survival_min=s_min,
        survival_max=s_max,
        correction_uncertainty=u,
        elasticity=_local_elasticity(prof, ok),
        n_births_detected=a_obs,
        dose_e_per_A2=d,
        level=level,
        profile=prof,
    )
