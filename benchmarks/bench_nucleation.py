"""Nucleation rate J from detectable births: recovery, coverage and regime boundaries.

Truth: the lattice KMC's realised births per dose over the whole series
(:func:`perovstem.quantify.nucleation.kmc_nucleation_rate`, ``window="series"``).
Estimator: :func:`perovstem.quantify.nucleation.nucleation_rate` (detectable births /
(template survival · dose)) with templates :func:`nucleation_templates` at the series'
conditions, laws :data:`SURVIVAL_LAWS` (critical nucleus 2 and 4, acceptance ×1 … ×0.003;
the truth runs use critical nucleus 3 and other acceptance scales and seeds).

Two observation levels:

* ``truth``: detection-limited truth, :func:`detectable_births` (n ≥ 7 atoms at a frame end,
  no detectable ancestor);
* ``images``: ``insitu_series`` (0.5 Å pixels, noise, 0.1 Å jitter) → ``analyze_series``;
  tracked births = lineage tracks with ``origin`` ``"nucleation"`` or ``"first_frame"``,
  detected clusters per frame as ``n_detected``; ``images`` uses the count efficiency
  (tracked / detectable births) measured on image seed 1 over all acceptance scales and is
  evaluated on seed 2; ``images_assumed_perfect`` takes the tracked births at face value
  (count_efficiency (1, 1)), to show what an unvalidated counter would claim.

Conditions: cubes of 60–140 Å, 240–300 K, 10² and 10³ e⁻/Å²/s, 20 frames, 6·10⁴ e⁻/Å² in
all; truth acceptance scale ×1 (package default, coalescence-limited), ×0.03, ×0.01,
×0.003 (sparse).  Criteria: |J_hat/J − 1| ≤ 0.10, interval covers J, ``identifiable``.
Elasticity: slope of ln(template detectable births) vs ln J over each critical nucleus's
acceptance ladder (global) and at the truth's law.

Run: ``python benchmarks/bench_nucleation.py [--quick] [--no-images]``; writes
``benchmarks/results/bench_nucleation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from perovstem.quantify.nucleation import (
    SURVIVAL_LAWS,
    detectable_births,
    detection_completeness,
    kmc_nucleation_rate,
    nucleation_rate,
    nucleation_templates,
)
from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal
from perovstem.simulate.kmc_params import KineticParameters

N_FRAMES = 20
TOTAL_DOSE = 6e4  # e/A2
CONDITIONS = [  # edge Å, T K, dose rate e/Å²/s
    (60.0, 240.0, 1e3),
    (100.0, 240.0, 1e3),
    (140.0, 240.0, 1e3),
    (100.0, 250.0, 1e3),
    (100.0, 270.0, 1e3),
    (100.0, 300.0, 1e3),
    (100.0, 240.0, 1e2),
    (100.0, 300.0, 1e2),
]
SCALES = (1.0, 0.03, 0.01, 0.003)
SEEDS = (1, 2, 3)
IMAGE_SEEDS = (1, 2)


def _params(scale: float, nc: int = 3) -> KineticParameters:
    b = KineticParameters()
    return dataclasses.replace(
        b,
        critical_nucleus=nc,
        nucleation_probability_corner=b.nucleation_probability_corner * scale,
        nucleation_probability_edge=b.nucleation_probability_edge * scale,
        nucleation_probability_face=b.nucleation_probability_face * scale,
    )


def _elasticity(tpl) -> dict[str, float]:
    t = tpl.assign(a=tpl["detectable_births"].map(np.sum))
    g = t.groupby(["critical_nucleus", "scale"])[["J_per_e_per_A2", "a", "n_births"]].mean()
    out = {}
    for nc, h in g.groupby(level=0):
        h = h[(h["a"] > 0) & (h["J_per_e_per_A2"] > 0)].sort_values("J_per_e_per_A2")
        lj, la = np.log(h["J_per_e_per_A2"].to_numpy()), np.log(h["a"].to_numpy())
        out[f"nc{nc}"] = float(np.polyfit(lj, la, 1)[0])
        sc = h.index.get_level_values(1)
        out[f"nc{nc}_segments"] = [  # local elasticity between neighbouring acceptance scales
            [float(sc[i]), float(sc[i + 1]), float((la[i + 1] - la[i]) / (lj[i + 1] - lj[i]))]
            for i in range(len(h) - 1)
        ]
    out["laws"] = [
        {
            "critical_nucleus": int(k[0]),
            "scale": float(k[1]),
            "J": float(r["J_per_e_per_A2"]),
            "births": float(r["n_births"]),
            "detectable_births": float(r["a"]),
            "survival": float(r["a"] / r["n_births"]) if r["n_births"] else None,
        }
        for k, r in g.iterrows()
    ]
    return out


def _result(r, j_true: float) -> dict:
    return {
        "J_hat": r.J_per_e_per_A2,
        "ratio": r.J_per_e_per_A2 / j_true,
        "ci": [r.ci_low, r.ci_high],
        "covers": r.covers(j_true),
        "identifiable": r.identifiable,
        "survival": [r.survival, r.survival_min, r.survival_max],
        "u": r.correction_uncertainty,
        "elasticity_local": r.elasticity,
        "A": r.n_births_detected,
        "detector_ratio": r.detector_ratio,
    }


def _image_births(tr, seed: int) -> tuple[int, np.ndarray, float]:
    from perovstem.insitu import analyze_series

    s, _ = insitu_series(tr, pixel_size_A=0.5, rng=seed)
    t0 = time.time()
    res = analyze_series(s, summary=False, phase_check=False, n_workers=1)
    lin = res.lineage
    n = int(lin["origin"].isin(["nucleation", "first_frame"]).sum())
    return n, res.frames["n_clusters"].to_numpy(float), time.time() - t0


def _truth_detected(tr) -> np.ndarray:
    c = tr.clusters
    w = detection_completeness(c["n_atoms"])
    return np.bincount(c["frame"], weights=w, minlength=N_FRAMES).round()


def run(conditions, scales, seeds, image_seeds) -> dict:
    out = []
    for edge, temp, phi in conditions:
        kw = dict(
            n_frames=N_FRAMES,
            frame_time_s=TOTAL_DOSE / phi / N_FRAMES,
            dose_rate_e_per_A2_s=phi,
            temperature_K=temp,
        )
        t0 = time.time()
        tpl = nucleation_templates(edge, laws=SURVIVAL_LAWS, n_seeds=2, rng=1000, **kw)
        cond = {
            "edge_A": edge,
            "temperature_K": temp,
            "dose_rate": phi,
            "templates_s": time.time() - t0,
            "elasticity": _elasticity(tpl),
            "runs": [],
        }
        for sc in scales:
            for seed in seeds:
                tr = degradation_kmc(
                    nanocrystal(edge, rng=seed), params=_params(sc), rng=seed, **kw
                )
                tru = kmc_nucleation_rate(tr.frame_table, window="series")
                j, dose = tru["J_per_e_per_A2"], tru["dose_active_e_per_A2"]
                a = detectable_births(tr.clusters, tr.events, n_frames=N_FRAMES)
                n_true = _truth_detected(tr)
                row = {
                    "scale": sc,
                    "seed": seed,
                    "J_true": j,
                    "births": tru["n_births"],
                    "detectable_births": int(a.sum()),
                    "truth": _result(
                        nucleation_rate(a, tpl, dose_e_per_A2=dose, n_detected=n_true), j
                    ),
                }
                if seed in image_seeds:
                    try:
                        n_img, n_det, t_an = _image_births(tr, seed)
                    except Exception as exc:  # the image pipeline is under development
                        row["image_error"] = repr(exc)
                    else:
                        row["image_births"] = n_img
                        row["image_detected_total"] = float(n_det.sum())
                        row["truth_detected_total"] = float(n_true.sum())
                        row["image_analysis_s"] = t_an
                        row["_img"] = (n_img, n_det, dose)
                        row["images_assumed_perfect"] = _result(
                            nucleation_rate(n_img, tpl, dose_e_per_A2=dose, n_detected=n_det), j
                        )
                cond["runs"].append(row)
                print(
                    f"{edge:5.0f} Å {temp:3.0f} K {phi:6.0f} ×{sc:<5} seed {seed}: births "
                    f"{tru['n_births']:4.0f} A {a.sum():4d} img {row.get('image_births', '-')} "
                    f"J_hat/J {row['truth']['ratio']:.3f} ident {row['truth']['identifiable']}"
                    f" covers {row['truth']['covers']}",
                    flush=True,
                )
        _calibrated_images(cond, tpl, image_seeds)
        out.append(cond)
    return {"conditions": out, "summary": _summary(out)}


def _calibrated_images(cond: dict, tpl, image_seeds) -> None:
    """Images with a measured count efficiency: tracked / detectable births of the first
    image seed over all acceptance scales (the law is unknown) applied to the others."""
    runs = [r for r in cond["runs"] if "_img" in r]
    cal = [r["image_births"] / r["detectable_births"] for r in runs if r["seed"] == image_seeds[0]]
    cal = [e for e in cal if np.isfinite(e) and e > 0]
    if cal:
        cond["count_efficiency_calibration"] = [min(cal), max(cal)]
    for r in runs:
        n_img, n_det, dose = r.pop("_img")
        if r["seed"] != image_seeds[0] and cal:
            res = nucleation_rate(
                n_img,
                tpl,
                dose_e_per_A2=dose,
                n_detected=n_det,
                count_efficiency=(min(cal), max(cal)),
            )
            r["images"] = _result(res, r["J_true"])


def _regimes(conds) -> list[dict]:
    """Per condition and truth acceptance scale: realised survival, identifiability and
    recovery at the truth level, local template elasticity (critical nucleus 2 and 4)."""
    out = []
    for c in conds:
        for sc in sorted({r["scale"] for r in c["runs"]}, reverse=True):
            rr = [r for r in c["runs"] if r["scale"] == sc]
            t = [r["truth"] for r in rr]
            out.append(
                {
                    "edge_A": c["edge_A"],
                    "temperature_K": c["temperature_K"],
                    "dose_rate": c["dose_rate"],
                    "scale": sc,
                    "births_mean": float(np.mean([r["births"] for r in rr])),
                    "survival_realised": float(
                        np.mean([r["detectable_births"] / max(r["births"], 1) for r in rr])
                    ),
                    "identifiable": f"{sum(x['identifiable'] for x in t)}/{len(t)}",
                    "ratio_range": [min(x["ratio"] for x in t), max(x["ratio"] for x in t)],
                    "covers": f"{sum(x['covers'] for x in t)}/{len(t)}",
                    "elasticity_local": float(np.nanmean([x["elasticity_local"] for x in t])),
                }
            )
    return out


def _summary(conds) -> dict:
    s = {"regimes": _regimes(conds)}
    for level in ("truth", "images", "images_assumed_perfect"):
        rows = [r[level] for c in conds for r in c["runs"] if level in r]
        ident = [r for r in rows if r["identifiable"]]
        s[level] = {
            "n": len(rows),
            "identifiable": len(ident),
            "identifiable_within_10pct": sum(abs(r["ratio"] - 1) <= 0.1 for r in ident),
            "identifiable_covers": sum(r["covers"] for r in ident),
            "identifiable_wrong_gt_10pct": sum(abs(r["ratio"] - 1) > 0.1 for r in ident),
            "all_covers": sum(r["covers"] for r in rows),
            "not_identifiable_within_10pct": sum(
                abs(r["ratio"] - 1) <= 0.1 for r in rows if not r["identifiable"]
            ),
            "identifiable_ratio_range": [
                min(r["ratio"] for r in ident),
                max(r["ratio"] for r in ident),
            ]
            if ident
            else None,
        }
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-images", action="store_true")
    a = ap.parse_args()
    conds = CONDITIONS[:2] if a.quick else CONDITIONS
    seeds = SEEDS[:2] if a.quick else SEEDS
    img = () if a.no_images else IMAGE_SEEDS
    res = {"load_before": os.getloadavg(), "n_frames": N_FRAMES, "total_dose": TOTAL_DOSE}
    t0 = time.time()
    res.update(run(conds, SCALES, seeds, img))
    res["wall_s"] = time.time() - t0
    res["load_after"] = os.getloadavg()
    print(json.dumps(res["summary"], indent=1))
    out = Path(__file__).parent / "results" / "bench_nucleation.json"
    out.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
