"""Shot-noise floor of single-frame Pb-cluster counts on the ``bench_clusters`` series.

How close to "counts within 15 %" can any single-frame count come at the dose of these
series?  Per frame and per projected truth object (>= 10 atoms; as ``bench_clusters``), the
simulator's noise-free renders of the host (host + Pb⁰ adatoms) and of the clusters give
the expected detector counts h(x) and c(x) (gain 1).  With the background known exactly,
the relative 1σ of the cluster's counts from Poisson noise alone is

* top-hat aperture of radius R + m (R the equal-volume radius):
  sqrt(Σ_ap (h + c)) / Σ_ap c, for m = 1.5 Å and m = 3 Å (``detect_clusters``'
  ``aperture_A`` default);
* optimal weights (the Cramér–Rao bound for the amplitude of a known profile on a known
  background, Poisson pixels; Naylor 1998, MNRAS 296, 339): 1 / sqrt(Σ c² / (h + c)) over
  R + 8 Å, with the true cluster image as the profile.

Each σ gives the share P(|N(0, σ)| < 0.15) expected within 15 %; averaged over the objects
of a bin (``vacuum_far`` / ``vacuum_near`` / ``on_host``, the bins of ``bench_clusters``) it
is the best share an unbiased count with that weighting can reach.  The dose per frame at
which the median object of a bin would have σ = 7.5 % (95 % within 15 %) is
dose · (σ / 0.075)².  The measured shares of ``detect_clusters`` (split) are copied from
``results/bench_clusters.json`` next to them.

No analysis code is timed or tuned here: this is a bound, computed on the simulator's
truth.  Run:  python benchmarks/bench_count_floor.py  (≈ 10 min on 2 cores; writes
benchmarks/results/bench_count_floor.json).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_clusters import SETS, _host_mask, _radius  # noqa: E402
from perovstem.insitu import estimate_lattice, projected_objects  # noqa: E402
from perovstem.simulate import degradation_kmc, nanocrystal  # noqa: E402
from perovstem.simulate.haadf import haadf_image  # noqa: E402
from perovstem.simulate.series import _plan  # noqa: E402

TARGET = 0.15


def _render(tr, plan, k, labels):
    """Noise-free expected counts per pixel at gain 1 of the atoms with these labels."""
    at = tr.atoms(k)
    at = at[np.isin(at.arrays["label"], labels)]
    if len(at) == 0:
        return np.zeros(plan.shape)
    dose = float(tr.frame_table.iloc[k]["dose_e_per_A2"])
    img, _ = haadf_image(
        at,
        pixel_size_A=plan.pixel_size_A,
        shape=plan.shape,
        dose_e_per_A2=dose,
        center_A=plan.center_A,
        noise=False,
    )
    return np.asarray(img.data, float)


def floor_rows(seed: int, c: dict) -> list[dict]:
    px = c["px"]
    tr = degradation_kmc(
        nanocrystal(edge_A=c["edge"], rng=seed),
        n_frames=12,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=c["rate"],
        temperature_K=c["temp"],
        rng=seed,
    )
    # the series' field of view without drift (the truth is then in image coordinates)
    plan = _plan(tr, pixel_size_A=px, shape=None, drift_A_per_s=(0, 0), jitter_A=0.0,
                 scan_drift=False, center_A=None, margin_A=10.0, rng=seed, image_kw={})  # fmt: skip
    ny, nx = plan.shape
    yy, xx = np.mgrid[0:ny, 0:nx] * px
    ox, oy = plan.center_A[0] - nx * px / 2, plan.center_A[1] - ny * px / 2
    cl = tr.clusters
    rows, lat = [], None
    for k in range(tr.n_frames):
        obj = projected_objects(cl[cl["frame"] == k])
        obj = obj[obj["n_atoms"] >= 10]
        if not len(obj):
            continue
        h = _render(tr, plan, k, [0, 1])
        cc = _render(tr, plan, k, [2])
        if lat is None:
            lat = estimate_lattice(h + cc, px)[:2]
        on_host = _host_mask(h + cc, px, *lat)
        dose = float(tr.frame_table.iloc[k]["dose_e_per_A2"])
        for x_A, y_A, n in obj[["x_A", "y_A", "n_atoms"]].to_numpy(float):
            r_cl = _radius(n)
            x, y = x_A - ox, y_A - oy
            d = np.hypot(xx - x, yy - y)
            near = d < r_cl + 8.0
            hv, cv, dv = h[near], cc[near], d[near]
            sig = {}
            for name, m in (("aperture_1.5A", 1.5), ("aperture_3A", 3.0)):
                ap = dv < r_cl + m
                sig[name] = float(np.sqrt((hv + cv)[ap].sum()) / cv[ap].sum())
            sig["optimal"] = float(1.0 / np.sqrt(np.sum(cv * cv / np.maximum(hv + cv, 1e-12))))
            rows.append({"seed": seed, "frame": k, "n": n, "dose": dose, "on": on_host(x, y),
                         "edge": on_host.edge_A(x, y) - r_cl, **sig})  # fmt: skip
    return rows


def summarise(df: pd.DataFrame) -> dict:
    out = {}
    bins = np.where(df["edge"] >= 8.0, "vacuum_far", np.where(~df["on"], "vacuum_near", "on_host"))
    for b in ("vacuum_far", "vacuum_near", "on_host", "all"):
        g = df if b == "all" else df[bins == b]
        if not len(g):
            continue
        row = {"n": len(g)}
        for s in ("aperture_1.5A", "aperture_3A", "optimal"):
            sd = g[s].to_numpy(float)
            row[f"within_15pct_{s}"] = round(float(np.mean(2 * norm.cdf(TARGET / sd) - 1)), 3)
            row[f"median_rel_sd_{s}"] = round(float(np.median(sd)), 4)
            # dose per frame for the median object to reach σ = 7.5 % (95 % within 15 %)
            need = g["dose"].to_numpy(float) * (sd / (TARGET / 2)) ** 2
            row[f"dose_for_95pct_{s}_e_per_A2"] = round(float(np.median(need)), 0)
        out[b] = row
    return out


def main() -> None:
    t0 = time.perf_counter()
    measured = {}
    bc = HERE / "results" / "bench_clusters.json"
    if bc.exists():
        sets = json.loads(bc.read_text())["sets"]
        for name, v in sets.items():
            cb = v["split"]["counts_by"]
            measured[name] = {
                "all": v["split"]["counts"]["within_15pct"],
                "vacuum_far": (cb.get("vacuum_far") or {}).get("within_15pct"),
                "vacuum_near": (cb.get("vacuum_near_edge") or {}).get("within_15pct"),
                "on_host": (cb.get("on_host") or {}).get("within_15pct"),
            }
    res = {}
    for name, cases in SETS.items():
        rows = [r for seed, c in cases for r in floor_rows(seed, c)]
        res[name] = {
            "dose_per_frame_e_per_A2": sorted({c["rate"] * 1.0 for _, c in cases}),
            "floor": summarise(pd.DataFrame(rows)),
            "measured_detect_clusters_split": measured.get(name),
        }
        print(name, json.dumps(res[name]["floor"]["all"]), flush=True)
    out = {
        "benchmark": "shot-noise floor of single-frame cluster counts (bench_clusters series)",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "target_rel": TARGET,
        "sets": res,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    path = HERE / "results" / "bench_count_floor.json"
    path.write_text(json.dumps(out, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
