"""Characteristic Br-desorption dose D_Br from the exposed Br of a degrading nanocrystal.

The kinetic scheme of ``notes/physics_simulation.md`` §1.3 (and of
:func:`perovstem.simulate.degradation_kmc`, ``docs/kmc.md``) removes, in a frame of dose ΔD,
each *exposed* (surface) Br with probability 1 − exp(−ΔD/D_Br) and each bulk Br with
1 − exp(−f·ΔD/D_Br) (f = ``f_bulk`` ≈ 0.1); two Br lost reduce one Pb²⁺ to Pb⁰, whose site
empties and exposes the Br around it.  The total Br count is therefore *not* first order in
dose (the exposed fraction grows as Pb leaves):

    dN_Br/dD = −(N_exposed(D) + f·N_bulk(D)) / D_Br .

Given the Br lost per frame and the populations at risk, the maximum-likelihood estimate of
D_Br (Poisson counts of lost Br with mean ΔD·R/D_Br, R = N_exposed + f·N_bulk, trapezoid over
the frame) is D̂ = Σ_k ΔD_k·R̄_k / Σ_k ΔN_k (:func:`fit_br_desorption`).  Its interval is the
profile interval of the Poisson total, widened by the over-dispersion of the per-frame
increments (quasi-Poisson); for image-derived counts, whose errors are on the cumulative
level and do not accumulate, a Wald interval with Poisson + level variance; in both cases
widened by the spread between structural templates.

From images (:func:`br_loss_from_images`) neither N_exposed nor the Br lost can be counted
atom by atom (one Br adds only ≈ 0.0025 Å² to a column cross-section).  Instead:

* the **total cross-section** of the field of view, S_k = Σ(counts − background)/(gain·ΔD_k)
  (Å², E et al., Ultramicroscopy 133, 109 (2013)), is measured per frame — it is precise
  (10⁵–10⁶ detected electrons per frame) and includes the Pb⁰ adatoms and clusters;
* a **structural template** — the lattice scheme above run on a crystal of the measured
  size (lateral size from the segmented outline, thickness from S_intact) with the package's
  lattice KMC (:func:`perovstem.simulate.degradation_kmc`) at a *nominal* D_Br — gives, as a
  function of the number of Br lost n, the exposed and bulk Br and the total cross-section
  S(n) computed from the SCS library (:mod:`perovstem.simulate.scs`, the abTEM-calibrated
  tables a user would have; it accounts for the channelling of the host columns, for Pb
  moving from Pb–Br columns to Pb⁰ clusters — 2 Br per Pb⁰ — and for the Cs that leaves).
  The sequence of states against n does not depend on D_Br or on the dose rate (every
  desorption rate scales with 1/D_Br), so the template fixes the *structure*, never the
  parameter;
* S_k → n_k by inverting S(n) on ratios S_k/S_intact (gain and dose calibration cancel),
  then N_exposed and N_bulk from the template at n_k.  S_intact (before the first frame) is
  refined so that the first three frames follow the template's own curve n(D); a second
  pass reruns the templates at the first D̂ with the series' frame time and dose, so that
  the Pb⁰ (adatoms vs clusters, different SCS per atom) evolve as in the series.  Frames
  after the host is gone (no bulk Br left in the template, S(n) flat) are not used.

Validation (``docs/insitu.md``): KMC series of 4–6 nm cubes at 1.5·10³–10⁴ e⁻/Å²/s, 4 seeds:
35 of 36 within 10 % of D_Br, CIs cover in 33 of 36.

Assumptions (stated, not tested against real data): a cuboid crystal of the host lattice in
[001] with CsBr termination, the notes' surface/bulk rule with a known f, and the whole
crystal and all Pb⁰ inside the field of view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from perovstem._data import voltage_kV_of
from perovstem._robust import robust_sd
from perovstem._validation import as_rng, check_positive, check_range, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "BrLossResult",
    "fit_br_desorption",
    "pool_br_desorption",
    "br_structure_template",
    "br_loss_from_images",
]

#: facet terminations of the structural templates (``simulate.nanocrystal``)
TERMINATIONS = ("CsBr", "PbBr2")

#: outline excess of the segmented projected area, in cells: √A/a − m for an m-cell crystal
#: (m·a the distance between the outermost A-site (CsBr) or B-site (PbBr2) column rows).
#: The outermost columns' image (probe and atom blur) widens the outline; bright Pb–Br
#: rows widen it more than Cs–Br rows.  Measured on 30/40/50 Å cubes, 2 seeds, 0.3/0.5/
#: 0.8 Å pixels: CsBr +0.16…+0.34, PbBr2 +0.62…+0.76 (rounding √A/a alone put a 7-cell
#: PbBr2 crystal at 8 cells, and the thickness from S_intact then at 5–6: D_Br −17…+18 %)
_OUTLINE_EXCESS_CELLS = {"CsBr": 0.25, "PbBr2": 0.69}


@dataclass
class BrLossResult:
    """Result of :func:`fit_br_desorption` / :func:`br_loss_from_images`.

    Attributes
    ----------
    D_Br_e_per_A2 : float
        Characteristic desorption dose of exposed Br, e⁻/Å² (1/σ_Br).
    ci_low, ci_high : float
        Confidence interval of D_Br at ``level``, e⁻/Å².
    level : float
    n_lost : float
        Total Br lost over the fitted frames.
    exposure_e_per_A2 : float
        Σ ΔD·(N_exposed + f·N_bulk), Br·e⁻/Å².
    dispersion : float
        Quasi-Poisson dispersion of the per-frame increments (≥ 1).
    f_bulk : float
    frames : DataFrame
        Per frame: ``dose_e_per_A2, n_lost, n_exposed, n_bulk, at_risk, expected_lost``
        (+ ``total_scs_A2`` from images).
    info : dict
        Extra diagnostics (template choice, per-template estimates, ...).
    """

    D_Br_e_per_A2: float
    ci_low: float
    ci_high: float
    level: float
    n_lost: float
    exposure_e_per_A2: float
    dispersion: float
    f_bulk: float
    frames: pd.DataFrame
    info: dict = field(default_factory=dict)

    def frame_columns(self) -> pd.DataFrame:
        """Per-frame columns for :func:`perovstem.quantify.mechanism_summary`.

        ``frame, n_Br_lost_image`` (cumulative Br lost at the end of the frame),
        ``n_Br_exposed_image, n_Br_bulk_image`` (at the end of the frame),
        ``n_Br_lost_image_sd`` (measurement sd of the cumulative loss, NaN if not estimated),
        ``D_Br_template_rel_sd`` (relative spread of the structural templates' estimates,
        which the interval includes) and ``f_bulk``; merge on ``frame`` into the analysis'
        frame table.
        """
        fr = self.frames
        cum = (
            fr["n_lost_cumulative"].to_numpy(float)
            if "n_lost_cumulative" in fr
            else np.cumsum(fr["n_lost"].to_numpy(float))
        )
        return pd.DataFrame(
            {
                "frame": np.arange(len(fr)),
                "n_Br_lost_image": cum,
                "n_Br_exposed_image": fr["n_exposed"].to_numpy(float),
                "n_Br_bulk_image": fr["n_bulk"].to_numpy(float),
                "n_Br_lost_image_sd": float(self.info.get("level_sd_Br", np.nan)),
                "D_Br_template_rel_sd": float(self.info.get("template_rel_sd", np.nan)),
                "f_bulk": self.f_bulk,
            }
        )

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the confidence interval."""
        return bool(self.ci_low <= value <= self.ci_high)


def _arr(name: str, v: Any, n: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DataError(f"`{name}` must be numeric, got {type(v).__name__}") from None
    if n is not None and a.size != n:
        raise DataError(f"`{name}` must have {n} values, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"`{name}` has non-finite values")
    return a


def _dispersion(dn: np.ndarray, mu: np.ndarray) -> float:
    """Quasi-Poisson dispersion φ = max(1, Σ(ΔN − μ)²/μ / (K − 1)) of per-frame losses."""
    use = mu > 0
    dof = max(int(use.sum()) - 1, 1)
    phi = float(np.sum((dn[use] - mu[use]) ** 2 / mu[use]) / dof) if use.sum() > 1 else 1.0
    return max(phi, 1.0)


def _d_br_interval(
    E: float, tot: float, phi: float, level: float, sd2: float | None, extra_rel_var: float
) -> tuple[float, float]:
    """Interval of D̂ = E/ΣΔN (E the exposure Σ ΔD·R̄): the quasi-Poisson profile of the total (``sd2`` None) or the
    Wald interval of log D̂ with variance ΣΔN + ``sd2`` (level errors), widened by
    ``extra_rel_var`` on the log scale."""
    z = stats.norm.ppf(0.5 + level / 2)
    D = E / tot
    if sd2 is not None:
        s_log = np.sqrt(tot + sd2) / tot
        lo, hi = D * np.exp(-z * s_log), D * np.exp(z * s_log)
    else:
        # profile interval of the Poisson total N ~ Poisson(E/D) with dispersion φ:
        # deviance 2φ⁻¹[N log(N/m) − (N − m)] = χ²₁(level), m = E/D
        q = stats.chi2.ppf(level, 1)

        def dev(m: float) -> float:
            return 2.0 / phi * (tot * np.log(tot / m) - (tot - m)) - q

        # widen the brackets until the deviance crosses: with a large dispersion (image
        # losses that are negative in some frames) the fixed ones held no root (brentq's
        # ValueError); no crossing above m → 0 leaves D_Br unbounded above (hi = inf)
        a, b = tot * 1e-6, tot * 10 + 100
        while dev(a) < 0 and a > 1e-280:
            a *= 1e-6
        while dev(b) < 0 and b < 1e280:
            b *= 10.0
        m_lo = optimize.brentq(dev, a, tot) if dev(a) > 0 else 0.0
        m_hi = optimize.brentq(dev, tot, b)
        lo, hi = E / m_hi, (E / m_lo if m_lo > 0 else np.inf)
    if extra_rel_var > 0:
        s_stat = (np.log(hi) - np.log(lo)) / (2 * z)
        s = np.hypot(s_stat, np.sqrt(extra_rel_var))
        lo, hi = D * np.exp(-z * s), D * np.exp(z * s)
    return float(lo), float(hi)


def fit_br_desorption(
    dose_e_per_A2: Any,
    n_lost: Any,
    n_exposed: Any,
    n_bulk: Any = None,
    *,
    f_bulk: float = 0.1,
    level: float = 0.95,
    extra_rel_var: float = 0.0,
    level_sd: float | None = None,
) -> BrLossResult:
    """Maximum-likelihood D_Br from Br lost per frame and the Br at risk (notes §1.3).

    Model: the Br lost in frame k is Poisson with mean ΔD_k·R̄_k/D_Br, where
    R = N_exposed + f·N_bulk and R̄_k = (R_{k} + R_{k+1})/2 averages the states before and
    after the frame.  D̂ = Σ ΔD_k R̄_k / Σ ΔN_k.

    Parameters
    ----------
    dose_e_per_A2 : (K,) array_like
        Dose of each frame, e⁻/Å² (> 0).
    n_lost : (K,) array_like
        Br lost during each frame (may be non-integer and noisy when derived from images).
    n_exposed : (K + 1,) array_like
        Exposed (surface) Br before the first frame and at the end of each frame.
    n_bulk : (K + 1,) array_like, optional
        Bulk Br at the same instants (default: no bulk term).
    f_bulk : float
        Bulk/surface desorption ratio f (notes §1.3: 0.1).
    level : float
        Confidence level of the interval.
    extra_rel_var : float
        Additional relative variance of D̂ (e.g. the spread of structural templates), added
        in quadrature on the log scale.
    level_sd : float, optional
        Measurement error (sd, Br atoms) of the *cumulative* Br lost at any frame, e.g. from
        image intensities.  Such errors do not accumulate: the total ΣΔN telescopes, so its
        variance is ΣΔN (Poisson) + 2·level_sd² (first and last level), and the interval is
        the Wald interval of log D̂ with that variance.  Default: the per-frame counts are
        exact up to Poisson noise and the quasi-Poisson profile interval is used.

    Returns
    -------
    BrLossResult

    Notes
    -----
    The interval is the profile-likelihood (χ²₁) interval of the Poisson total ΣΔN scaled by
    the quasi-Poisson dispersion φ = max(1, Σ(ΔN_k − μ_k)²/μ_k/(K − 1)), with μ_k the fitted
    means (McCullagh & Nelder, *Generalized Linear Models*, 2nd ed., §4.5), then widened by
    ``extra_rel_var``.
    """
    refuse_text_numbers(locals())
    d = _arr("dose_e_per_A2", dose_e_per_A2)
    K = d.size
    if K < 1:
        raise DataError("need at least one frame")
    if np.any(d <= 0):
        raise DataError(f"`dose_e_per_A2` must be > 0 in every frame, got {d[d <= 0][:3]!r}")
    dn = _arr("n_lost", n_lost, K)
    ne = _arr("n_exposed", n_exposed, K + 1)
    nb = np.zeros(K + 1) if n_bulk is None else _arr("n_bulk", n_bulk, K + 1)
    check_range("f_bulk", f_bulk, 0.0, 1.0)
    if not 0.0 < float(level) < 1.0:
        raise ParameterError(f"`level` must be in (0, 1), got {level!r}")
    check_positive("extra_rel_var", extra_rel_var, allow_zero=True)
    if np.any(ne < 0) or np.any(nb < 0):
        raise DataError("`n_exposed` and `n_bulk` must be >= 0")
    risk = ne + f_bulk * nb
    rbar = 0.5 * (risk[:-1] + risk[1:])
    expo = d * rbar
    tot = float(dn.sum())
    E = float(expo.sum())
    if tot <= 0 or E <= 0:
        raise DataError(f"no Br lost (Σ n_lost = {tot:.3g}) or nothing at risk: D_Br is unbounded")
    D = E / tot
    mu = expo / D
    phi = _dispersion(dn, mu)
    sd2 = None
    if level_sd is not None:
        sd2 = 2.0 * check_positive("level_sd", level_sd, allow_zero=True) ** 2
    lo, hi = _d_br_interval(E, tot, phi, level, sd2, extra_rel_var)
    frames = pd.DataFrame(
        {
            "dose_e_per_A2": d,
            "n_lost": dn,
            "n_exposed": ne[1:],
            "n_bulk": nb[1:],
            "at_risk": risk[1:],
            "expected_lost": mu,
        }
    )
    return BrLossResult(
        D_Br_e_per_A2=D,
        ci_low=float(lo),
        ci_high=float(hi),
        level=level,
        n_lost=tot,
        exposure_e_per_A2=E,
        dispersion=phi,
        f_bulk=float(f_bulk),
        frames=frames,
    )


def pool_br_desorption(
    fits: Sequence[BrLossResult],
    *,
    level: float = 0.95,
    level_sd: Sequence[float | None] | None = None,
    extra_rel_var: float = 0.0,
) -> BrLossResult:
    """One D_Br from several crystals (fields) of one condition.

    Each field's frames are Poisson-independent given its own Br at risk, so the joint
    maximum-likelihood estimate of the shared D_Br is D̂ = Σ_fields E / Σ_fields ΣΔN (the
    exposures and losses of :func:`fit_br_desorption`, one fit per field); the interval is
    that function's, on the pooled totals: the quasi-Poisson profile with the dispersion of
    all frames around the pooled fit, or, with measured level errors (``level_sd``, one per
    field), the Wald interval of log D̂ with variance ΣΔN + 2·Σ sd².  ``extra_rel_var`` (a
    systematic relative variance such as the structural templates' spread) is not divided
    among the fields: give the fields' common value (the templates are the same).

    Parameters
    ----------
    fits : sequence of BrLossResult
        :func:`fit_br_desorption` of each field, all with the same ``f_bulk``.
    level : float
        Confidence level.
    level_sd : sequence of float or None, optional
        Each field's measurement sd of its cumulative Br lost (None or NaN: not measured;
        then all must be, and the profile interval is used).
    extra_rel_var : float
        Additional relative variance of D̂, added in quadrature on the log scale.

    Returns
    -------
    BrLossResult
        Pooled; ``frames`` holds every field's frames (column ``field``, 0-based) with the
        expected losses under the pooled D̂; ``info['fields']`` the number of fields.
    """
    refuse_text_numbers(locals())
    fits = list(fits)
    if not fits or not all(isinstance(f, BrLossResult) for f in fits):
        raise DataError("`fits` must be one or more BrLossResult (fit_br_desorption per field)")
    if not 0.0 < float(level) < 1.0:
        raise ParameterError(f"`level` must be in (0, 1), got {level!r}")
    check_positive("extra_rel_var", extra_rel_var, allow_zero=True)
    f_bulk = {f.f_bulk for f in fits}
    if len(f_bulk) > 1:
        raise DataError(f"the fields' fits have different f_bulk {sorted(f_bulk)}: pool alike")
    sds = [None] * len(fits) if level_sd is None else list(level_sd)
    if len(sds) != len(fits):
        raise ParameterError(f"`level_sd` has {len(sds)} entries for {len(fits)} fits")
    given = [v is not None and np.isfinite(float(v)) for v in sds]
    if any(given) and not all(given):
        raise DataError("`level_sd`: give every field's level error or none")
    tot = float(sum(f.n_lost for f in fits))
    E = float(sum(f.exposure_e_per_A2 for f in fits))
    if tot <= 0 or E <= 0:
        raise DataError(f"no Br lost (Σ n_lost = {tot:.3g}) or nothing at risk: D_Br is unbounded")
    D = E / tot
    frames = pd.concat([f.frames.assign(field=i) for i, f in enumerate(fits)], ignore_index=True)
    # each field's expected losses under its own D, rescaled to the pooled D
    per_field_d = np.repeat([f.D_Br_e_per_A2 for f in fits], [len(f.frames) for f in fits])
    mu = frames["expected_lost"].to_numpy(float) * per_field_d / D
    frames["expected_lost"] = mu
    phi = _dispersion(frames["n_lost"].to_numpy(float), mu)
    sd2 = 2.0 * float(sum(float(v) ** 2 for v in sds)) if all(given) else None
    lo, hi = _d_br_interval(E, tot, phi, level, sd2, extra_rel_var)
    return BrLossResult(
        D_Br_e_per_A2=D,
        ci_low=lo,
        ci_high=hi,
        level=level,
        n_lost=tot,
        exposure_e_per_A2=E,
        dispersion=phi,
        f_bulk=fits[0].f_bulk,
        frames=frames,
        info={"fields": len(fits)},
    )


def _total_scs(
    atoms: Any, voltage_kV: float, detector_mrad: tuple[float, float] = (65.0, 200.0)
) -> float:
    from perovstem.simulate.columns import project_columns
    from perovstem.simulate.scs import column_scs

    cols, _ = project_columns(atoms)
    return float(
        column_scs(
            cols["n_Pb"] - cols["n_Pb0"],
            cols["n_Cd"],
            cols["n_Br"],
            cols["n_Cs"],
            cols["n_Pb0"],
            voltage_kV=voltage_kV,
            detector_mrad=detector_mrad,
        ).sum()
    )


def br_structure_template(
    edge_A: Any,
    *,
    f_bulk: float = 0.1,
    temperature_K: float = 300.0,
    voltage_kV: float = 300.0,
    n_frames: int = 48,
    D_Br_e_per_A2: float = 1.0,
    dose_per_frame_e_per_A2: float | None = None,
    frame_time_s: float = 1.0,
    cd_fraction: float = 0.0,
    termination: str = "CsBr",
    rng: Any = None,
    detector_mrad: tuple[float, float] = (65.0, 200.0),
) -> pd.DataFrame:
    """Exposed/bulk Br and total cross-section against the number of Br lost.

    Runs the notes' lattice scheme (:func:`perovstem.simulate.degradation_kmc`) on a
    CsBr-terminated crystal of edges ``edge_A`` and records every state.  The sequence of
    host states against the number of Br lost does not depend on D_Br or the dose rate
    (every desorption rate scales with 1/D_Br); only where the Pb⁰ sits (adatoms, cluster
    sizes, hence their cross-section) depends on the time per Br lost, so a second pass can
    run the template at a first estimate of D_Br, the series' frame time and dose.  The
    total SCS uses the library of :mod:`perovstem.simulate.scs`.

    Parameters
    ----------
    edge_A : float or (3,) floats
        Crystal edges (x, y, z), Å (z along the beam).
    f_bulk : float
        Bulk/surface desorption ratio.
    temperature_K : float
        Temperature, K (Pb⁰ mobility).
    voltage_kV : float
        Beam energy of the SCS library, kV.
    n_frames : int
        Template states.
    D_Br_e_per_A2 : float
        Desorption dose used to run the template, e⁻/Å².
    dose_per_frame_e_per_A2 : float, optional
        Dose per template frame, e⁻/Å² (default 0.06·D_Br).
    frame_time_s : float
        Template frame time, s.
    cd_fraction : float
        Cd fraction x on the Pb sites of the template crystal (CsCd_xPb_{1-x}Br3).
    termination : {"CsBr", "PbBr2"}
        Outer layer of every {100} facet of the template crystal.
    rng : None, int or Generator
    detector_mrad : (inner, outer)
        Annular detector of the SCS library (one of
        :data:`perovstem.simulate.scs.DETECTORS_MRAD`).

    Returns
    -------
    DataFrame
        ``n_lost, n_exposed, n_bulk, n_Br, total_scs_A2`` (first row: intact crystal).
    """
    refuse_text_numbers(locals())
    from perovstem.simulate import KineticParameters, degradation_kmc, nanocrystal

    check_range("f_bulk", f_bulk, 0.0, 1.0)
    check_range("cd_fraction", cd_fraction, 0.0, 1.0)
    _check_termination(termination)
    if int(n_frames) < 2:
        raise ParameterError(f"`n_frames` must be >= 2, got {n_frames!r}")
    d_br = check_positive("D_Br_e_per_A2", D_Br_e_per_A2)
    dt = check_positive("frame_time_s", frame_time_s)
    dpf = 0.06 * d_br if dose_per_frame_e_per_A2 is None else dose_per_frame_e_per_A2
    dpf = check_positive("dose_per_frame_e_per_A2", dpf)
    gen = as_rng(rng)
    params = KineticParameters(
        D_Br_e_per_A2=d_br,
        bulk_to_surface_ratio=float(f_bulk),
        enable_thermal_desorption=False,
    )
    crystal = nanocrystal(
        edge_A,
        shape="cuboid" if np.ndim(edge_A) else "cube",
        cd_fraction=float(cd_fraction),
        termination=termination,
        rng=int(gen.integers(0, 2**31)),
    )
    tr = degradation_kmc(
        crystal,
        n_frames=int(n_frames),
        frame_time_s=dt,
        dose_rate_e_per_A2_s=dpf / dt,
        temperature_K=float(temperature_K),
        params=params,
        rng=int(gen.integers(0, 2**31)),
    )
    ft = tr.frame_table
    ini = ft.attrs["initial"]
    n_br = np.r_[ini["n_Br"], ft["n_Br"].to_numpy()]
    n_s = np.r_[ini["n_Br_surface"], ft["n_Br_surface"].to_numpy()]
    scs = [_total_scs(tr.initial_atoms(), voltage_kV, detector_mrad)]
    scs += [_total_scs(tr.atoms(k), voltage_kV, detector_mrad) for k in range(len(ft))]
    return pd.DataFrame(
        {
            "n_lost": n_br[0] - n_br,
            "n_exposed": n_s,
            "n_bulk": n_br - n_s,
            "n_Br": n_br,
            "total_scs_A2": np.asarray(scs),
        }
    )


def _check_termination(termination: Any) -> None:
    if termination not in TERMINATIONS:
        raise ParameterError(f"`termination` must be one of {TERMINATIONS}, got {termination!r}")


def _frame_scs(fr: np.ndarray, dose: float, gain: float, offset: float, border: int) -> float:
    f = (np.asarray(fr, float) - offset) / gain
    edge = np.concatenate(
        [f[:border].ravel(), f[-border:].ravel(), f[:, :border].ravel(), f[:, -border:].ravel()]
    )
    bg = float(np.median(edge))
    return float((f - bg).sum()) / dose


def br_loss_from_images(
    series: Any,
    *,
    f_bulk: float = 0.1,
    level: float = 0.95,
    lattice_A: float = 5.87,
    n_templates: int = 3,
    voltage_kV: float | None = None,
    temperature_K: float | None = None,
    border_px: int = 4,
    two_pass: bool = True,
    cd_fraction: float = 0.0,
    termination: str = "CsBr",
    rng: Any = 0,
) -> BrLossResult:
    """D_Br of an imaged in-situ series from the total cross-section and a structural template.

    Parameters
    ----------
    series : Series
        HAADF frames with the dose of every frame (e⁻/Å²) and ``metadata['gain']`` /
        ``['offset']`` (detector counts per electron and dark level; 1 and 0 if absent).
        The crystal and its Pb⁰ must stay in the field of view; its border is vacuum/support
        (used as background).
    f_bulk : float
        Bulk/surface desorption ratio of the scheme (notes §1.3: 0.1).
    level : float
        Confidence level.
    lattice_A : float
        Host lattice spacing, Å (crystal size in cells).
    n_templates : int
        Independent structural templates (different random sequences); their spread enters
        the interval.
    voltage_kV : float, optional
        Beam energy (default the series' ``metadata['voltage_kV']`` or
        ``['high_tension_kV']``, else 300).
    temperature_K : float, optional
        Template temperature (default: the series' median or 300 K).
    border_px : int
        Width of the frame border used for the background, pixels.
    two_pass : bool
        Re-run the templates at the first estimate of D_Br with the series' frame time and
        dose per frame, so that the Pb⁰ (adatoms vs clusters, whose cross-section per atom
        differs) evolve as in the series; the host structure is unaffected.
    cd_fraction : float
        Cd fraction x of a CsCd_xPb_{1-x}Br3 crystal (known from the synthesis or measured
        with :func:`perovstem.atoms.composition`); the templates and the thickness estimate
        use it.  A pure-CsPbBr3 template on an x = 0.2 crystal overestimates D_Br by 25–70 %.
    termination : {"CsBr", "PbBr2"}
        Outer layer of the crystal's {100} facets (templates and thickness estimate).  The
        exposed Br, hence the Br at risk per Br lost, depends on it: a CsBr template on
        PbBr2-terminated crystals gave D_Br 20–30 % high (4–5 nm cubes).  Not measured from
        the images.
    rng : None, int or Generator
        Seeds of the templates.

    Returns
    -------
    BrLossResult
        ``frames`` (the frames used: ``info['n_frames_used']``) also holds
        ``total_scs_A2`` (measured) and ``n_lost_cumulative``; ``info`` the crystal size in
        cells (lateral from the outline of frame 0, thickness from S_intact), the intact
        cross-section, the first-pass and per-template estimates, their relative spread and
        the level noise of the Br lost (``level_sd_Br``).

    Raises
    ------
    ParameterError
        ``series`` is not a Series, has no dose, or ``n_templates`` < 1.
    DataError
        A dose ≤ 0, or no crystal in the first frame.
    """
    refuse_text_numbers(locals())
    from perovstem._data import Series
    from perovstem.insitu._frames import iter_frames
    from perovstem.insitu.nanocrystal import segment_nanocrystal

    if not isinstance(series, Series):
        raise ParameterError(f"`series` must be a perovstem Series, got {type(series).__name__}")
    if series.dose_e_per_A2 is None:
        raise ParameterError("`series` needs the dose of every frame (use assign_dose)")
    if int(n_templates) < 1:
        raise ParameterError(f"`n_templates` must be >= 1, got {n_templates!r}")
    check_range("cd_fraction", cd_fraction, 0.0, 1.0)
    _check_termination(termination)
    dose = np.broadcast_to(np.asarray(series.dose_e_per_A2, float), (series.n_frames,))
    if np.any(dose <= 0):
        raise DataError(f"dose per frame must be > 0, got {dose[dose <= 0][:3]!r}")
    md = series.metadata
    gain = float(md.get("gain") or 1.0)
    offset = float(md.get("offset") or 0.0)
    kv = float(voltage_kV if voltage_kV is not None else (voltage_kV_of(md) or 300.0))
    from perovstem.atoms._conditions import library_detector

    if temperature_K is None:
        t = getattr(series, "temperature_K", None)
        temperature_K = float(np.nanmedian(t)) if t is not None else 300.0
    px = series.pixel_size_A
    S = np.empty(series.n_frames)
    area0 = np.nan
    for k, fr in iter_frames(series):
        S[k] = _frame_scs(fr, float(dose[k]), gain, offset, int(border_px))
        if k == 0:
            cm, voids, _ = segment_nanocrystal(
                np.asarray(fr, float), pixel_size_A=px, lattice_A=lattice_A
            )
            area0 = float((cm & ~voids).sum()) * px * px
    if not np.isfinite(area0) or area0 <= 0:
        raise DataError("no crystal found in the first frame")
    # lateral size: the outline of an m-cell crystal spans m·a plus the outermost rows'
    # image (measured area of simulated cubes: √A/a = m + _OUTLINE_EXCESS_CELLS)
    m_xy = max(2, int(np.rint(np.sqrt(area0) / lattice_A - _OUTLINE_EXCESS_CELLS[termination])))
    # thickness: the number of cells whose intact-crystal SCS matches S_intact (library)
    from perovstem.simulate import nanocrystal

    def s_intact(mz: int) -> float:
        return _total_scs(
            nanocrystal(
                (m_xy * lattice_A, m_xy * lattice_A, mz * lattice_A),
                shape="cuboid",
                cd_fraction=float(cd_fraction),
                termination=termination,
                rng=0,
            ),
            kv,
        )

    # intact cross-section (before frame 0): first guess, the linear extrapolation of the
    # first three frames to zero dose; then refined with the model (below)
    x = np.cumsum(dose)  # cumulative dose at the end of each frame (pristine at x = 0)
    n_ref = min(3, len(S))
    if n_ref >= 2:
        s_ref = float(np.polyval(np.polyfit(x[:n_ref], S[:n_ref], 1), 0.0))
    else:
        s_ref = float(S[0])

    def thickness(s_int: float) -> int:
        cand = np.arange(2, 3 * m_xy + 1)
        lo_i, hi_i = 0, len(cand) - 1
        while hi_i - lo_i > 1:  # S_intact increases with thickness
            mid = (lo_i + hi_i) // 2
            if s_intact(int(cand[mid])) < s_int:
                lo_i = mid
            else:
                hi_i = mid
        return int(min(cand[[lo_i, hi_i]], key=lambda m: abs(s_intact(int(m)) - s_int)))

    gen = as_rng(rng)
    dt = np.diff(np.asarray(series.time_s, float)) if series.time_s is not None else []
    frame_time = float(np.median(dt)) if len(dt) and np.all(np.isfinite(dt)) else 1.0
    frame_time = frame_time if frame_time > 0 else 1.0
    seeds = gen.integers(0, 2**31, size=int(n_templates))

    def map_template(tpl: pd.DataFrame, s_ref0: float) -> tuple:
        """Br lost per frame from S_k with this template; the intact S is refined so that
        the first frames follow the template's own hazard curve n(D) (dn/dD = R(n)/D_Br)."""
        s_t = np.minimum.accumulate(tpl["total_scs_A2"].to_numpy())
        r_t = s_t / s_t[0]
        n_t = tpl["n_lost"].to_numpy(float)
        ne_t = tpl["n_exposed"].to_numpy(float)
        nb_t = tpl["n_bulk"].to_numpy(float)
        r_risk = np.maximum(ne_t + f_bulk * nb_t, 1e-9)
        g_t = np.r_[0.0, np.cumsum(np.diff(n_t) * 0.5 * (1 / r_risk[1:] + 1 / r_risk[:-1]))]
        # once the host is gone (no bulk Br left) S(n) is flat and depends on where the Pb⁰
        # sits: only frames before that point are used
        gone = np.flatnonzero(nb_t <= 0.05 * max(nb_t[0], 1.0))
        n_knee = float(n_t[gone[0]]) if len(gone) else np.inf
        s_r = s_ref0
        for _it in range(4):
            n_cum = np.interp(-S / s_r, -r_t, n_t)  # not forced monotone: noise must not bias
            past = np.flatnonzero(n_cum > n_knee)
            k_use = max(int(past[0]) if len(past) else len(S), min(3, len(S)))
            n_all = np.r_[0.0, n_cum[:k_use]]
            ne = np.interp(n_all, n_t, ne_t)
            nb = np.interp(n_all, n_t, nb_t)
            f = fit_br_desorption(dose[:k_use], np.diff(n_all), ne, nb, f_bulk=f_bulk, level=level)
            n_mod = np.interp(x[:n_ref] / f.D_Br_e_per_A2, g_t, n_t)
            s_r = float(np.mean(S[:n_ref] / np.interp(n_mod, n_t, r_t)))
        return f.D_Br_e_per_A2, n_all, ne, nb, s_r, k_use

    def one_pass(d_run: float | None, edges: tuple, s_ref0: float) -> tuple:
        out = []
        for sd in seeds:
            if d_run is None:  # pass 1: nominal template (structure only)
                kw: dict[str, Any] = {"n_frames": 48}
            else:  # pass 2: the series' own time per Br lost (Pb⁰ clustering)
                kw = {
                    "n_frames": max(2 * len(S), 24),
                    "D_Br_e_per_A2": d_run,
                    "dose_per_frame_e_per_A2": float(np.median(dose)),
                    "frame_time_s": frame_time,
                }
            tpl = br_structure_template(
                edges,
                f_bulk=f_bulk,
                temperature_K=temperature_K,
                voltage_kV=kv,
                cd_fraction=cd_fraction,
                termination=termination,
                rng=sd,
                detector_mrad=library_detector(md),
                **kw,
            )
            out.append(map_template(tpl, s_ref0))
        return [list(v) for v in zip(*out, strict=True)]

    m_z = thickness(s_ref)
    edges = (m_xy * lattice_A, m_xy * lattice_A, m_z * lattice_A)
    ests, n_cums, nes, nbs, srefs, kus = one_pass(None, edges, s_ref)
    d_first = float(np.exp(np.mean(np.log(ests))))
    if two_pass:
        s_ref = float(np.mean(srefs))
        ests, n_cums, nes, nbs, srefs, kus = one_pass(d_first, edges, s_ref)
    s_ref = float(np.mean(srefs))
    ref_var_factor = 1.0 / n_ref
    # measurement noise of the cumulative loss: robust sd of the second differences of the
    # raw levels (var(Δ²n) = 6σ² for independent level errors; the smooth trend adds little)
    k_use = int(min(kus))
    n_cums = [v[: k_use + 1] for v in n_cums]
    nes = [v[: k_use + 1] for v in nes]
    nbs = [v[: k_use + 1] for v in nbs]
    n_raw = np.mean(n_cums, axis=0)[1:]
    if len(n_raw) >= 4:
        d2 = np.diff(n_raw, 2)
        sig = float(robust_sd(d2) / np.sqrt(6.0))
    else:
        sig = 0.0
    # the last level has error σ, the intact reference (mean of the first three frames
    # along the model curve) ≈ σ/√3: pass the rms of the two
    level_sd = sig * np.sqrt((1.0 + ref_var_factor) / 2.0)
    ests_a = np.asarray(ests)
    rel_var = float(np.var(np.log(ests_a), ddof=1)) if len(ests_a) > 1 else 0.0
    n_all = np.mean(n_cums, axis=0)
    # combined fit: mean template populations; template spread as extra variance
    res = fit_br_desorption(
        dose[:k_use],
        np.diff(n_all),
        np.mean(nes, axis=0),
        np.mean(nbs, axis=0),
        f_bulk=f_bulk,
        level=level,
        extra_rel_var=rel_var,
        level_sd=level_sd,
    )
    res.frames["total_scs_A2"] = S[:k_use]
    res.frames["n_lost_cumulative"] = n_all[1:]
    res.info.update(
        {
            "cells": (m_xy, m_xy, m_z),
            "projected_area_A2": area0,
            "intact_scs_A2": s_ref,
            "template_estimates": ests_a.tolist(),
            "first_pass_D_Br_e_per_A2": d_first,
            "template_rel_sd": float(np.sqrt(rel_var)),
            "level_sd_Br": sig,
            "n_frames_used": k_use,
            "voltage_kV": kv,
            "termination": termination,
            "scs_library": "perovstem.simulate.scs (abTEM-calibrated tables)",
        }
    )
    return res
