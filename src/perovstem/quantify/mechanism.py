"""Mechanism summary: which kinetic model describes each degradation process, per condition.

For every condition (temperature, dose rate, atmosphere) the candidate models of each process
observed in a per-frame table are fitted and ranked (:func:`compare_models`, AICc), and the
selected model's key parameter is reported with its confidence interval.  With cluster
tracks, the Pb⁰-cluster hop rate Γ₁ of each condition is measured
(:func:`perovstem.quantify.mobility.cluster_hop_rate`).  Across conditions the nucleation
rate is tested for dose-rate control (:func:`fit_dose_rate_dependence`) and thermal
activation, and the hop rates give the activation energy of Pb⁰ diffusion
(:func:`fit_arrhenius`).  Every value comes from the table it is given: pass image-derived
tables (e.g. :func:`perovstem.insitu.analyze_series`) for image-derived mechanisms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from perovstem._validation import check_choice, refuse_text_numbers
from perovstem.errors import DataError, ParameterError, PerovstemError
from perovstem.quantify.kinetics import (
    compare_models,
    fit_arrhenius,
    fit_dose_rate_dependence,
)

__all__ = ["mechanism_summary", "arrhenius_hop_rates", "summary_lines", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = [
    "condition",
    "temperature_K",
    "dose_rate_e_per_A2_s",
    "gas",
    "process",
    "observable",
    "selected_model",
    "mechanism",
    "weight",
    "delta_next",
    "param",
    "value",
    "ci_low",
    "ci_high",
    "n_points",
    "text",
]

# How far a condition value may stray and still be the same condition: a logged holder
# temperature fluctuates by tenths of a kelvin and frame time stamps jitter by milliseconds
# (a per-frame dose rate D/Δt then differs in the 4th digit), so exact values would make every
# frame of one series its own condition.  ("abs", K) or ("rel", fraction).
CONDITION_TOLERANCE = {"temperature_K": ("abs", 2.0), "dose_rate_e_per_A2_s": ("rel", 0.10)}


def _condition_levels(values: np.ndarray, kind: str, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Group the finite ``values`` into levels no wider than ``tol`` (no chaining along a
    ramp): the sorted values are split at their largest gap until every level fits
    (``"rel"``: on a log scale, ``max <= min·(1 + tol)``).  Returns ``(level starts, level
    medians)``.  Levels counted from the lowest value made grouping depend on the other
    series: 271.9 K went with 270.0 K, not with 272.1 K."""
    v = np.unique(values[np.isfinite(values)])
    if kind == "rel":
        pos = v > 0  # (zero and negative values: each its own level)
        w = np.where(pos, np.log(np.where(pos, v, 1.0)), np.nan)
        width = float(np.log1p(tol))
    else:
        pos = np.ones(v.size, bool)
        w, width = v, float(tol)
    bounds: list[tuple[int, int]] = [(i, i + 1) for i in np.flatnonzero(~pos)]
    todo = [(int(np.argmax(pos)), v.size)] if pos.any() else []
    while todo:
        lo, hi = todo.pop()
        if w[hi - 1] - w[lo] <= width * (1 + 1e-12):
            bounds.append((lo, hi))
            continue
        k = lo + 1 + int(np.argmax(np.diff(w[lo:hi])))
        todo += [(lo, k), (k, hi)]
    bounds.sort()
    starts = np.asarray([v[lo] for lo, _ in bounds], float)
    return starts, np.asarray([np.median(v[lo:hi]) for lo, hi in bounds], float)


def _to_level(values: Any, starts: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """Map values onto the level (median) whose range holds them; NaN stays NaN."""
    x = np.asarray(values, float)
    if not starts.size:
        return x.copy()
    i = np.clip(np.searchsorted(starts, x, side="right") - 1, 0, starts.size - 1)
    return np.where(np.isfinite(x), np.round(medians[i], 6), np.nan)


# process -> (observable column, likelihood, cumulative, key parameter per model)
_KEY = {
    "br_first_order": "D_Br_e_per_A2",
    "br_two_pool": "D_surface_e_per_A2",
    "br_second_order": "D2_e_per_A2",
    "br_linear": "rate_per_e_per_A2",
    "nucleation_constant": "J_per_e_per_A2",
    "nucleation_saturating": "J_per_e_per_A2",
    "nucleation_accelerating": "a_per_e2_per_A4",
    "growth_supply_m3": "K_A3_per_x",
    "growth_diffusion_m2": "K_A2_per_x",
    "growth_reaction_m1": "K_A_per_x",
    "growth_power": "m",
    "coalescence_smoluchowski": "K_coal",
    "number_first_order": "k",
    "number_constant": "N0",
}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if np.isfinite(v) else "n/a"


def _process_rows(g: pd.DataFrame, x: str, level: float, ci: str) -> list[dict[str, Any]]:
    rows = []
    specs = []
    br_img = _br_image_row(g, level)
    if br_img is not None:
        rows.append(br_img)
    elif "n_Br" in g and g["n_Br"].notna().sum() >= _MIN_KINETIC_FRAMES:
        specs.append(("br_loss", "n_Br", "br_loss", dict(likelihood="poisson", cumulative=True)))
    elif "integrated_counts" in g and g["integrated_counts"].notna().sum() >= _MIN_KINETIC_FRAMES:
        specs.append(("mass_loss", "integrated_counts", "br_loss", {}))
    else:
        rows += _too_short("mass_loss", "integrated_counts", g, "the crystal's integrated counts")
    nuc_tpl = _nucleation_template_row(g, level)
    if nuc_tpl is not None:
        rows.append(nuc_tpl)
    elif "cumulative_births" in g and g["cumulative_births"].max() >= 3:
        specs.append(
            (
                "nucleation",
                "cumulative_births",
                "nucleation",
                dict(likelihood="poisson", cumulative=True),
            )
        )
    elif "cumulative_births" in g and g["cumulative_births"].notna().sum() >= 2:
        n_b = int(g["cumulative_births"].max())
        rows.append(
            _not_fitted(
                "nucleation",
                "cumulative_births",
                PerovstemError(f"{n_b} cluster birth(s) tracked; its models need at least 3"),
            )
        )
    if "mean_radius_A" in g and g["mean_radius_A"].notna().sum() >= _MIN_KINETIC_FRAMES:
        specs.append(("growth", "mean_radius_A", "growth", {}))
    else:
        rows += _too_short("growth", "mean_radius_A", g, "a mean cluster radius")
    if "n_clusters" in g and g["n_clusters"].max() >= 3:
        k0 = int(np.argmax(g["n_clusters"].to_numpy()))
        if len(g) - k0 >= _MIN_KINETIC_FRAMES:
            specs.append(
                ("coalescence", "n_clusters", "coalescence", dict(likelihood="poisson", _from=k0))
            )
    for process, col, family, kw in specs:
        kw = dict(kw)
        start = kw.pop("_from", 0)
        sub = g.iloc[start:][[x, col]].dropna()
        xv = sub[x].to_numpy(float)
        yv = sub[col].to_numpy(float)
        if process == "coalescence":
            xv = xv - xv[0]
        if kw.get("cumulative") and process == "br_loss":
            yv = np.minimum.accumulate(yv)
        try:
            table, fits = compare_models(xv, yv, family, level=level, ci=ci, **kw)
        except PerovstemError as exc:
            rows.append(_not_fitted(process, col, exc))
            continue
        best = table.loc[0, "model"]
        f = fits[best]
        key = _KEY.get(best, next(iter(f.params)))
        label = key  # the parameter is per unit of x: per frame when no dose is known
        if x != "cumulative_dose_e_per_A2":
            label = key.replace("e2_per_A4", f"{x}2").replace("e_per_A2", x)
        value, lo, hi = f.params[key], f.ci_low[key], f.ci_high[key]
        if process == "mass_loss" and best == "br_linear":
            # counts per e⁻/Å² scale with the detector gain: given as a fraction of the
            # crystal's starting intensity N0 (its error is negligible beside the rate's)
            n0 = float(f.params["N0"])
            if np.isfinite(n0) and n0 > 0:
                value, lo, hi = value / n0, lo / n0, hi / n0
                label = label.replace("rate_per", "fraction_lost_per")
        delta = float(table.loc[1, "delta"]) if len(table) > 1 else np.inf
        mech = table.loc[0, "mechanism"]
        if process == "mass_loss":  # Br-loss model forms fitted to an intensity, not to Br
            mech = f"loss of the crystal's integrated intensity ({best} form; not a Br count)"
            # (a "D_Br" of the intensity, 4.0e4 for a true 3e4, invited the comparison)
            label = label.replace("D_Br_", "D_intensity_")
        weight = float(table.loc[0, "weight"])
        if np.isfinite(weight):
            chosen = f"{mech} ({best}, weight {weight:.2f})"
        else:
            # every model's criterion is infinite (AICc with too few points): the first
            # model is only the first fitted, not a selection
            mech = f"not selected: {f.n_obs} points are too few to compare the models"
            chosen = f"{mech} ({best} fitted, not selected)"
        text = (
            f"{process}: {chosen}; "
            f"{label} = {_fmt(value)} [{_fmt(lo)}, {_fmt(hi)}] ({int(level * 100)} % CI)"
        )
        if delta < 2.0:  # Burnham & Anderson (2002): ΔAICc < 2 is no support for either
            text += f"; not distinguished from {table.loc[1, 'model']} (ΔAICc {delta:.2g} < 2)"
        if process == "nucleation":  # tracked births are censored by detection and merging
            text += (
                "; rate of detectable-cluster births: not the nucleation rate where nuclei "
                "merge or dissolve before detection (quantify.nucleation_rate tests that)"
            )
        rows.append(
            {
                "process": process,
                "observable": col,
                "selected_model": best,
                "mechanism": mech,
                "weight": weight,
                "delta_next": delta,
                "param": label,
                "value": value,
                "ci_low": lo,
                "ci_high": hi,
                "n_points": f.n_obs,
                "text": text,
            }
        )
    return rows


_BR_IMAGE = ("n_Br_lost_image", "n_Br_exposed_image", "n_Br_bulk_image")


#: frames a dose course needs before its kinetic models are fitted (mass loss, growth,
#: coalescence from the cluster-number maximum)
_MIN_KINETIC_FRAMES = 5


def _too_short(process: str, col: str, g: pd.DataFrame, what: str) -> list[dict[str, Any]]:
    """A "not fitted" row for a series too short for ``process`` (2 to 4 frames with
    ``col``): a 2-frame series left out mass loss and growth without a word.  Fewer than 2
    (e.g. one condition per frame of a temperature ramp, fitted across conditions) say
    nothing: their grouping is the reason."""
    n = int(g[col].notna().sum()) if col in g else 0
    if not 2 <= n < _MIN_KINETIC_FRAMES:
        return []
    exc = PerovstemError(f"{n} frames with {what}; its models need at least {_MIN_KINETIC_FRAMES}")
    return [_not_fitted(process, col, exc)]


def _not_fitted(process: str, observable: str, exc: Exception) -> dict[str, Any]:
    """A row saying why a process could not be fitted."""
    # named like the fitted rows ("growth: ..."): a bare "not fitted: ..." line did not say
    # which process
    return {"process": process, "observable": observable, "text": f"{process}: not fitted: {exc}"}


def _br_image_fit(g: pd.DataFrame, level: float) -> tuple[Any, float, float, int] | None:
    """:func:`~.br_loss.fit_br_desorption` of one series' image-derived Br columns, with its
    level error and template spread: ``(fit, level_sd, template_rel_sd, n_frames)``; None
    without the columns (raises PerovstemError when they cannot be fitted).

    Uses the cumulative Br lost and the exposed / bulk Br at the end of each frame
    (``BrLossResult.frame_columns()``); frame 0 only provides the starting state.
    """
    if not all(c in g for c in (*_BR_IMAGE, "dose_e_per_A2")):
        return None
    sub = g[[*_BR_IMAGE, "dose_e_per_A2"]].dropna()
    if len(sub) < 5:
        return None
    from perovstem.quantify.br_loss import fit_br_desorption

    sd = g["n_Br_lost_image_sd"].median() if "n_Br_lost_image_sd" in g else np.nan
    # the structural templates' spread (br_loss_from_images puts it into its interval;
    # without it this row's interval was 4x narrower than the br_loss step's)
    rel = g["D_Br_template_rel_sd"].median() if "D_Br_template_rel_sd" in g else np.nan
    f_bulk = float(g["f_bulk"].median()) if "f_bulk" in g else 0.1
    cum = sub["n_Br_lost_image"].to_numpy(float)
    fit = fit_br_desorption(
        sub["dose_e_per_A2"].to_numpy(float)[1:],
        np.diff(cum),
        sub["n_Br_exposed_image"].to_numpy(float),
        sub["n_Br_bulk_image"].to_numpy(float),
        f_bulk=f_bulk,
        level=level,
        level_sd=float(sd) if np.isfinite(sd) else None,
        extra_rel_var=float(rel) ** 2 if np.isfinite(rel) else 0.0,
    )
    return fit, float(sd), float(rel), len(sub) - 1


def _br_row(fit: Any, level: float, n_points: int, pooled: str = "") -> dict[str, Any]:
    key = "D_Br_e_per_A2"
    return {
        "process": "br_loss",
        "observable": "n_Br_lost_image",
        "selected_model": "br_exposed_hazard",
        "mechanism": "beam-driven desorption of exposed Br (surface + f·bulk, notes §1.3)",
        "weight": np.nan,
        "delta_next": np.nan,
        "param": key,
        "value": fit.D_Br_e_per_A2,
        "ci_low": fit.ci_low,
        "ci_high": fit.ci_high,
        "n_points": n_points,
        "text": (
            f"br_loss: exposed-Br hazard from images{pooled}; {key} = "
            f"{_fmt(fit.D_Br_e_per_A2)} [{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}] "
            f"({int(level * 100)} % CI)"
        ),
    }


def _br_image_row(g: pd.DataFrame, level: float) -> dict[str, Any] | None:
    """Br-loss row from image-derived Br lost and Br at risk (:mod:`.br_loss`), if present."""
    try:
        r = _br_image_fit(g, level)
    except PerovstemError as exc:
        return _not_fitted("br_loss", "n_Br_lost_image", exc)
    return None if r is None else _br_row(r[0], level, r[3])


def _br_image_pooled_row(
    per_field: list[tuple[Any, pd.DataFrame]], level: float
) -> tuple[dict[str, Any] | None, list[str]]:
    """One D_Br from the image-derived Br losses of every field of a condition
    (:func:`~.br_loss.pool_br_desorption`), where two or more fields have them; and the
    fields it pooled."""
    from perovstem.quantify.br_loss import pool_br_desorption

    fits, sds, rels, n, used = [], [], [], 0, []
    for fv, g in per_field:
        try:
            r = _br_image_fit(g, level)
        except PerovstemError:
            continue  # (its own row says why)
        if r is not None:
            fits.append(r[0])
            sds.append(r[1])
            rels.append(r[2])
            n += r[3]
            used.append(str(fv))
    if len(fits) < 2:
        return None, used
    given = [np.isfinite(v) for v in sds]
    rel2 = [v * v for v in rels if np.isfinite(v)]
    try:
        pooled = pool_br_desorption(
            fits,
            level=level,
            level_sd=sds if all(given) else None,
            # the templates are the same for every field: their spread is not averaged down
            extra_rel_var=float(np.mean(rel2)) if rel2 else 0.0,
        )
    except PerovstemError as exc:
        return _not_fitted("br_loss", "n_Br_lost_image", exc), used
    return _br_row(pooled, level, n, f", {len(fits)} fields pooled"), used


def _nucleation_template_row(g: pd.DataFrame, level: float) -> dict[str, Any] | None:
    """Nucleation row from :func:`perovstem.quantify.nucleation.nucleation_rate` or
    :func:`~perovstem.quantify.nucleation.nucleation_profile` columns
    (``NucleationRate.frame_columns()``, with ``J_nucleation_survival``, or
    ``NucleationProfile.frame_columns()``), if present.  When J is not identifiable the row
    carries the range under ``param`` = ``J_range_per_e_per_A2`` (not used for the
    dose-rate / temperature fits)."""
    cols = ("J_nucleation", "J_nucleation_ci_low", "J_nucleation_ci_high")
    if not all(c in g for c in cols) or g["J_nucleation"].notna().sum() == 0:
        return None
    j, lo, hi = (float(g[c].dropna().median()) for c in cols)
    ident = (
        bool(g["J_nucleation_identifiable"].median() > 0.5)
        if ("J_nucleation_identifiable" in g)
        else True
    )
    key = "J_per_e_per_A2" if ident else "J_range_per_e_per_A2"
    if "J_nucleation_survival" in g:  # NucleationRate: survival-corrected detectable births
        s = float(g["J_nucleation_survival"].dropna().median())
        observable, model = "births_detected", "survival_corrected_births"
        mech = f"nucleation rate from detectable births / (survival {s:.2f} · dose)"
        note = (
            ""
            if ident
            else "; NOT identifiable: nuclei merge before detection (survival uncertain), "
            "range from the detectable births (lower bound) to the least template survival"
        )
    else:  # NucleationProfile: detected cluster numbers vs templates
        observable, model = "n_clusters", "template_population_balance"
        mech = "nucleation rate from detected cluster numbers vs KMC population templates"
        note = "" if ident else "; NOT identifiable from detectable clusters (coalescence-limited)"
    return {
        "process": "nucleation",
        "observable": observable,
        "selected_model": model,
        "mechanism": mech + note,
        "weight": np.nan,
        "delta_next": np.nan,
        "param": key,
        "value": j,
        "ci_low": lo,
        "ci_high": hi,
        "n_points": int(g["J_nucleation"].notna().sum()),
        "text": f"nucleation: {key} = {_fmt(j)} [{_fmt(lo)}, {_fmt(hi)}]"
        + (f" ({int(level * 100)} % CI)" if ident else " (range)")
        + note,
    }


def _timed(g: pd.DataFrame) -> bool:
    """Whether a field's frames have two time stamps (a frame interval for its hops)."""
    return "time_s" in g and g["time_s"].notna().sum() >= 2


def _timed_field_tracks(
    parts: list[tuple[str, pd.DataFrame, pd.DataFrame]],
) -> tuple[list[str], list[pd.DataFrame], list[float]]:
    """Of each field's (name, frames, tracks): the tracks within its frames and its frame
    interval, s (median step of its time stamps); fields without two time stamps, a
    positive interval or tracks are left out.  Returns names, tracks, intervals."""
    names, kept, dts = [], [], []
    for name, g, tracks in parts:
        if not _timed(g):
            continue
        frames = set(g["frame"].to_numpy().tolist()) if "frame" in g else None
        t = tracks if frames is None else tracks[tracks["frame"].isin(frames)]
        dt = float(np.median(np.diff(np.sort(g["time_s"].dropna().to_numpy(float)))))
        if len(t) and dt > 0:
            names.append(name)
            kept.append(t)
            dts.append(dt)
    return names, kept, dts


def _mobility_row(
    parts: list[tuple[str, pd.DataFrame, pd.DataFrame]], level: float, opts: dict[str, Any]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Γ₁ of one condition from its tracks: ``parts`` holds (name, frames, tracks) of each
    field (frame time from each field's time stamps; fields pooled, track ids kept apart);
    and the names of the fields whose tracks it used."""
    from perovstem.quantify.mobility import cluster_hop_rate, pool_field_tracks

    names, kept, dts = _timed_field_tracks(parts)
    n_det = sum(len(t) for t in kept)
    if n_det < 4:
        timed = [g for _, g, _ in parts if _timed(g)]
        if not timed:
            return None, names
        # (a condition without clusters, e.g. 225 K where Pb⁰ does not move, had no row at
        # all: neither a rate nor why there is none)
        n_fr = sum(len(g) for g in timed)
        row = _not_fitted(
            "mobility",
            "cluster tracks",
            DataError(
                f"{n_det} cluster detection(s) in {n_fr} frames: no clusters to track (none "
                "formed, or all below the detection limit)"
            ),
        )
        row["text"] = row["text"].replace("not fitted", "not measured", 1)
        return row, names
    try:
        if len(kept) == 1:
            r = cluster_hop_rate(kept[0], frame_time_s=dts[0], level=level, **opts)
        else:  # each field's steps with its own frame time
            kept = [t.assign(_frame_time_s=d) for t, d in zip(kept, dts, strict=True)]
            t = pool_field_tracks(kept, names=names)
            r = cluster_hop_rate(t, frame_time_column="_frame_time_s", level=level, **opts)
    except PerovstemError as exc:
        # the tracks reach this far without the frames whose drift is unreliable (a hop
        # through them is the drift's error): say so where those frames are the reason
        n_all = sum(len(g) for _, g, _ in parts)
        n_bad = sum(
            int((~g["drift_reliable"].astype(bool)).sum())
            for _, g, _ in parts
            if "drift_reliable" in g
        )
        if n_bad:
            exc = type(exc)(
                f"{exc} ({n_bad} of {n_all} frames are left out for an unreliable drift)"
            )
        return _not_fitted("mobility", "cluster tracks", exc), names
    if not (np.isfinite(r["rate_per_s"]) and r["rate_per_s"] > 0):
        return None, names
    caveat = _hop_rate_caveat(r, opts)
    pooled = f", {len(kept)} fields" if len(kept) > 1 else ""
    row = {
        "process": "mobility",
        "observable": "cluster tracks",
        "selected_model": "lattice_random_walk",
        "mechanism": "Pb⁰ cluster surface diffusion (hop rate Γ₁·n^(-4/3))",
        "param": "Gamma1_per_s",
        "value": r["rate_per_s"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "n_points": r["n_steps"],
        "text": f"mobility: Pb⁰ cluster hop rate Γ₁ = {_fmt(r['rate_per_s'])} "
        f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] s⁻¹ ({r['n_steps']} steps, "
        f"{r['n_tracks']} tracks{pooled})" + (f"; {caveat}" if caveat else ""),
    }
    return row, names


# a hop rate whose lag-1 steps reach beyond half the tracker's link this often is censored
# (fast hops are not linked): a lower bound.  Audit series (KMC, truth 69 / 384 s⁻¹):
# 0.37 of the steps read 65 s⁻¹ at 280 K, 0.54 and 0.73 read 73 and 199 s⁻¹ at 300 K
HOP_CENSORED_FRACTION = 0.5
HOP_LOWER_BOUND = "a lower bound"


def _hop_rate_caveat(r: dict[str, float], opts: dict[str, Any]) -> str:
    """Why a cluster hop rate may not measure Γ₁ ("" when nothing is seen): its lag-1
    steps censored by the tracker's link (``frac_long_steps`` ≥
    :data:`HOP_CENSORED_FRACTION` of the steps beyond half of ``max_step_A``): a lower
    bound.  (The localisation error estimated from the MSD's intercept is no referee for
    the opposite bound: on the demo's 280 K series it claimed 1.7 Å and a rate
    consistent with 0, a series whose rate enters the demo's validated Ea.)"""
    long = float(r.get("frac_long_steps", np.nan))
    if not (np.isfinite(long) and long >= HOP_CENSORED_FRACTION and opts.get("max_step_A")):
        return ""
    return (
        f"{HOP_LOWER_BOUND}: {long:.0%} of the steps go beyond half the tracking link "
        f"({float(opts['max_step_A']) / 2:g} Å), so faster hops are not linked (shorter "
        "frames needed)"
    )


def mechanism_summary(
    frames: pd.DataFrame,
    *,
    by: tuple[str, ...] | None = None,
    x: str = "cumulative_dose_e_per_A2",
    level: float = 0.95,
    ci: str = "profile",
    tracks: pd.DataFrame | None = None,
    mobility: dict[str, Any] | None = None,
    field: str | None = None,
) -> pd.DataFrame:
    """Per-condition mechanism table from a per-frame table.

    Parameters
    ----------
    frames : DataFrame
        One row per frame (several series may be concatenated), with ``x`` and any of the
        observables ``n_Br`` (exact Br count), ``integrated_counts`` (crystal intensity),
        image-derived Br loss ``n_Br_lost_image``, ``n_Br_exposed_image``,
        ``n_Br_bulk_image`` (+ ``dose_e_per_A2``; from
        :meth:`perovstem.quantify.br_loss.BrLossResult.frame_columns`, which then replace the
        first-order Br-loss fits by :func:`~perovstem.quantify.br_loss.fit_br_desorption`),
        ``cumulative_births``, ``mean_radius_A``, ``n_clusters``, the nucleation-profile
        columns ``J_nucleation``, ``J_nucleation_ci_low``, ``J_nucleation_ci_high``,
        ``J_nucleation_identifiable`` (from
        :meth:`perovstem.quantify.nucleation.NucleationRate.frame_columns`, which adds
        ``J_nucleation_survival``, or ``NucleationProfile.frame_columns``; they replace the
        births fit); conditions in
        ``temperature_K``, ``dose_rate_e_per_A2_s``, ``gas`` (and ``series`` if present).
    by : tuple of str, optional
        Condition columns (default: those of ``series, temperature_K,
        dose_rate_e_per_A2_s, gas`` present).  Temperatures within 2 K and dose rates
        within 10 % of the lowest value of a level are one condition
        (:data:`CONDITION_TOLERANCE`: logged temperatures fluctuate, time stamps jitter).
    x : str
        Independent variable (cumulative dose by default).  With another ``x`` (e.g.
        ``"frame"`` when the dose is unknown) the dose units in ``param`` and ``text`` name
        ``x`` instead (``fraction_lost_per_frame``, not ``fraction_lost_per_e_per_A2``).
    level : float
        Confidence level.
    ci : {"profile", "bootstrap", "wald"}
        Interval method of every fit (profile likelihood by default; Wald is fastest).
    tracks : DataFrame, optional
        Cluster tracks (``frame, x_A, y_A, track_id, n_atoms`` and the condition columns
        ``by`` where several conditions are present, e.g. ``series``): a ``mobility`` row
        per condition (needs ``time_s`` in ``frames``) and, with two or more temperatures,
        the activation energy of Pb⁰ diffusion.
    mobility : dict, optional
        Options of :func:`perovstem.quantify.mobility.cluster_hop_rate`
        (e.g. ``max_step_A``, ``localization_error_A``, ``rng``).
    field : str, optional
        Column of ``frames`` (and ``tracks``) naming the field a row comes from: several
        series (crystals, files) under one condition.  The per-frame processes are fitted per
        field (each crystal its own time course) and, where two or more fields carry the
        image-derived Br loss, pooled into one more D_Br row of the condition
        (:func:`~perovstem.quantify.br_loss.pool_br_desorption`); the hop rate of a
        condition pools the tracks of all its fields (:func:`~perovstem.quantify.mobility.pool_field_tracks`;
        each field's steps with its own frame time), so an activation energy rests on every
        field (about 200 hops per temperature for 0.05 eV, ``docs/insitu.md``).  Not a
        condition column (``by``); default ``by`` then leaves ``series`` out.

    Returns
    -------
    DataFrame
        :data:`SUMMARY_COLUMNS`, one row per condition and process, plus ``across`` rows for
        the dose-rate and temperature dependence of the nucleation rate, the dose-rate
        dependence of the image-derived Br loss (``k_Br_per_s`` = φ/D_Br: α ≈ 1
        dose-controlled, α ≈ 0 thermal; a condition's pooled D_Br row stands for its
        fields) and the Arrhenius energy of the cluster mobility when several conditions
        are present
        (``condition = -1``); ``attrs['conditions'][i]`` holds the key values of condition i.
        With ``field``, a column ``field`` (text): the field of a per-frame row, the
        fields pooled in a mobility row (joined by ``+``), empty in ``across`` rows; and
        ``attrs['conditions'][i]['fields']`` lists the fields of condition i.
    """
    if not isinstance(frames, pd.DataFrame) or x not in frames:
        raise DataError(f"`frames` must be a DataFrame with column {x!r}")
    check_choice("ci", ci, ("profile", "bootstrap", "wald"))
    if field is not None:
        if field not in frames:
            raise DataError(f"`field` = {field!r} is not a column of `frames`")
        if frames[field].isna().any():
            raise DataError(
                f"`frames` column {field!r} (`field`) has {int(frames[field].isna().sum())} "
                "missing value(s): name the field of every frame"
            )
        if tracks is not None and isinstance(tracks, pd.DataFrame) and field not in tracks:
            raise DataError(f"`field` = {field!r} is not a column of `tracks`")
        if by is not None and field in by:
            raise ParameterError(
                f"`field` = {field!r} is also in `by` = {tuple(by)!r}: a field is not a "
                "condition (its hop rate is pooled with the other fields of its condition)"
            )
    if by is None:
        by = tuple(
            c
            for c in ("series", "temperature_K", "dose_rate_e_per_A2_s", "gas")
            if c in frames and c != field
        )
    f = frames.copy()
    keys = []
    levels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in by:
        if c in CONDITION_TOLERANCE and f[c].dtype.kind in "fiu":
            levels[c] = _condition_levels(f[c].to_numpy(float), *CONDITION_TOLERANCE[c])
            f[c] = _to_level(f[c], *levels[c])
        elif f[c].dtype.kind == "f":
            f[c] = f[c].round(6)
        keys.append(c)
    groups = f.groupby(keys, dropna=False, sort=True) if keys else [((), f)]
    groups = list(groups)
    if tracks is not None:
        if not isinstance(tracks, pd.DataFrame):
            raise DataError(f"`tracks` must be a DataFrame, got {type(tracks).__name__}")
        tkeys = [c for c in keys if c in tracks]
        if len(groups) > 1 and not tkeys:
            raise DataError(
                f"several conditions ({len(groups)}): `tracks` needs one of the condition "
                f"columns {keys} to be matched to them"
            )
    rows = []
    conditions = []
    for i, (_key, g) in enumerate(groups):
        kv = _key if isinstance(_key, tuple) else (_key,)
        conditions.append({c: _plain(v) for c, v in zip(keys, kv, strict=False)})
        g = g.sort_values(x)
        cond = {
            "condition": i,
            "temperature_K": float(g["temperature_K"].median()) if "temperature_K" in g else np.nan,
            "dose_rate_e_per_A2_s": float(g["dose_rate_e_per_A2_s"].median())
            if "dose_rate_e_per_A2_s" in g
            else np.nan,
            # an unrecorded gas stays empty (str(None) wrote "None" into the tables)
            "gas": "" if "gas" not in g or pd.isna(g["gas"].iloc[0]) else str(g["gas"].iloc[0]),
        }
        # the condition's fields (one crystal each): per-frame fits per field
        per_field = [("", g)] if field is None else list(g.groupby(field, sort=True))
        if field is not None:
            conditions[-1]["fields"] = [_plain(v) for v, _ in per_field]
        for fv, gf in per_field:
            gf = gf.sort_values(x)
            fcol = {} if field is None else {"field": str(fv)}
            for r in _process_rows(gf, x, level, ci):
                rows.append({**cond, **r, **fcol})
        if len(per_field) > 1:  # D_Br is the material's: one value from all fields too
            r, used = _br_image_pooled_row([(fv, gf.sort_values(x)) for fv, gf in per_field], level)
            if r is not None:  # named by the fields it pooled
                rows.append({**cond, **r, "field": "+".join(used)})
        if tracks is not None:
            t = tracks
            key = _key if isinstance(_key, tuple) else (_key,)
            for c, v in zip(keys, key, strict=False):
                if c in t:
                    if c in levels:
                        vv = _to_level(t[c], *levels[c])
                    else:
                        vv = t[c].round(6) if t[c].dtype.kind == "f" else t[c]
                    t = t[vv == v]
            if field is None:
                parts = [("", g, t)]
            else:
                parts = [(str(fv), gf, t[t[field] == fv]) for fv, gf in per_field]
            r, used = _mobility_row(parts, level, dict(mobility or {}))
            if r is not None:
                fcol = {} if field is None else {"field": "+".join(used)}
                rows.append({**cond, **r, **fcol})
    columns = SUMMARY_COLUMNS if field is None else [*SUMMARY_COLUMNS, "field"]
    out = pd.DataFrame(rows, columns=columns)
    across = _across(out, level)
    ramp = _ramp_row(f, tracks, field, level, dict(mobility or {})) if tracks is not None else None
    if ramp is not None:
        # a ramp's hop rates per temperature rest on tracks cut every few frames: the
        # Arrhenius fit over the whole tracks replaces the one across them
        mob_ea = (across["process"] == "temperature") & (across["observable"] == "Gamma1_per_s")
        across = pd.concat([across[~mob_ea], pd.DataFrame([ramp])], ignore_index=True)
    out = pd.concat([out, across], ignore_index=True)
    if field is not None:
        out["field"] = out["field"].fillna("").astype(str)
    out.attrs["x"] = x
    out.attrs["level"] = level
    out.attrs["conditions"] = conditions  # key values of condition i
    return out


# a series is a temperature ramp (for the Pb⁰-diffusion Arrhenius fit) when it has at least
# this many temperature levels and its levels hold fewer frames than this (median): per
# level too few frames for a hop rate, tracks cut at every level
RAMP_MIN_LEVELS = 3
RAMP_MAX_FRAMES_PER_LEVEL = 5


def _ramp_row(
    frames: pd.DataFrame,
    tracks: pd.DataFrame,
    field: str | None,
    level: float,
    opts: dict[str, Any],
) -> dict[str, Any] | None:
    """The Pb⁰-diffusion Ea of a temperature ramp from the whole tracks, every step at its own
    temperature (:func:`~perovstem.quantify.mobility.hop_rate_arrhenius`), or None when the
    frames are not a ramp (``frames`` with temperature levels, see RAMP_*), hold several dose
    rates (the beam adds to the thermal hop rate) or the fit fails."""
    from perovstem.quantify.mobility import hop_rate_arrhenius, pool_field_tracks

    if "temperature_K" not in frames or "temperature_K" not in tracks or "time_s" not in frames:
        return None
    if "dose_rate_e_per_A2_s" in frames and frames["dose_rate_e_per_A2_s"].nunique() > 1:
        return None
    group = field
    if group is None and "series" in frames and frames["series"].nunique() > 1:
        if "series" not in tracks:  # several series' frame numbers and track ids would mix
            return None
        group = "series"
    per = [frames] if group is None else [g for _, g in frames.groupby(group, sort=True)]
    sizes = [n for g in per for n in g.groupby("temperature_K").size().tolist()]
    if frames["temperature_K"].nunique() < RAMP_MIN_LEVELS or not sizes:
        return None
    if float(np.median(sizes)) >= RAMP_MAX_FRAMES_PER_LEVEL:
        return None
    kw = {k: opts[k] for k in ("hop_length_A", "size_exponent", "rng") if k in opts}
    if opts.get("localization_error_A") is not None:
        kw["localization_error_A"] = opts["localization_error_A"]
    names, kept, dts = _timed_field_tracks(
        [
            (str(i), g, tracks)
            if group is None
            else (str(g[group].iloc[0]), g, tracks[tracks[group] == g[group].iloc[0]])
            for i, g in enumerate(per)
        ]
    )
    if not kept:
        return None
    kept = [t.assign(_frame_time_s=d) for t, d in zip(kept, dts, strict=True)]
    t = kept[0] if len(kept) == 1 else pool_field_tracks(kept, names=names)
    try:
        r = hop_rate_arrhenius(t, frame_time_column="_frame_time_s", level=level, **kw)
    except PerovstemError:
        return None
    if not np.isfinite(r["Ea_eV"]):
        return None
    return {
        "condition": -1,
        "process": "temperature",
        "observable": "Gamma1_per_s",
        "selected_model": "arrhenius_ramp",
        "mechanism": "thermally activated Pb⁰ diffusion",
        "param": "Ea_eV",
        "value": r["Ea_eV"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "n_points": r["n_steps"],
        "text": "Pb⁰ diffusion over the temperature ramp "
        f"{r['T_min_K']:.4g}–{r['T_max_K']:.4g} K: Ea = {r['Ea_eV']:.3f} ± {r['stderr']:.3f} eV [{_fmt(r['ci_low'])}, "
        f"{_fmt(r['ci_high'])}] ({int(level * 100)} % CI, {r['n_steps']} steps of "
        f"{r['n_tracks']} tracks, each at its own temperature; Γ₁ = "
        f"{_fmt(r['rate_ref_per_s'])} s⁻¹ at {r['T_ref_K']:.4g} K)",
        **({} if field is None else {"field": "+".join(names)}),
    }


def summary_lines(summary: pd.DataFrame, *, max_labels: int = 3) -> list[str]:
    """The ``text`` of a :func:`mechanism_summary` table as lines a reader can place.

    With several conditions each line starts with its condition, given by the condition
    columns whose values differ between the conditions (``[300 K]``, ``[300 K, 1e+03
    e⁻/Å²/s]``, ``[condition 2]`` when none does); a ``field`` column adds ``[field]``.  A
    text repeated under several conditions (e.g. the "not fitted" rows of a temperature
    ramp, one condition per frame) is given once, with its conditions (the first
    ``max_labels`` and how many).  ``across`` rows (``condition = -1``) name their
    conditions in their text.

    Parameters
    ----------
    summary : DataFrame
        From :func:`mechanism_summary` (or a table read back with its columns).
    max_labels : int
        Conditions named on a line that several share.

    Returns
    -------
    list of str
    """
    refuse_text_numbers(locals())
    if not isinstance(summary, pd.DataFrame) or "text" not in summary or summary.empty:
        return []
    ok = summary["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))
    rows = summary[ok]
    cond = rows["condition"] if "condition" in rows else pd.Series(0, index=rows.index)
    per = rows[cond >= 0].drop_duplicates("condition") if "condition" in rows else rows
    vary = [
        c
        for c in ("temperature_K", "dose_rate_e_per_A2_s", "gas")
        if c in per and per[c].nunique(dropna=True) > 1
    ]

    def label(r: pd.Series) -> str:
        if len(per) < 2 or r.get("condition", 0) < 0:
            return ""
        parts = []
        for c in vary:
            v = r[c]
            if isinstance(v, str) or pd.isna(v):
                parts.append(str(v) if isinstance(v, str) else "")
            else:
                parts.append(f"{v:.4g} K" if c == "temperature_K" else f"{v:.3g} e⁻/Å²/s")
        text = ", ".join(p for p in parts if p)
        return text or f"condition {int(r['condition'])}"

    groups: dict[tuple[str, str], list[str]] = {}
    for _, r in rows.iterrows():
        fld = str(r["field"]) if "field" in r and isinstance(r["field"], str) else ""
        labels = groups.setdefault((fld, str(r["text"]).strip()), [])
        lab = label(r)
        if lab not in labels:
            labels.append(lab)
    out = []
    for (fld, text), labels in groups.items():
        labels = [lab for lab in labels if lab]
        if len(labels) > max_labels:
            head = "; ".join(labels[:max_labels]) + f"; ... ({len(labels)} conditions)"
        else:
            head = "; ".join(labels)
        out.append((f"[{head}] " if head else "") + (f"[{fld}] " if fld else "") + text)
    return out


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value (for ``attrs`` that go to JSON)."""
    return v.item() if hasattr(v, "item") else v


def _dose_rate_row(
    rows: pd.DataFrame, rate_per_s: np.ndarray, err_per_s: np.ndarray, observable: str, what: str
) -> dict[str, Any] | None:
    """Dose- or time-controlled? (rates per second at one temperature, several dose rates)."""
    phi = rows["dose_rate_e_per_A2_s"].to_numpy(float)
    try:
        rerr = err_per_s if np.all(np.isfinite(err_per_s) & (err_per_s > 0)) else None
        t, fits = fit_dose_rate_dependence(phi, rate_per_s, rate_err=rerr)
    except PerovstemError:
        return None
    a = fits.get("power_law")
    al = (a.params["alpha"], a.ci_low["alpha"], a.ci_high["alpha"]) if a else (np.nan,) * 3
    model, mech, weight = t.loc[0, "model"], t.loc[0, "mechanism"], float(t.loc[0, "weight"])
    if a is None and rerr is not None and np.unique(phi).size == 2:
        # AICc is undefined with two points (every model ties at inf): choose between the two
        # one-parameter hypotheses by likelihood, unless the α interval allows both
        al = _two_rate_alpha(phi, rate_per_s, rerr)
        ok = t[t["model"].isin(["dose_controlled", "time_controlled"]) & t["loglik"].notna()]
        best = ok.loc[ok["loglik"].idxmax()] if len(ok) else t.loc[0]
        model, mech, weight = best["model"], best["mechanism"], np.nan
        if al[1] <= 0.0 <= al[2] and al[1] <= 1.0 <= al[2]:
            model, mech = "undetermined", "undetermined: the α interval includes 0 and 1"
    return {
        "condition": -1,
        "process": "dose_rate",
        "observable": observable,
        "selected_model": model,
        "mechanism": mech,
        "weight": weight,
        "param": "alpha",
        "value": al[0],
        "ci_low": al[1],
        "ci_high": al[2],
        "n_points": len(phi),
        "text": f"{what} vs dose rate: {mech}; "
        f"alpha = {_fmt(al[0])} [{_fmt(al[1])}, {_fmt(al[2])}]",
    }


def _two_rate_alpha(
    phi: np.ndarray, rate: np.ndarray, err: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """Dose-rate exponent α of ``J_t ∝ φ^α`` from two dose rates with known rate errors.

    With two points the power law passes through both, so α = Δln J / Δln φ and its
    standard error follows from the rates' relative errors (first-order propagation;
    several points at one dose rate are first combined by inverse-variance weighting).
    """
    lj, s2 = np.log(rate), (err / rate) ** 2
    u = np.unique(phi)
    m, v = [], []
    for f in u:
        w = 1.0 / s2[phi == f]
        m.append(float(np.sum(w * lj[phi == f]) / np.sum(w)))
        v.append(float(1.0 / np.sum(w)))
    d = float(np.log(u[1] / u[0]))
    alpha = (m[1] - m[0]) / d
    z = float(stats.norm.ppf(0.5 + level / 2))
    se = float(np.sqrt(v[0] + v[1]) / d)
    return alpha, alpha - z * se, alpha + z * se


def _same_t_several_rates(d: pd.DataFrame) -> pd.DataFrame:
    if len(d) < 2 or d["dose_rate_e_per_A2_s"].nunique() < 2:
        return d.iloc[:0]
    return d.groupby("temperature_K").filter(lambda g: g["dose_rate_e_per_A2_s"].nunique() >= 2)


_NUC_SHORT = {"nucleation_constant": "constant", "nucleation_saturating": "site exhaustion"}


def _mixed_models_note(nuc: pd.DataFrame) -> str:
    """Said where the temperatures of a nucleation Arrhenius fit selected different models:
    J is then each model's initial rate per dose (the constant rate, or the slope at onset
    of site exhaustion), comparable but not the same parameter (audit)."""
    if "selected_model" not in nuc or nuc["selected_model"].nunique() <= 1:
        return ""
    parts = []
    for model, g in nuc.groupby("selected_model", sort=False):
        temps = ", ".join(f"{t:g}" for t in sorted(g["temperature_K"].astype(float)))
        parts.append(f"{_NUC_SHORT.get(str(model), str(model))} at {temps} K")
    return "; J is the initial rate per dose of the model each temperature selected (" + (
        "; ".join(parts) + ")"
    )


def _one_dose_rate(nuc: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Nucleation rows for the temperature dependence: one dose rate when it has ≥ 3
    temperatures, else all rows with a note that temperature and dose rate are confounded."""
    phi = nuc["dose_rate_e_per_A2_s"].round(6)
    if phi.nunique() <= 1:
        one = phi.dropna()
        return nuc, (f" at {float(one.iloc[0]):g} e⁻/Å²/s" if len(one) else "")
    n_t = nuc.groupby(phi)["temperature_K"].nunique()
    if n_t.max() >= 3:
        best = float(n_t.idxmax())
        return nuc[phi == best], f" at {best:g} e⁻/Å²/s"
    return nuc, (
        f" (dose rates differ: {phi.min():g}–{phi.max():g} e⁻/Å²/s, temperature and dose "
        "rate confounded)"
    )


def arrhenius_hop_rates(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The mobility rows of a mechanism table that its Pb⁰-diffusion Arrhenius fit uses.

    Every hop-rate row, except where a temperature was imaged at several dose rates (a
    dose-rate series): the beam adds to the thermal hop rate (``k_beam·φ``), so that
    temperature enters with its lowest dose rate only.  Returns the rows and a note for the
    Ea text (empty when nothing was left out).
    """
    mob = summary[(summary["process"] == "mobility") & summary["value"].notna()]
    if "dose_rate_e_per_A2_s" not in mob or not len(mob):
        return mob, ""
    phi = mob["dose_rate_e_per_A2_s"]
    by_t = phi.groupby(mob["temperature_K"])
    note = ""
    kept = mob
    if by_t.nunique().max() > 1:
        lowest = by_t.transform("min")
        kept = mob[phi.isna() | (phi == lowest)]
        note = (
            f"; {len(mob) - len(kept)} row(s) at higher dose rates of a temperature left out "
            "(the beam adds to the thermal hop rate)"
        )
    used = kept["dose_rate_e_per_A2_s"].dropna()
    if len(used) and used.max() > 1.1 * used.min():
        # (said for nucleation, not here: a dose rate rising with temperature lends a
        # beam-driven part of the hop rate to the activation energy)
        note += (
            f"; dose rates differ across the temperatures ({used.min():.4g}–{used.max():.4g} "
            "e⁻/Å²/s): a beam-driven part of the hop rate would enter Ea"
        )
    return kept, note


def _across(summary: pd.DataFrame, level: float) -> pd.DataFrame:
    nuc = summary[(summary["process"] == "nucleation") & summary["value"].notna()]
    nuc = nuc[nuc["param"] == "J_per_e_per_A2"]
    rows = []
    same_t = _same_t_several_rates(nuc)
    if len(same_t) >= 2:
        phi = same_t["dose_rate_e_per_A2_s"].to_numpy(float)
        j = same_t["value"].to_numpy(float) * phi
        err = (same_t["ci_high"] - same_t["ci_low"]).to_numpy(float) / 3.92 * phi
        r = _dose_rate_row(same_t, j, err, "J_per_s", "nucleation")
        if r is not None:
            rows.append(r)
    # exposed-Br desorption per atom and second, k = φ/D_Br: dose-controlled (D_Br the same
    # at every dose rate, α = 1) or thermal (k the same, α = 0)
    br = summary[
        (summary["process"] == "br_loss")
        & (summary["param"] == "D_Br_e_per_A2")
        & summary["value"].notna()
    ]
    if "field" in br:  # a condition's pooled D_Br stands for its fields
        pooled = br["field"].astype(str).str.contains("+", regex=False)
        br = br[pooled | ~br["condition"].isin(set(br.loc[pooled, "condition"]))]
    same_t = _same_t_several_rates(br)
    if len(same_t) >= 2:
        phi = same_t["dose_rate_e_per_A2_s"].to_numpy(float)
        k = phi / same_t["value"].to_numpy(float)
        rel = np.log(same_t["ci_high"] / same_t["ci_low"]).to_numpy(float) / 3.92
        r = _dose_rate_row(same_t, k, k * rel, "k_Br_per_s", "exposed-Br loss")
        if r is not None:
            rows.append(r)
    mob_rate = summary[(summary["process"] == "mobility") & summary["value"].notna()]
    same_t = _same_t_several_rates(mob_rate)
    if len(same_t) >= 2:
        err = (same_t["ci_high"] - same_t["ci_low"]).to_numpy(float) / 3.92
        r = _dose_rate_row(
            same_t, same_t["value"].to_numpy(float), err, "Gamma1_per_s", "Pb⁰ diffusion"
        )
        if r is not None:
            rows.append(r)
    nuc, rate_note = _one_dose_rate(nuc)
    rate_note += _mixed_models_note(nuc)
    if len(nuc) >= 2 and nuc["temperature_K"].nunique() >= 2:
        err = (nuc["ci_high"] - nuc["ci_low"]).to_numpy(float) / 3.92
        try:
            r = fit_arrhenius(
                nuc["temperature_K"],
                nuc["value"],
                rate_err=err if np.all(err > 0) else None,
                level=level,
            )
            rows.append(
                {
                    "condition": -1,
                    "process": "temperature",
                    "observable": "J_per_e_per_A2",
                    "selected_model": "arrhenius",
                    "mechanism": "thermally activated nucleation" + rate_note,
                    "param": "Ea_eV",
                    "value": r.params["Ea_eV"],
                    "ci_low": r.ci_low["Ea_eV"],
                    "ci_high": r.ci_high["Ea_eV"],
                    "n_points": r.n_obs,
                    "text": f"nucleation vs temperature{rate_note}: "
                    f"Ea = {_fmt(r.params['Ea_eV'])} eV "
                    f"[{_fmt(r.ci_low['Ea_eV'])}, {_fmt(r.ci_high['Ea_eV'])}]",
                }
            )
        except PerovstemError as exc:  # (it disappeared without a word)
            rows.append({**_not_fitted("temperature", "J_per_e_per_A2", exc), "condition": -1})
    mob, rate_note = arrhenius_hop_rates(summary)
    if len(mob) >= 2 and mob["temperature_K"].nunique() >= 2:
        err = (mob["ci_high"] - mob["ci_low"]).to_numpy(float) / 3.92
        try:
            r = fit_arrhenius(
                mob["temperature_K"],
                mob["value"],
                rate_err=err if np.all(err > 0) else None,
                level=level,
            )
            se = r.stderr["Ea_eV"]
            bound = mob["text"].str.contains(HOP_LOWER_BOUND)
            warn = ""
            if bound.any():
                temps = ", ".join(f"{t:.4g}" for t in mob.loc[bound, "temperature_K"])
                warn = (
                    f"; not a measurement: the hop rates at {temps} K are lower bounds (see "
                    "their rows), so the fit through them does not give Ea"
                )
            rows.append(
                {
                    "condition": -1,
                    "process": "temperature",
                    "observable": "Gamma1_per_s",
                    "selected_model": "arrhenius",
                    "mechanism": "thermally activated Pb⁰ diffusion"
                    + (" (hop rates are bounds: not measured)" if warn else ""),
                    "param": "Ea_eV",
                    "value": r.params["Ea_eV"],
                    "ci_low": r.ci_low["Ea_eV"],
                    "ci_high": r.ci_high["Ea_eV"],
                    "n_points": r.n_obs,
                    "text": f"Pb⁰ diffusion: Ea = {r.params['Ea_eV']:.3f} ± {se:.3f} eV "
                    f"[{_fmt(r.ci_low['Ea_eV'])}, {_fmt(r.ci_high['Ea_eV'])}] "
                    f"({int(level * 100)} % CI, cluster hop rates at {r.n_obs} temperatures"
                    f"{rate_note}){warn}",
                }
            )
        except PerovstemError as exc:  # (e.g. temperatures of 0 K: Ea vanished silently)
            rows.append({**_not_fitted("temperature", "Gamma1_per_s", exc), "condition": -1})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
