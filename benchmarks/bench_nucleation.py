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
  tracked births = lineage tracks with ``origin`` ``"nucleation"`` or ``"first_frame"``.

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
        h = h[(h["a"] > 0) & (h["J_per_e_per_A2"] > 0)]
        out[f"nc{nc}"] = float(np.polyfit(np.log(h["J_per_e_per_A2"]), np.log(h["a"]), 1)[0])
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
    }


def _image_births(tr, seed: int) -> tuple[int, float]:
    from perovstem.insitu import analyze_series

    s, _ = insitu_series(tr, pixel_size_A=0.5, rng=seed)
    t0 = time.time()
    res = analyze_series(s, summary=False, phase_check=False, n_workers=1)
    lin = res.lineage
    n = int(lin["origin"].isin(["nucleation", "first_frame"]).sum())
    return n, time.time() - t0


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
                row = {
                    "scale": sc,
                    "seed": seed,
                    "J_true": j,
                    "births": tru["n_births"],
                    "detectable_births": int(a.sum()),
                    "truth": _result(nucleation_rate(a, tpl, dose_e_per_A2=dose), j),
                }
                if seed in image_seeds:
                    n_img, t_an = _image_births(tr, seed)
                    row["image_births"] = n_img
                    row["image_analysis_s"] = t_an
                    row["images"] = _result(nucleation_rate(n_img, tpl, dose_e_per_A2=dose), j)
                cond["runs"].append(row)
                print(
                    f"{edge:5.0f} Å {temp:3.0f} K {phi:6.0f} ×{sc:<5} seed {seed}: births "
                    f"{tru['n_births']:4.0f} A {a.sum():4d} img {row.get('image_births', '-')} "
                    f"J_hat/J {row['truth']['ratio']:.3f} ident {row['truth']['identifiable']}"
                    f" covers {row['truth']['covers']}",
                    flush=True,
                )
        out.append(cond)
    return {"conditions": out, "summary": _summary(out)}


def _summary(conds) -> dict:
    s = {}
    for level in ("truth", "images"):
        rows = [r[level] for c in conds for r in c["runs"] if level in r]
        ident = [r for r in rows if r["identifiable"]]
        s[level] = {
            "n": len(rows),
            "identifiable": len(ident),
            "identifiable_within_10pct": sum(abs(r["ratio"] - 1) <= 0.1 for r in ident),
            "identifiable_covers": sum(r["covers"] for r in ident),
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
