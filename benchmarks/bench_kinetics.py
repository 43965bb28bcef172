"""Kinetic parameters of the demo recovered from its images, judged over seeds (issue #7).

The demo's kinetic sub-chains (``perovstem demo``, :func:`perovstem.pipeline.demo.demo_config`)
are run as pipeline steps, exactly as in the demo (same step ids and parameters, run seed
= the bench seed), restricted to what they need:

* D_Br from the images at 10³ and 4·10³ e⁻/Å²/s: ``simulate.nanocrystal`` →
  ``simulate.kmc`` → ``simulate.insitu_series`` → ``insitu.register`` → ``insitu.clusters``
  → ``quantify.br_loss``; then ``quantify.dose_rate`` (dose- or time-controlled: the
  simulator's Br desorption is per dose, so ``dose_controlled`` is the right mechanism);
* Pb⁰ diffusion Ea from the imaged mobility series (4 temperatures, 3 with ``--fast``, two
  fields each): ``simulate.kmc`` → … → ``insitu.clusters`` per temperature and field →
  ``quantify.mechanism`` ("mobility"): hop rate Γ₁ per temperature from the tracked clusters
  of both fields, Arrhenius Ea.

Truth: D_Br = :attr:`KineticParameters.D_Br_e_per_A2` (3·10⁴ e⁻/Å²), Ea =
``hop_activation_eV`` (0.62 eV), Γ₁(T) = ``hop_rate_per_s(T, φ)``.  Per seed the estimate and
its 95 % interval; over seeds the bias, RMS error, share within 10 % (Ea: 0.05 eV), interval
coverage with a Clopper–Pearson interval (seeds are independent 0/1 trials; a bootstrap over
seeds degenerates to [1, 1] when every interval covers) and the share with the right
mechanism.  Diagnostics per temperature: Γ̂₁/Γ₁ from the images, the same estimator on the
simulator's exact cluster tracks (sizes and positions: the estimator's own bias, e.g.
confinement on the crystal), and the RMS registration error (registered minus true drift).
For D_Br also the same hazard fit on the simulator's exact Br counts over the frames used
(the realisation's own value).

The Ea of the pipeline step (its default hop estimator, ``"moment"``, on its default strict
mobility tracks: the detections tracked again with ends and births of
``MOBILITY_LINK_COST`` nats) is ``ea``; with ``--compare truncated`` (default) the step's Ea
is recomputed with ``cluster_hop_rate(estimator="truncated")`` on the same tracks with the
same bootstrap stream (``ea_truncated``: what the step gives with ``hop_estimator =
"truncated"``, to the last digit).  ``--link-costs lineage,3,4`` (default ``lineage``) also
recomputes both estimators' Ea on the same draws with the ``insitu.clusters`` lineage tracks
(``ea_lineage``, ``ea_lineage_truncated``: the step before the strict mobility tracks) and
with strict tracks of other costs (``ea_cost3``, ``ea_cost3_truncated``, ...).

Scaling of the Ea (how much data 0.05 eV needs): ``--mobility-only`` runs the crystal and
the mobility chain only (no D_Br, no dose-rate mechanism; the same step ids, hence the same
draws as the full bench); ``--mobility-frames N`` sets the frames per mobility series (demo
20), ``--mobility-frame-dose D`` the dose per frame in e⁻/Å² (demo 2000, the frame times
stay the demo's) and ``--mobility-series R`` images R crystals (fields) per temperature (the
demo's 2: the same chain under step ids ``..._r1``, ``..._r2``: own KMC and image draws; the
step pools the first two, ``tracks_<k>2``; with 1 it reads the first field only, the demo
before session 23); ``ea_pooled<m>`` (m = 1, 2, 4, … and R, but the step's own) is the Ea of
the first m fields' tracks pooled per temperature, with the step's estimator, options and
bootstrap stream (the default run's ``ea_pooled1`` is the one-field demo's Ea on the same
draws).  Results written before session 23 (``bench_kinetics_mobility_*.json``): there ``ea``
is the first field's Ea and ``ea_pooled2`` the two fields'.
With none of these flags the configuration is the demo's, step for step.

Run: ``python benchmarks/bench_kinetics.py [--seeds 12] [--first-seed 0] [--fast]
[--compare truncated] [--link-costs lineage] [--mobility-only] [--mobility-frames N]
[--mobility-frame-dose D] [--mobility-series R]``; writes ``benchmarks/results/bench_kinetics.json`` (``--out`` to change;
``bench_kinetics_seeds100.json`` is ``--first-seed 100``).  Default: full demo sizes (48 Å
crystal, 40 frames per dose rate, 4 temperatures × 2 fields × 20 mobility frames), 12 seeds:
599 s on 2 cores beside a demo run, load 0.3–1.3 (31–46 s per seed; one field per
temperature: ≈ 20 s per seed when idle, after the first's numba compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from perovstem.pipeline.config import parse_config  # noqa: E402
from perovstem.pipeline.demo import demo_config  # noqa: E402
from perovstem.pipeline.runner import run_pipeline  # noqa: E402
from perovstem.quantify.br_loss import fit_br_desorption  # noqa: E402
from perovstem.quantify.mechanism import mechanism_summary  # noqa: E402
from perovstem.quantify.mobility import cluster_hop_rate, pool_field_tracks  # noqa: E402
from perovstem.simulate.kmc_params import KineticParameters  # noqa: E402

KP = KineticParameters()
TRUE_D_BR = float(KP.D_Br_e_per_A2)
TRUE_EA = float(KP.hop_activation_eV)
RATES = {"low": 1000.0, "high": 4000.0}

#: the demo steps the kinetic sub-chains need (by id prefix)
NEEDED = ("nc", "kmc_", "series_", "register_", "clusters_", "brloss_", "dose_rate", "mobility")


#: the steps of one imaged mobility series (the demo's, per temperature and field)
MOB_CHAIN = ("kmc_mob", "series_mob", "register_mob", "clusters_mob")

#: imaged fields per mobility temperature in the demo (its ``tracks_<k>2`` inputs)
DEMO_FIELDS = 2


def kinetic_config(
    seed: int,
    *,
    fast: bool,
    mobility_only: bool = False,
    mobility_frames: int | None = None,
    mobility_series: int | None = None,
    mobility_frame_dose: float | None = None,
    probe_sigma_A: float | None = None,
) -> dict:
    """The demo configuration with only the steps of the D_Br and Pb⁰-diffusion chains.

    ``mobility_only``: only the crystal and the Pb⁰-diffusion chain (no D_Br);
    ``mobility_frames``: frames per mobility series (the demo's 20, or 12 with ``fast``);
    ``mobility_frame_dose``: dose per mobility frame, e⁻/Å² (the demo's 2000; the frame
    time stays the demo's, ~1 hop of a 20-atom cluster per frame, so the dose rate changes);
    ``probe_sigma_A``: every series imaged with this probe σ, Å (None: the simulator's);
    ``mobility_series``: imaged fields per temperature (None: the demo's 2).  Field ``r`` ≥ 1
    is the first field's chain with step ids suffixed ``_r{r}`` (the demo's second field is
    ``_r1``), hence its own KMC and image draws — another crystal of the same kind imaged at
    that temperature.  The mobility step pools the first two fields (``tracks_<k>2``, as the
    demo); with 1 it reads the first field only (the demo before session 23).  With the
    defaults the configuration is the demo's, step for step.
    """
    cfg = demo_config(fast=fast, seed=seed)
    need = (*MOB_CHAIN, "mobility") if mobility_only else NEEDED[1:]
    steps = [
        s
        for s in cfg["step"]
        if (s["id"] == "nc" or s["id"].startswith(need)) and not s["id"].startswith("clusters_fit")
    ]
    if mobility_frames is not None:
        for s in steps:
            if s["id"].startswith("kmc_mob"):
                s["n_frames"] = int(mobility_frames)
    if mobility_frame_dose is not None:
        for s in steps:
            if s["id"].startswith("kmc_mob"):
                s["dose_rate_e_per_A2_s"] = float(mobility_frame_dose) / s["frame_time_s"]
    if probe_sigma_A is not None:
        for s in steps:
            if s.get("run") == "simulate.insitu_series":
                s["probe_sigma_A"] = float(probe_sigma_A)
    n_fields = DEMO_FIELDS if mobility_series is None else int(mobility_series)
    if n_fields < 1:
        raise ValueError(f"mobility_series must be >= 1, got {mobility_series!r}")
    mob = next(s for s in steps if s["id"] == "mobility")
    if n_fields < DEMO_FIELDS:  # the first field alone, read by the step alone
        steps = [s for s in steps if not (s["id"].startswith(MOB_CHAIN) and "_r1" in s["id"])]
        mob["inputs"] = {k: v for k, v in mob["inputs"].items() if not k.endswith("2")}
    # fields beyond the demo's: the first field's chain again under its own step ids
    first = [s for s in steps if s["id"].startswith(MOB_CHAIN) and "_r1" not in s["id"]]
    extra = [
        {
            **s,
            "id": f"{s['id']}_r{r}",
            "inputs": {
                k: v if v.startswith("nc.") else v.replace(".", f"_r{r}.", 1)
                for k, v in s["inputs"].items()
            },
        }
        for r in range(DEMO_FIELDS, n_fields)
        for s in first
    ]
    i = steps.index(mob)  # (the extra chains before the step that reads them)
    steps = steps[:i] + extra + steps[i:]
    cfg["step"] = steps
    cfg["run"] = {**cfg["run"], "on_error": "stop", "name": "bench-kinetics"}
    return cfg


def _fields_in(run: Path, tag: str) -> int:
    """Imaged fields of the mobility series ``tag`` in the run (``clusters_<tag>_r<k>``)."""
    n = 1
    while (run / "tables" / f"{tag}_r{n}.detections.parquet").exists():
        n += 1
    return n


def _table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run / "tables" / f"{name}.parquet")


def _exact_d_br(run: Path, tag: str) -> float:
    """The br_loss step's reference: the hazard fit on the exact Br counts, same frames."""
    img = _table(run, f"brloss_{tag}.frames")
    n_used = int(img["n_Br_lost_image"].notna().sum())
    truth = _table(run, f"kmc_{tag}.frames")
    ini = truth.attrs.get("initial", {})
    t = truth.iloc[:n_used]
    n_s = np.r_[ini["n_Br_surface"], t["n_Br_surface"].to_numpy(float)]
    n_b = np.r_[ini["n_Br"], t["n_Br"].to_numpy(float)] - n_s
    f = fit_br_desorption(
        t["dose_e_per_A2"].to_numpy(float), t["n_Br_desorbed"].to_numpy(float), n_s, n_b
    )
    return float(f.D_Br_e_per_A2)


def _registration_rms_A(run: Path, tag: str) -> float:
    """RMS over frames of (registered − true) drift, relative to frame 0, Å (both axes)."""
    reg = _table(run, f"register_{tag}.drift")
    tru = _table(run, f"series_{tag}.truth.drift")
    m = reg.merge(tru, on="frame", suffixes=("_reg", "_true"))
    err = []
    for ax in ("dy_A", "dx_A"):
        a = m[f"{ax}_reg"].to_numpy(float) - m[f"{ax}_true"].to_numpy(float)
        err.append(a - a[0])
    e = np.asarray(err)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=0))))


def _ea_with(
    run: Path, seed: int, estimator: str, *, fast: bool, tracks: str = "strict",
    cost: float | None = None, n_series: int | None = None,
) -> dict:  # fmt: skip
    """The mobility step's Ea recomputed with another hop estimator and/or other tracks on
    the same detections (same inputs, options and bootstrap stream as the step: before/after
    on one draw).  ``tracks``: ``"strict"`` (the detections tracked again with ends and
    births of ``cost`` nats, default the step's) or ``"lineage"`` (the ``insitu.clusters``
    step's tracks, what the step used before the strict mobility tracks).  ``n_series``:
    the tracks of the first ``n_series`` fields per temperature (``--mobility-series``)
    pooled into one hop rate per temperature (track ids kept apart; frame times and the
    frame table of the first field); None: as the step (the first two fields where the run
    has them, as the demo, else one)."""
    from perovstem.insitu.tracking import MOBILITY_LINK_COST, mobility_tracks
    from perovstem.pipeline.runner import _step_seed

    cost = MOBILITY_LINK_COST if cost is None else float(cost)
    step = next(s for s in kinetic_config(seed, fast=fast)["step"] if s["id"] == "mobility")
    frames, trs = [], []
    for k, key in enumerate(sorted(i for i in step["inputs"] if i.startswith("frames_"))):
        tag = step["inputs"][key].split(".")[0]
        frames.append(_table(run, f"{tag}.counts").assign(series=k))
        n = min(_fields_in(run, tag), DEMO_FIELDS) if n_series is None else int(n_series)
        fields = []
        for r in range(n):
            det = _table(run, f"{tag}_r{r}.detections" if r else f"{tag}.detections")
            if tracks == "strict":
                det = mobility_tracks(det, max_step_A=8.0, link_cost=cost)
            fields.append(det)
        trs.append(pool_field_tracks(fields).assign(series=k))  # track ids kept apart
    rng = np.random.default_rng([_step_seed(seed, "mobility"), 0])
    s = mechanism_summary(
        pd.concat(frames, ignore_index=True),
        x="cumulative_dose_e_per_A2",
        level=0.95,
        tracks=pd.concat(trs, ignore_index=True),
        mobility={"max_step_A": 8.0, "estimator": estimator, "rng": rng},
    )
    e = s[(s["process"] == "temperature") & (s["observable"] == "Gamma1_per_s")]
    g = s[s["process"] == "mobility"].sort_values("temperature_K")
    # the hop rate per temperature (s⁻¹) and its lag-1 steps, as the Ea used them
    per_t = {"gamma1_per_s": g["value"].tolist(), "n_steps": g["n_points"].tolist()}
    if not len(e):
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), **per_t}
    return {**{k: float(e.iloc[0][k]) for k in ("value", "ci_low", "ci_high")}, **per_t}


def one_seed(
    seed: int, *, fast: bool, compare: str | None = None, link_costs: tuple = (),
    mobility_only: bool = False, mobility_frames: int | None = None,
    mobility_series: int | None = None, mobility_frame_dose: float | None = None,
    probe_sigma_A: float | None = None,
) -> dict:  # fmt: skip
    n_fields = DEMO_FIELDS if mobility_series is None else int(mobility_series)
    n_step = min(n_fields, DEMO_FIELDS)  # the fields the mobility step pools
    cfg = parse_config(
        kinetic_config(
            seed,
            fast=fast,
            mobility_only=mobility_only,
            mobility_frames=mobility_frames,
            mobility_series=mobility_series,
            mobility_frame_dose=mobility_frame_dose,
            probe_sigma_A=probe_sigma_A,
        ),
        source="<bench_kinetics>",
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_kinetics_"))
    run = tmp / "run"
    t0 = time.perf_counter()
    try:
        run_pipeline(cfg, out=run, scheduler="serial", quiet=True, report=False)
        wall = time.perf_counter() - t0
        out: dict = {"seed": seed, "wall_s": round(wall, 1), "d_br": {}}
        for tag, phi in ({} if mobility_only else RATES).items():
            p = _table(run, f"brloss_{tag}.params").iloc[0]
            out["d_br"][tag] = {
                "dose_rate_e_per_A2_s": phi,
                "value": float(p["value"]),
                "ci_low": float(p["ci_low"]),
                "ci_high": float(p["ci_high"]),
                "exact_counts": _exact_d_br(run, tag),
            }
        if not mobility_only:
            rk = _table(run, "dose_rate.ranking")
            out["dose_rate_model"] = str(rk.loc[rk["selected"], "model"].iloc[0])
        summ = _table(run, "mobility.summary")
        ea = summ[(summ["process"] == "temperature") & (summ["observable"] == "Gamma1_per_s")]
        per_t = []
        for _, r in summ[summ["process"] == "mobility"].iterrows():
            temp = float(r["temperature_K"])
            tag = f"mob{int(temp)}"
            frames = _table(run, f"kmc_{tag}.frames")
            dt = float(np.median(np.diff(frames["time_s"].to_numpy(float))))
            phi = float(frames["dose_rate_e_per_A2_s"].iloc[0])
            g_true = KP.hop_rate_per_s(temp, phi)
            fields = [tag, *(f"{tag}_r{r}" for r in range(1, n_step))]  # the step's
            # the exact cluster tracks of the fields the step pools (ids kept apart)
            exact = [_table(run, f"kmc_{f}.clusters") for f in fields]
            exact = pool_field_tracks([t.assign(track_id=t["cluster_id"]) for t in exact])
            oracle = cluster_hop_rate(exact, frame_time_s=dt, n_boot=20, rng=0)
            per_t.append(
                {
                    "temperature_K": temp,
                    "frame_time_s": dt,
                    "gamma1_true_per_s": g_true,
                    "gamma1_per_s": float(r["value"]),
                    "ci_low": float(r["ci_low"]),
                    "ci_high": float(r["ci_high"]),
                    "ratio_images": float(r["value"]) / g_true,
                    "ratio_exact_tracks": oracle["rate_per_s"] / g_true,
                    "n_steps": int(r["n_points"]),
                    "registration_rms_A": float(
                        np.sqrt(np.mean([_registration_rms_A(run, f) ** 2 for f in fields]))
                    ),
                }
            )
        out["mobility"] = per_t
        if len(ea):
            e = ea.iloc[0]
            out["ea"] = {
                "value": float(e["value"]),
                "ci_low": float(e["ci_low"]),
                "ci_high": float(e["ci_high"]),
            }
        else:
            out["ea"] = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        if compare:
            out[f"ea_{compare}"] = _ea_with(run, seed, compare, fast=fast)
        # the first m = 1, 2, 4, ... fields of each temperature pooled (and all of them; not
        # the step's own): what fewer or more crystals per temperature give, same draws
        pools = sorted({*(2**i for i in range(8) if 2**i < n_fields), n_fields} - {n_step})
        for m in pools:
            for est in ("moment", *([compare] if compare else [])):
                key = f"ea_pooled{m}" + ("" if est == "moment" else f"_{est}")
                out[key] = _ea_with(run, seed, est, fast=fast, n_series=m)
        # the same draws on other mobility tracks: the lineage tracks (before the strict
        # mobility tracks) and strict tracks of other link costs, both estimators
        for c in link_costs:
            name = "lineage" if c == "lineage" else f"cost{float(c):g}"
            kw = {"tracks": "lineage"} if c == "lineage" else {"cost": float(c)}
            for est in ("moment", "truncated"):
                key = f"ea_{name}" + ("" if est == "moment" else f"_{est}")
                out[key] = _ea_with(run, seed, est, fast=fast, **kw)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    ci = stats.binomtest(int(k), int(n)).proportion_ci(level, method="exact")
    return [float(ci.low), float(ci.high)]


def _summary(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, truth: float, tol: float,
             relative: bool) -> dict:  # fmt: skip
    ok = np.isfinite(values)
    v, lo, hi = values[ok], lo[ok], hi[ok]
    err = (v / truth - 1.0) if relative else (v - truth)
    within = int(np.sum(np.abs(err) <= tol))
    cover = int(np.sum((lo <= truth) & (truth <= hi)))
    n = int(v.size)
    return {
        "n": n,
        "n_failed": int((~ok).sum()),
        "mean": float(np.mean(v)),
        "bias": float(np.mean(err)),
        "bias_se": float(np.std(err, ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "rms_error": float(np.sqrt(np.mean(err**2))),
        "sd": float(np.std(v, ddof=1)) if n > 1 else float("nan"),
        "error_kind": "relative" if relative else "absolute",
        "tolerance": tol,
        "within": within,
        "share_within": within / n,
        "share_within_ci": _clopper_pearson(within, n),
        "covered": cover,
        "coverage": cover / n,
        "coverage_ci": _clopper_pearson(cover, n),
        "coverage_consistent_with_95": bool(_clopper_pearson(cover, n)[1] >= 0.95),
        "median_ci_width": float(np.median(hi - lo)),
    }


def summarise(rows: list[dict]) -> dict:
    s: dict = {}
    for tag in RATES if rows[0]["d_br"] else ():
        v = np.array([r["d_br"][tag]["value"] for r in rows])
        lo = np.array([r["d_br"][tag]["ci_low"] for r in rows])
        hi = np.array([r["d_br"][tag]["ci_high"] for r in rows])
        s[f"d_br_{tag}"] = _summary(v, lo, hi, TRUE_D_BR, 0.10, True)
        ex = np.array([r["d_br"][tag]["exact_counts"] for r in rows])
        s[f"d_br_{tag}"]["bias_exact_counts"] = float(np.mean(ex / TRUE_D_BR - 1))
        s[f"d_br_{tag}"]["images_vs_exact_rel_sd"] = float(np.std(v / ex - 1, ddof=1))
    v = np.array([r["ea"]["value"] for r in rows])
    lo = np.array([r["ea"]["ci_low"] for r in rows])
    hi = np.array([r["ea"]["ci_high"] for r in rows])
    s["ea"] = _summary(v, lo, hi, TRUE_EA, 0.05, False)
    for key in sorted({k for r in rows for k in r if k.startswith("ea_")}):
        v, lo, hi = (np.array([r[key][q] for r in rows]) for q in ("value", "ci_low", "ci_high"))
        s[key] = _summary(v, lo, hi, TRUE_EA, 0.05, False)
    if "dose_rate_model" in rows[0]:
        right = sum(r["dose_rate_model"] == "dose_controlled" for r in rows)
        s["dose_rate_mechanism"] = {
            "right": "dose_controlled",
            "n_right": int(right),
            "share_right": right / len(rows),
            "share_right_ci": _clopper_pearson(right, len(rows)),
        }
    # per temperature: Γ̂₁/Γ₁ from images and from the exact tracks (geometric means)
    temps = sorted({m["temperature_K"] for r in rows for m in r["mobility"]})
    per_t = {}
    for t in temps:
        ms = [m for r in rows for m in r["mobility"] if m["temperature_K"] == t]
        ri = np.array([m["ratio_images"] for m in ms])
        ro = np.array([m["ratio_exact_tracks"] for m in ms])
        cov = sum(m["ci_low"] <= m["gamma1_true_per_s"] <= m["ci_high"] for m in ms)
        per_t[f"{t:g}"] = {
            "gmean_ratio_images": float(np.exp(np.mean(np.log(ri)))),
            "sd_log_ratio_images": float(np.std(np.log(ri), ddof=1)) if len(ri) > 1 else None,
            "gmean_ratio_exact_tracks": float(np.exp(np.mean(np.log(ro)))),
            "gamma1_coverage": cov / len(ms),
            "mean_registration_rms_A": float(np.mean([m["registration_rms_A"] for m in ms])),
        }
    s["mobility_per_temperature"] = per_t
    return s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=12, help="number of seeds (default 12)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="the demo's fast sizes")
    ap.add_argument(
        "--compare",
        default="truncated",
        help="also recompute Ea with this hop estimator on the same tracks ('' for none)",
    )
    ap.add_argument(
        "--link-costs",
        default="lineage",
        help="also recompute Ea (both estimators) on these mobility tracks, comma-separated: "
        "'lineage' (the insitu.clusters tracks) and/or strict link costs in nats ('' for none)",
    )
    ap.add_argument(
        "--mobility-only",
        action="store_true",
        help="only the Pb⁰-diffusion chain (no D_Br, no dose-rate mechanism)",
    )
    ap.add_argument(
        "--mobility-frames",
        type=int,
        default=None,
        help="frames per mobility series (default: the demo's, 20; 12 with --fast)",
    )
    ap.add_argument(
        "--mobility-series",
        type=int,
        default=None,
        help=f"imaged fields per mobility temperature (default {DEMO_FIELDS}, the demo's; the "
        "step pools the first two); ea_pooled<m> is the Ea of the first m fields' tracks "
        "pooled per temperature (m = 1, 2, 4, ... and all, but the step's own)",
    )
    ap.add_argument(
        "--mobility-frame-dose",
        type=float,
        default=None,
        help="dose per mobility frame, e⁻/Å² (default: the demo's 2000; same frame times)",
    )
    ap.add_argument(
        "--probe-sigma-A",
        type=float,
        default=None,
        help="image every series with this probe σ, Å (default: the simulator's 0.33 Å)",
    )
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "bench_kinetics.json"),
    )
    a = ap.parse_args(argv)
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    import numpy
    import scipy

    import perovstem

    res: dict = {
        "config": f"demo_config(fast={a.fast}) restricted to the kinetic chains"
        + (" (mobility chain only)" if a.mobility_only else "")
        + (f", {a.mobility_frames} frames per mobility series" if a.mobility_frames else "")
        + (f", {a.mobility_frame_dose:g} e⁻/Å² per mobility frame" if a.mobility_frame_dose else "")
        + (
            f", {a.mobility_series} mobility fields per temperature"
            if a.mobility_series is not None
            else ""
        )
        + (f", probe σ {a.probe_sigma_A:g} Å" if a.probe_sigma_A is not None else ""),  # fmt: skip
        "seeds": seeds,
        "truth": {"D_Br_e_per_A2": TRUE_D_BR, "Ea_eV": TRUE_EA},
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "perovstem": perovstem.__version__,
        },
        "load_before": os.getloadavg(),
    }
    t0 = time.perf_counter()
    rows = []
    for s in seeds:
        costs = tuple(c.strip() for c in a.link_costs.split(",") if c.strip())
        r = one_seed(
            s,
            fast=a.fast,
            compare=a.compare or None,
            link_costs=costs,
            mobility_only=a.mobility_only,
            mobility_frames=a.mobility_frames,
            mobility_series=a.mobility_series,
            mobility_frame_dose=a.mobility_frame_dose,
            probe_sigma_A=a.probe_sigma_A,
        )
        rows.append(r)
        d_br = ""
        if r["d_br"]:
            lo, hi = r["d_br"]["low"], r["d_br"]["high"]
            d_br = (
                f"D_Br {lo['value']:.3g} [{lo['ci_low']:.3g}, {lo['ci_high']:.3g}] / "
                f"{hi['value']:.3g} [{hi['ci_low']:.3g}, {hi['ci_high']:.3g}] "
                f"({r['dose_rate_model']}); "
            )
        print(
            f"seed {s}: {d_br}Ea {r['ea']['value']:.3f} "
            f"[{r['ea']['ci_low']:.3f}, {r['ea']['ci_high']:.3f}]"
            + "".join(
                f"; {k} {v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                for k, v in r.items()
                if k.startswith("ea_")
            )
            + f"; {r['wall_s']} s",
            flush=True,
        )
    res["per_seed"] = rows
    res["summary"] = summarise(rows)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["load_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res["summary"], indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
