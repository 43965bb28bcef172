"""Steps of perovstem.quantify: kinetic model selection, dose-rate and Arrhenius analyses."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from perovstem.pipeline.registry import Kind, Param, api, register_step

_Q = "perovstem.quantify:{0}|perovstem.quantify.kinetics:{0}"
MECHANISM = "perovstem.quantify:mechanism_summary|perovstem.quantify.mechanism:mechanism_summary"
POOL_FIELDS = "perovstem.quantify.mobility:pool_field_tracks"
MODEL3D = "perovstem.quantify:model_from_counts|perovstem.quantify.model3d:model_from_counts"
AGREEMENT = "perovstem.quantify:site_agreement|perovstem.quantify.model3d:site_agreement"
MOBILITY_TRACKS = "perovstem.insitu.tracking:mobility_tracks"
#: the default of ``mobility_link_cost``: :data:`perovstem.insitu.tracking.MOBILITY_LINK_COST`
#: (steps import no library module at import time; a test keeps the two equal)
MOBILITY_LINK_COST = 2.0
BR_IMAGES = "perovstem.quantify.br_loss:br_loss_from_images"
BR_FIT = "perovstem.quantify.br_loss:fit_br_desorption"
COMPARE, FIT, ARRHENIUS, DOSE_RATE = (
    _Q.format(n)
    for n in ("compare_models", "fit_model", "fit_arrhenius", "fit_dose_rate_dependence")
)

_PROCESSES = ("br_loss", "nucleation", "coalescence", "growth")


# unit of an x column from its name suffix (the library's column naming)
_X_UNITS = (("_e_per_A2_s", "e⁻/Å²/s"), ("_e_per_A2", "e⁻/Å²"), ("_s", "s"), ("_K", "K"))


def _x_unit(column: str) -> str:
    return next((u for suf, u in _X_UNITS if column.endswith(suf)), f"[{column}]")


def _param_unit(name: str, x_unit: str) -> str:
    """Unit of a kinetic-model parameter for the x column actually fitted.

    The library names dose parameters for x = cumulative dose (``D0_e_per_A2``,
    ``J_per_e_per_A2``); with another x (``time_s``) the same parameter is in that x's unit,
    so the unit comes from the x column, not from the parameter name."""
    if name.startswith("ln_"):
        return ""
    inv = f"1/({x_unit})" if "/" in x_unit else f"1/{x_unit}"
    for suf, unit in (
        ("_per_e2_per_A4", f"{inv}²"),
        ("_per_e_per_A2", inv),
        ("_e_per_A2", x_unit),
        ("_A3_per_x", f"Å³ per {x_unit}"),
        ("_A2_per_x", f"Å² per {x_unit}"),
        ("_A_per_x", f"Å per {x_unit}"),
        ("_A", "Å"),
        ("_eV", "eV"),
    ):
        if name.endswith(suf):
            return unit
    return ""


def _fit_rows(fits: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.concat([f.to_frame() for f in fits.values()], ignore_index=True)


@register_step(
    "quantify.kinetics",
    input_kinds={"frames": Kind("table")},
    inputs=("frames",),
    outputs=("ranking", "params"),
    output_kinds={"ranking": Kind("table"), "params": Kind("table")},
    params={
        "process": Param(str, "br_loss", "process whose models are compared", choices=_PROCESSES),
        "x": Param(str, "cumulative_dose_e_per_A2", "column of the independent variable"),
        "y": Param(str, "n_Br", "column of the observable"),
        "criterion": Param(
            str, "aicc", "model-selection criterion", choices=("aic", "aicc", "bic")
        ),
        "likelihood": Param(
            str, "gaussian", "gaussian or poisson (raw counts)", choices=("gaussian", "poisson")
        ),
        "ci": Param(str, "wald", "confidence intervals", choices=("profile", "bootstrap", "wald")),
        "cumulative": Param(bool, False, "y is a cumulative count (fit its increments)"),
        "label": Param(str, "", "label in the report"),
    },
    requires=(COMPARE,),
    section="kinetics",
    doc="Fit every kinetic model of a process (max. likelihood), rank by AICc/BIC.",
)
def quantify_kinetics(ctx: Any, frames: Any) -> dict[str, Any]:

    compare_models = api(COMPARE)

    p = ctx.params
    ctx.need_columns("frames", frames, {p["x"]: "`x` =", p["y"]: "`y` ="})
    x = frames[p["x"]].to_numpy(float)
    y = frames[p["y"]].to_numpy(float)
    finite = y[np.isfinite(y)]
    flat = finite.size > 0 and bool(np.all(finite == finite[0]))
    if flat:
        # every model fits a constant (e.g. no cluster ever nucleated): the ranking then
        # picks a model by its parameter count and its "rate" is noise, not a mechanism
        warnings.warn(
            f"`y` = {p['y']!r} is constant ({finite[0]:.4g}) in all {finite.size} frames: "
            f"no {p['process'].replace('_', ' ')} kinetics to fit; the model ranking and "
            "its parameters carry no information",
            UserWarning,
            stacklevel=1,
        )
    ranking, fits = compare_models(
        x,
        y,
        p["process"],
        criterion=p["criterion"],
        likelihood=p["likelihood"],
        ci=p["ci"],
        cumulative=p["cumulative"],
        rng=ctx.rng(),
    )
    params = _fit_rows(fits)
    best = ranking.loc[0, "model"]
    label = p["label"] or ctx.step_id
    ranking.attrs["label"] = label
    ctx.table(
        "ranking",
        ranking[["model", "n_params", p["criterion"], "delta", "weight", "mechanism", "status"]],
        title=f"Model ranking: {p['process']} ({label})",
        caption=f"Selected: {best}. Akaike weights from Δ{p['criterion'].upper()}.",
    )
    bf = fits[best]
    row = ranking.loc[0]
    mech = f"{row['mechanism']}; " if row.get("mechanism") else ""
    if flat:
        ctx.text(
            f"{label}: {p['y']} does not change over the series ({finite[0]:.4g} in every "
            f"frame): no {p['process'].replace('_', ' ')} kinetics; no model is selected.",
            section="mechanism",
            title="",
        )
    else:
        ctx.text(
            f"{label}: {p['process'].replace('_', ' ')} is best described by {best} "
            f"({mech}Akaike weight {float(row['weight']):.2f} among {len(ranking)} models).",
            section="mechanism",
            title="",
        )
    # the rate-like parameter goes to the mechanism summary, all parameters to this section
    offsets = ("N0", "N_inf", "r0_A", "D0_e_per_A2", "B_max", "f_surface")
    key = next((n for n in bf.params if n not in offsets), next(iter(bf.params)))
    x_unit = _x_unit(p["x"])
    for name, v in bf.params.items():
        if flat:
            break
        ctx.metric(
            f"{label}: {name}",
            v,
            unit=_param_unit(name, x_unit),
            err=bf.stderr.get(name),
            section="mechanism" if name == key else "kinetics",
            caption=f"{best} ({p['process']}, x = {p['x']}), ±1σ",
        )
    from perovstem.plot.overview import plot_xy

    ax = plot_xy(frames, p["x"], [p["y"]], marker=".")
    xs = np.linspace(np.nanmin(x), np.nanmax(x), 200)
    ax.plot(xs, bf.predict(xs), "-", color="k", lw=1.2, label=f"{best}")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{p['process']} ({label})")
    ctx.figure(
        "fit",
        ax.figure,
        title=f"{p['process']} kinetics ({label})",
        caption=f"Data and the selected model ({best}).",
    )
    return {"ranking": ranking, "params": params}


@register_step(
    "quantify.br_loss",
    input_kinds={"series": Kind("series"), "frames": Kind("table")},
    inputs=("series",),
    optional_inputs=("frames", "truth"),
    outputs=("frames", "params"),
    output_kinds={"frames": Kind("table"), "params": Kind("table")},
    params={
        "f_bulk": Param(float, 0.1, "bulk/surface Br desorption ratio f", min=0.0, max=1.0),
        "n_templates": Param(int, 3, "structural templates (their spread enters the CI)", min=1),
        "cd_fraction": Param(
            float, 0.0, "Cd fraction x of the crystal (template)", min=0.0, max=1.0
        ),
        "termination": Param(
            str,
            "CsBr",
            "crystal faces of the template (a PbBr2-terminated crystal measured with the CsBr "
            "template reads D_Br 22-52 % high)",
            choices=("CsBr", "PbBr2"),
        ),
        "label": Param(str, "", "label in the report"),
        "caveat": Param(str, "", "sentence on where the assumptions may not hold"),
    },
    requires=(BR_IMAGES, BR_FIT),
    section="kinetics",
    doc="Br loss and D_Br measured from the images (total cross-section per frame mapped onto "
    "a structural KMC template, quantify.br_loss_from_images); merges the per-frame image "
    "columns into `frames` (for quantify.mechanism) and writes D_Br for quantify.dose_rate; "
    "with the simulator's frames as `truth`, the same fit on the exact Br counts for "
    "comparison.",
)
def quantify_br_loss(ctx: Any, series: Any, frames: Any = None, truth: Any = None) -> dict:
    import pandas as pd

    p = ctx.params
    res = api(BR_IMAGES)(
        series,
        f_bulk=p["f_bulk"],
        n_templates=p["n_templates"],
        cd_fraction=p["cd_fraction"],
        termination=p["termination"],
        rng=ctx.rng(),
    )
    label = p["label"] or ctx.step_id
    z = 1.959963984540054  # the interval is symmetric in log D (Wald)
    d = res.D_Br_e_per_A2
    sd = d * (np.log(res.ci_high) - np.log(res.ci_low)) / (2 * z)
    cols = res.frame_columns()
    base = series.frames_table() if frames is None else frames
    out = base.merge(cols, on="frame", how="left")
    params = pd.DataFrame(
        {
            "model": ["br_exposed_hazard"],
            "param": ["D_Br_e_per_A2"],
            "value": [d],
            "stderr": [sd],
            "ci_low": [res.ci_low],
            "ci_high": [res.ci_high],
            "source": ["images"],
        }
    )
    n_used = int(res.info.get("n_frames_used", len(res.frames)))
    ctx.metric(
        f"D_Br from images ({label})",
        d,
        err=sd,
        unit="e⁻/Å²",
        section="mechanism",
        caption=f"exposed-Br hazard fit of the Br loss measured from the total cross-section "
        f"of {n_used} frames (±1σ; 95 % CI [{res.ci_low:.3g}, {res.ci_high:.3g}])",
    )
    ctx.text(
        f"D_Br from images ({label}): {d:.3g} e⁻/Å² [{res.ci_low:.3g}, {res.ci_high:.3g}] "
        f"(95 % CI), {res.n_lost:.0f} Br lost over {n_used} frames; crystal of "
        f"{'×'.join(map(str, res.info.get('cells', ())))} cells. Assumes a "
        + (
            f"CsCd{p['cd_fraction']:g}Pb{1 - p['cd_fraction']:g}Br₃"
            if p["cd_fraction"]
            else "CsPbBr₃"
        )
        + f" [001] {p['termination']}-terminated cuboid, wholly in view with its Pb⁰, pristine "
        "in the first "
        f"frame, f = {p['f_bulk']:g}." + (f" {p['caveat']}" if p["caveat"] else ""),
        section="mechanism",
    )
    truth_cum = None
    if truth is not None and not isinstance(truth, pd.DataFrame):
        import warnings

        # wired by name to another step's `truth` (e.g. simulate.insitu_series' per-frame
        # dict) instead of the KMC frames table
        warnings.warn(
            f"quantify.br_loss: the `truth` input is a {type(truth).__name__}, not the KMC "
            "frames table; the exact-count comparison is skipped (wire truth = "
            '"<simulate.kmc id>.frames")',
            UserWarning,
            stacklevel=2,
        )
        truth = None
    if truth is not None and {"n_Br", "n_Br_surface", "n_Br_desorbed"} <= set(truth.columns):
        ini = truth.attrs.get("initial", {})
        if "n_Br" in ini and "n_Br_surface" in ini:
            t = truth.iloc[:n_used]
            n_s = np.r_[ini["n_Br_surface"], t["n_Br_surface"].to_numpy(float)]
            n_b = np.r_[ini["n_Br"], t["n_Br"].to_numpy(float)] - n_s
            ft = api(BR_FIT)(
                t["dose_e_per_A2"].to_numpy(float),
                t["n_Br_desorbed"].to_numpy(float),
                n_s,
                n_b,
                f_bulk=p["f_bulk"],
            )
            ctx.metric(
                f"D_Br from the exact Br counts ({label}, simulator truth)",
                ft.D_Br_e_per_A2,
                err=ft.D_Br_e_per_A2 * (np.log(ft.ci_high) - np.log(ft.ci_low)) / (2 * z),
                unit="e⁻/Å²",
                section="kinetics",
                caption="same hazard fit on the simulator's exact Br lost and exposed/bulk Br "
                "over the same frames (reference for the image-derived value)",
            )
            truth_cum = np.cumsum(t["n_Br_desorbed"].to_numpy(float))
    from perovstem.plot.overview import plot_xy

    fr = res.frames.assign(
        cumulative_dose_e_per_A2=np.cumsum(res.frames["dose_e_per_A2"].to_numpy(float)),
        Br_lost_images=res.frames["n_lost_cumulative"].to_numpy(float),
    )
    ys = ["Br_lost_images"]
    if truth_cum is not None and len(truth_cum) == len(fr):
        fr["Br_lost_truth"] = truth_cum
        ys.append("Br_lost_truth")
    ax = plot_xy(fr, "cumulative_dose_e_per_A2", ys, marker=".", ylabel="Br lost (cumulative)")
    ctx.figure(
        "br_lost",
        ax.figure,
        title=f"Br loss from the images ({label})",
        caption="Cumulative Br lost from the total cross-section of each frame (structural "
        "template)" + (", and the simulator's exact count" if len(ys) > 1 else "") + ".",
    )
    return {"frames": out, "params": params}


@register_step(
    "quantify.arrhenius",
    input_kinds={"frames": Kind("table")},
    inputs=("frames",),
    outputs=("rates", "fit"),
    output_kinds={"rates": Kind("table"), "fit": Kind("table")},
    params={
        "y": Param(str, "n_Br", "observable whose first-order loss rate is measured"),
        "x": Param(str, "time_s", "time column, s"),
        "label": Param(str, "", "source label in the report (e.g. 'truth' or 'images')"),
    },
    requires=(ARRHENIUS, FIT),
    section="kinetics",
    doc="First-order loss rate at each temperature of a heating series, then an Arrhenius fit.",
)
def quantify_arrhenius(ctx: Any, frames: Any) -> dict[str, Any]:
    import pandas as pd

    fit_arrhenius, fit_model = api(ARRHENIUS), api(FIT)

    p = ctx.params
    ctx.need_columns(
        "frames",
        frames,
        {"temperature_K": "the temperatures", p["x"]: "`x` =", p["y"]: "`y` ="},
    )
    rows = []
    for t, sub in frames.groupby("temperature_K", sort=True):
        x = sub[p["x"]].to_numpy(float)
        x = x - x.min()
        r = fit_model(x, sub[p["y"]].to_numpy(float), "br_first_order", ci="wald")
        tau, err = r.params["D_Br_e_per_A2"], r.stderr["D_Br_e_per_A2"]
        row = {
            "temperature_K": float(t),
            "tau_s": tau,
            "tau_err_s": err,
            "rate_per_s": 1.0 / tau,
            "rate_err_per_s": err / tau**2,
        }
        if {"n_Br_desorbed_thermal", "n_Br_desorbed"} <= set(sub.columns):
            # simulator bookkeeping: which share of the Br left thermally (not beam-driven)
            tot = float(sub["n_Br_desorbed"].sum())
            row["thermal_fraction"] = (
                float(sub["n_Br_desorbed_thermal"].sum()) / tot if tot else 0.0
            )
        rows.append(row)
    rates = pd.DataFrame(rows)
    err = rates["rate_err_per_s"].to_numpy()
    ok = bool(np.all(np.isfinite(err) & (err > 0)))
    fit = fit_arrhenius(
        rates["temperature_K"], rates["rate_per_s"], rate_err=err if ok else None, ci="wald"
    )
    src = f" ({p['label']})" if p["label"] else ""
    t_lo, t_hi = rates["temperature_K"].min(), rates["temperature_K"].max()
    ctx.metric(
        f"apparent activation energy Ea of {p['y']} loss{src}",
        fit.params["Ea_eV"],
        err=fit.stderr["Ea_eV"],
        unit="eV",
        section="mechanism",
        caption=f"single Arrhenius fit of the first-order loss rates of {p['y']} over "
        f"{t_lo:g}–{t_hi:g} K, ±1σ. The rate is the sum of a beam-driven (athermal) and a "
        "thermally activated term: Ea ≈ 0 means the beam-driven loss dominates over this "
        "range, not that no thermal loss exists; where thermal desorption matters the "
        "apparent Ea rises and depends on the range (it is not the desorption energy)",
    )
    if "thermal_fraction" in rates:
        th = rates["thermal_fraction"].to_numpy(float)
        ctx.text(
            f"Thermal share of the Br lost{src}: "
            + ", ".join(
                f"{t:g} K {100 * v:.2g} %" for t, v in zip(rates["temperature_K"], th, strict=True)
            )
            + " (simulator bookkeeping). "
            + (
                "Thermal desorption is a minor share at every temperature: the apparent Ea "
                "reflects the beam-driven loss."
                if np.nanmax(th) < 0.25
                else "Thermal desorption is a major share at the highest temperatures: the "
                "apparent Ea mixes the athermal and the thermal channel."
            ),
            section="mechanism",
        )
    ctx.table("rates", rates, title="Loss rate per temperature")
    from perovstem.plot.overview import plot_xy

    inv = rates.assign(
        inv_T_per_K=1.0 / rates["temperature_K"],
        ln_rate=np.log(rates["rate_per_s"]),
        ln_rate_err=rates["rate_err_per_s"] / rates["rate_per_s"],
    )
    ax = plot_xy(
        inv,
        "inv_T_per_K",
        ["ln_rate"],
        yerr=["ln_rate_err"],
        xlabel="1/T (1/K)",
        ylabel="ln k (k in 1/s)",
    )
    ax.set_title(f"Ea = {fit.params['Ea_eV']:.3g} ± {fit.stderr['Ea_eV']:.2g} eV")
    ctx.figure(
        "arrhenius",
        ax.figure,
        title="Arrhenius plot",
        caption="First-order loss rate vs inverse temperature, ±1σ.",
    )
    return {"rates": rates, "fit": fit.to_frame()}


@register_step(
    "quantify.dose_rate",
    input_kinds={"params_low": Kind("table"), "params_high": Kind("table")},
    inputs=("params_low", "params_high"),
    outputs=("ranking",),
    output_kinds={"ranking": Kind("table")},
    params={
        "dose_rates": Param(
            list,
            [50.0, 200.0],
            "dose rates of the two series, e⁻/Å²/s",
            item_type=float,
            length=2,
        ),
        "param": Param(str, "D_Br_e_per_A2", "dose constant fitted in each series"),
        "label": Param(str, "", "source label in the report (e.g. 'truth' or 'images')"),
    },
    requires=(DOSE_RATE,),
    section="kinetics",
    doc="Dose-controlled or time-controlled? Compare rate laws across dose rates.",
)
def quantify_dose_rate(ctx: Any, params_low: Any, params_high: Any) -> dict[str, Any]:
    from perovstem.errors import DataError

    fit_dose_rate_dependence = api(DOSE_RATE)

    p = ctx.params
    src = f" ({p['label']})" if p["label"] else ""
    phi = np.asarray(p["dose_rates"], float)
    rates, errs = [], []
    for tab in (params_low, params_high):
        row = tab[tab["param"] == p["param"]]
        if row.empty:
            raise DataError(f"no parameter {p['param']!r} in the kinetics table")
        d, e = float(row["value"].iloc[0]), float(row["stderr"].iloc[0])
        rates.append(1.0 / d)  # events per e⁻/Å² ...
        errs.append(e / d**2)
    rate_per_s = np.asarray(rates) * phi  # ... times e⁻/Å²/s = per second
    err_per_s = np.asarray(errs) * phi
    ok = bool(np.all(np.isfinite(err_per_s) & (err_per_s > 0)))
    ranking, fits = fit_dose_rate_dependence(phi, rate_per_s, rate_err=err_per_s if ok else None)
    ctx.table(
        "ranking",
        ranking[["model", "n_params", "aicc", "delta", "weight", "mechanism"]],
        title="Dose-rate dependence",
        caption="Rate per second at each dose rate; a dose-controlled process scales ∝ φ.",
    )
    pl = fits.get("power_law")
    if pl is not None:
        ctx.metric(
            f"dose-rate exponent α{src}",
            pl.params["alpha"],
            err=pl.stderr.get("alpha"),
            section="mechanism",
            caption="rate per second ∝ φ^α: α = 1 dose-controlled, α = 0 time-controlled",
        )
    best = ranking.iloc[0]
    w = float(best["weight"])
    why = (
        f"Akaike weight {w:.2f}"
        if np.isfinite(w)
        else f"only {len(phi)} dose rates: model weights undefined; measure a third dose "
        "rate to discriminate"
    )
    ctx.text(
        f"Dose-rate dependence of {p['param']}{src}: {best['model']} preferred ({why}).",
        section="mechanism",
    )
    return {"ranking": ranking}


@register_step(
    "quantify.mechanism",
    inputs=(),
    optional_inputs=(
        "frames_a",
        "frames_b",
        "frames_c",
        "frames_d",
        "tracks_a",
        "tracks_b",
        "tracks_c",
        "tracks_d",
        "tracks_a2",
        "tracks_b2",
        "tracks_c2",
        "tracks_d2",
        "condition_frames",
        "condition_tracks",
    ),
    list_inputs=("condition_frames", "condition_tracks"),
    input_kinds={
        **{
            f"frames_{k}": Kind(
                "table",
                param_columns=("x",),
                source="a per-frame table: `frames` of simulate.kmc or quantify.br_loss, "
                "`counts` of insitu.clusters",
            )
            for k in "abcd"
        },
        **{
            f"tracks_{k}": Kind(
                "table",
                ("frame", "x_A", "y_A", "track_id"),
                "the `detections` output of insitu.clusters (tracked clusters)",
            )
            for k in "abcd"
        },
        **{
            f"tracks_{k}2": Kind(
                "table",
                ("frame", "x_A", "y_A", "track_id"),
                "the `detections` of a second field (another crystal) imaged under the "
                f"condition of frames_{k}: its tracks are pooled with tracks_{k} for the hop "
                f"rate (ids kept apart); the per-frame fits use frames_{k} only",
            )
            for k in "abcd"
        },
        "condition_frames": Kind(
            "table",
            param_columns=("x",),
            source="per-frame tables, one per further condition (after frames_a ... d): "
            "`counts` of insitu.clusters, `frames` of simulate.kmc or quantify.br_loss",
        ),
        "condition_tracks": Kind(
            "table",
            ("frame", "x_A", "y_A", "track_id"),
            "`detections` of insitu.clusters, one per field; `tracks_of` says the condition "
            "of each (default: the i-th belongs to the i-th of condition_frames)",
        ),
    },
    outputs=("summary",),
    output_kinds={"summary": Kind("table")},
    params={
        "x": Param(str, "cumulative_dose_e_per_A2", "independent variable column"),
        "max_step_A": Param(
            float,
            8.0,
            "largest step the cluster tracker links, Å (mobility diagnostics; truncation "
            "radius of the 'truncated' hop estimator)",
            min=0.1,
        ),
        "hop_estimator": Param(
            str,
            "moment",
            "cluster hop-rate estimator: 'moment' (all steps) or 'truncated' (maximum "
            "likelihood on the steps up to max_step_A, robust to links between two clusters; "
            "unstable with few steps per temperature)",
            choices=("moment", "truncated"),
        ),
        "mobility_tracks": Param(
            str,
            "strict",
            "tracks of the hop rate: 'strict' (each series' detections tracked again with "
            "ends and births of mobility_link_cost nats, refusing the unlikely links that "
            "the lineage needs for merges) or 'lineage' (the input track_id as it is)",
            choices=("strict", "lineage"),
        ),
        "mobility_link_cost": Param(
            float,
            MOBILITY_LINK_COST,
            "'strict' mobility tracks: cost of a track end and of a birth, nats (the "
            "lineage tracker's 6 keeps unlikely links)",
            min=0.01,
            max=50.0,
        ),
        "level": Param(float, 0.95, "confidence level", min=0.5, max=0.999),
        "sources": Param(
            list,
            [],
            "where each input table comes from (e.g. 'images', 'simulator truth'), one per "
            "condition in order frames_a, frames_b, ..., then condition_frames; shown with "
            "every row",
            item_type=str,
        ),
        "tracks_of": Param(
            list,
            [],
            "the condition of each condition_tracks table: its 0-based position among the "
            "conditions (frames_a ... frames_d given, then condition_frames, in that order); "
            "several tables of one condition are fields pooled for its hop rate (default: "
            "the i-th condition_tracks table belongs to the i-th condition_frames table)",
            item_type=int,
        ),
    },
    requires=(MECHANISM,),
    section="mechanism",
    doc="Mechanism table: best kinetic model and key parameter of every process per condition "
    "(temperature, dose rate, gas) and the dose-rate / temperature dependence across them; "
    "with cluster tracks (tracks_a ... for frames_a ...) also the Pb⁰ cluster hop rate per "
    "condition (from the detections tracked again with strict links, mobility_tracks) and the "
    "activation energy of Pb⁰ diffusion; tracks_a2 ... add a second field's tracks to a "
    "condition's hop rate (Ea within 0.05 eV needs about 200 hops per temperature: two "
    "fields of the demo's kind, docs/insitu.md); any number of further conditions and "
    "fields as the lists condition_frames and condition_tracks (with tracks_of); a figure of "
    "the hop rates against 1/kT with the Arrhenius line where they span two or more "
    "temperatures.",
)
def quantify_mechanism(
    ctx: Any,
    frames_a: Any = None,
    frames_b: Any = None,
    frames_c: Any = None,
    frames_d: Any = None,
    tracks_a: Any = None,
    tracks_b: Any = None,
    tracks_c: Any = None,
    tracks_d: Any = None,
    tracks_a2: Any = None,
    tracks_b2: Any = None,
    tracks_c2: Any = None,
    tracks_d2: Any = None,
    condition_frames: list[Any] | None = None,
    condition_tracks: list[Any] | None = None,
) -> dict[str, Any]:
    import pandas as pd

    from perovstem.errors import DataError

    fixed = (frames_a, frames_b, frames_c, frames_d)
    all_tracks = (tracks_a, tracks_b, tracks_c, tracks_d)
    second = (tracks_a2, tracks_b2, tracks_c2, tracks_d2)
    for i, tt in enumerate(all_tracks):
        if tt is not None and fixed[i] is None:
            raise DataError(f"tracks_{'abcd'[i]} given without frames_{'abcd'[i]}")
        if second[i] is not None and tt is None:
            raise DataError(f"tracks_{'abcd'[i]}2 given without tracks_{'abcd'[i]}")
    # the conditions: frames_a ... frames_d given, then condition_frames; each with its
    # fields' tracks (name, table), pooled for its hop rate
    conditions: list[Any] = []
    fields: list[list[tuple[str, Any]]] = []
    for i, t in enumerate(fixed):
        if t is not None:
            conditions.append(t)
            fields.append(
                [(f"tracks_{'abcd'[i]}{n}", x) for n, x in (("", all_tracks[i]), ("2", second[i]))]
            )
    n_fixed = len(conditions)
    for t in condition_frames or []:
        conditions.append(t)
        fields.append([])
    if not conditions:
        raise DataError(
            "quantify.mechanism needs at least one per-frame table (frames_a ... or "
            "condition_frames)"
        )
    listed = list(condition_tracks or [])
    tracks_of = [int(v) for v in ctx.params["tracks_of"]]
    if not tracks_of:
        n_list = len(conditions) - n_fixed
        if len(listed) > n_list:
            raise DataError(
                f"condition_tracks has {len(listed)} tables for {n_list} condition_frames; "
                "give `tracks_of` (the condition of each) to pool several fields per condition"
            )
        tracks_of = [n_fixed + j for j in range(len(listed))]
    elif len(tracks_of) != len(listed):
        raise DataError(
            f"`tracks_of` = {tracks_of!r} has {len(tracks_of)} entries for {len(listed)} "
            "condition_tracks tables; give one condition per table"
        )
    for j, (c, t) in enumerate(zip(tracks_of, listed, strict=True)):
        if not 0 <= c < len(conditions):
            raise DataError(
                f"`tracks_of` = {tracks_of!r}: entry {j} names condition {c}, but there are "
                f"{len(conditions)} conditions (0 ... {len(conditions) - 1}: frames_a ... "
                "given, then condition_frames)"
            )
        fields[c].append((f"condition_tracks[{j}]", t))
    sources = [str(v) for v in ctx.params["sources"]]
    if sources and len(sources) != len(conditions):
        raise DataError(
            f"`sources` has {len(sources)} labels for {len(conditions)} input tables; give "
            "one per table"
        )
    frames = pd.concat([t.assign(series=k) for k, t in enumerate(conditions)], ignore_index=True)
    strict = ctx.params["mobility_tracks"] == "strict"
    cost = float(ctx.params["mobility_link_cost"])
    tr = []
    linked: dict[str, Any] = {"tracks": "lineage"}  # how the hop rate's tracks were linked
    n_pooled = 0  # conditions whose hop rate pools several fields
    for k, field_tracks in enumerate(fields):
        field_tracks = [(name, t) for name, t in field_tracks if t is not None]
        n_pooled += len(field_tracks) > 1
        relinked = []
        for name, t in field_tracks:
            if strict:
                try:
                    t = api(MOBILITY_TRACKS)(t, max_step_A=ctx.params["max_step_A"], link_cost=cost)
                except DataError as exc:
                    raise DataError(
                        f"{name}: cannot track the detections again for the hop rate "
                        f"(mobility_tracks = 'strict'): {exc}; mobility_tracks = 'lineage' "
                        "uses their track_id as it is"
                    ) from None
                linked = dict(t.attrs["mobility_tracks"])
            relinked.append(t)
        if relinked:  # the fields' track ids kept apart: no hop across fields
            names = [name for name, _ in field_tracks]
            tr.append(api(POOL_FIELDS)(relinked, names=names).assign(series=k))
    kw: dict[str, Any] = {}
    if tr:
        kw = {
            "tracks": pd.concat(tr, ignore_index=True),
            "mobility": {
                "max_step_A": ctx.params["max_step_A"],
                "estimator": ctx.params["hop_estimator"],
                "rng": ctx.rng(),
            },
        }
    summary = api(MECHANISM)(frames, x=ctx.params["x"], level=ctx.params["level"], **kw)
    if tr:
        summary.attrs["mobility_tracks"] = linked
    if sources:
        # which table each condition came from (the summary records each condition's keys)
        keys = summary.attrs.get("conditions", [])
        src = [
            sources[int(keys[int(c)]["series"])]
            if 0 <= int(c) < len(keys) and "series" in keys[int(c)]
            else ""
            for c in summary["condition"]
        ]
        summary["source"] = src
        # an across-condition row comes from the per-condition rows of its process and
        # parameter (the Br-loss dose-rate row from the D_Br rows only, not the first-order
        # Br-loss fits of other series)
        of_process = {
            "J_per_s": ("nucleation", "J_per_e_per_A2"),
            "J_per_e_per_A2": ("nucleation", "J_per_e_per_A2"),
            "Gamma1_per_s": ("mobility", "Gamma1_per_s"),
            "k_Br_per_s": ("br_loss", "D_Br_e_per_A2"),
        }
        for i in np.flatnonzero(summary["condition"].to_numpy() == -1):
            proc, param = of_process.get(str(summary["observable"].iloc[i]), ("", ""))
            of = (summary["process"] == proc) & (summary["param"] == param)
            used = summary.loc[of & (summary["condition"] >= 0), "source"]
            summary.iloc[i, summary.columns.get_loc("source")] = "+".join(
                dict.fromkeys(used)
            ) or "+".join(dict.fromkeys(sources))
    # conditions told apart by their gas only read alike ("[272 K, 1197.6 e⁻/Å²/s]" four
    # times): the gas joins the labels and the table where the conditions' gases differ
    per_cond = summary[summary["condition"] >= 0] if "condition" in summary else summary
    gases = per_cond["gas"].fillna("").astype(str) if "gas" in per_cond else pd.Series([""])
    several_gases = gases.nunique() > 1
    for _, row in summary.iterrows():
        text = str(row.get("text", "") or "").strip()
        if not text or text == "nan":
            continue
        if sources:
            text = f"{text} (from {row['source']})"
        cond = []
        t, phi = row.get("temperature_K"), row.get("dose_rate_e_per_A2_s")
        if t is not None and np.isfinite(float(t)):
            cond.append(f"{float(t):g} K")
        if phi is not None and np.isfinite(float(phi)):
            cond.append(f"{float(phi):g} e⁻/Å²/s")
        if several_gases and str(row.get("gas") or "") not in ("", "nan"):
            cond.append(str(row["gas"]))  # (conditions of two gases read alike)
        prefix = f"[{', '.join(cond)}] " if cond else ""
        ctx.text(prefix + text, section="mechanism")
    cols = [
        c
        for c in (
            "condition",
            "temperature_K",
            "dose_rate_e_per_A2_s",
            *(["gas"] if several_gases else []),
            "process",
            "observable",
            "selected_model",
            "weight",
            "param",
            "value",
            "ci_low",
            "ci_high",
            "source",
        )
        if c in summary.columns
    ]
    ctx.table(
        "summary",
        summary[cols],
        title="Mechanism per condition",
        max_rows=30,
        caption=f"{100 * ctx.params['level']:g} % confidence intervals."
        + (
            (
                f" Hop rates from the detections tracked again with ends and births of "
                f"{cost:g} nats (strict mobility tracks)."
                if strict
                else " Hop rates from the lineage tracks."
            )
            + (f" {n_pooled} condition(s) pool the tracks of several fields." if n_pooled else "")
            if tr
            else ""
        ),
    )
    mob = summary[(summary["process"] == "mobility") & summary["value"].notna()]
    if mob["temperature_K"].nunique() >= 2:  # hop rates at several temperatures: Arrhenius
        from perovstem.plot.insitu import plot_hop_rates

        ctx.figure(
            "hop_rates",
            plot_hop_rates(summary).figure,
            title=f"Pb⁰ cluster hop rate against temperature ({ctx.step_id})",
            caption="Hop rate Γ₁ of each condition (bootstrap interval over tracks) against "
            "1/k_BT; the activation energy in the title is the weighted Arrhenius fit of "
            "these rates (needs three or more temperatures).",
            section="mechanism",
        )
    return {"summary": summary}


@register_step(
    "quantify.model3d",
    input_kinds={
        "counts": Kind("table", ("x_A", "y_A", "n_atoms"), "the `counts` output of atoms.count"),
        "truth_atoms": Kind("atoms"),
        "image": Kind("image"),
        "composition": Kind(
            "table", ("x_A", "y_A", "n_cd"), "the `columns` output of atoms.composition"
        ),
    },
    inputs=("counts",),
    optional_inputs=("truth_atoms", "image", "composition"),
    outputs=("model", "sites"),
    output_kinds={"model": Kind("atoms"), "sites": Kind("table")},
    params={
        "n_chains": Param(int, 8, "independent Monte Carlo chains", min=1),
        "n_sweeps": Param(int, 100, "sweeps per chain", min=1),
        "lattice_A": Param(float, 5.87, "pseudo-cubic lattice parameter, Å", min=1.0),
    },
    requires=(MODEL3D,),
    section="facets",
    doc="3-D atomic model from the atom counts of one projection (lattice-gas Monte Carlo), "
    "with site-occupation probabilities; with `composition`, each Pb-Br column's Cd count "
    "replaces that many of its Pb at random depths.",
)
def quantify_model3d(
    ctx: Any, counts: Any, truth_atoms: Any = None, image: Any = None, composition: Any = None
) -> dict[str, Any]:
    p = ctx.params
    counts = counts[counts["n_atoms"].notna()].astype({"n_atoms": int})
    model = api(MODEL3D)(
        counts,
        lattice_A=p["lattice_A"],
        n_chains=p["n_chains"],
        n_sweeps=p["n_sweeps"],
        composition=composition,
        rng=ctx.rng(),
    )
    atoms = model.atoms
    from perovstem.report.plot3d import atoms_figure

    sym = atoms.get_chemical_symbols()
    lab = atoms.arrays.get("label")
    groups = [("Pb⁰ cluster" if lab is not None and lab[i] == 2 else s) for i, s in enumerate(sym)]
    ctx.plot3d(
        "model",
        atoms_figure(atoms.positions, sym, groups=groups, title="3-D model from atom counts"),
        title="3-D atomic model from counts",
        caption=f"Lowest-energy model of {p['n_chains']} Monte Carlo chains ({len(atoms)} atoms)"
        + (
            ""
            if composition is None
            else f"; {model.params['cd_atoms']} Cd from the composition, at random depths "
            "(one projection does not tell where along the beam)"
        )
        + ".",
    )
    if truth_atoms is not None:
        truth = truth_atoms.copy()
        origin = (getattr(image, "metadata", None) or {}).get("lab_origin_A")
        if origin is not None:  # simulated truth: lab frame -> image frame of the counts
            truth.positions[:, :2] -= np.asarray(origin, float)[:2]
        agree = api(AGREEMENT)(model.atoms, truth, lattice_A=p["lattice_A"])
        ctx.metric(
            "3-D model: atoms on the true site",
            100.0 * agree["fraction"],
            unit="%",
            section="facets",
            caption=f"precision {100 * agree['precision']:.1f} %",
        )
        if composition is not None:
            n_true = int(np.sum(np.asarray(truth.get_chemical_symbols()) == "Cd"))
            ctx.metric(
                "3-D model: Cd atoms",
                float(model.params["cd_atoms"]),
                section="facets",
                caption=f"truth {n_true}; from the composition's Cd per Pb-Br column",
            )
    return {"model": atoms, "sites": model.sites}
