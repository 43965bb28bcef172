"""Library-free counting on simulated images: default GMM + ICL vs the smooth ladder mixture.

Plain script, not collected by pytest.  Per seed, 54 runs: metallic Pb columns ([001], fcc
a = 4.95 Å) of 1-10, 1-20 or 1-30 atoms, 40 / 100 / 300 columns, 2e3 / 1e4 / 5e4 e/Å², counts
uniform or sphere-like (P(n) ~ n: the column lengths of a ball), imaged by the fast HAADF
model (abTEM-calibrated SCS, Poisson noise, 0.25 Å pixels) and measured by ``fit_columns``
(as ``tests/atoms/test_count_ladder.py::_pb_columns``).  Each run is counted by
``count_atoms`` (default) and ``count_atoms(method="ladder")``.

Sets: tune (seeds 0, 1), held-out (100, 101), fresh (400, 401).  A run is *correct* when
>= 80 % of the columns are counted exactly and the total is within 5 %; *over-split* when
the total is > 1.5x the truth, *merged* when < 0.67x.

``--errors`` counts the fit's table (``scs`` and ``scs_err``) instead of the bare SCS
array, as the CLI and the pipeline do: the ladder's min-width guard (levels not narrower
than half the median ``scs_err``) only engages then.

Usage::

    python benchmarks/bench_count_ladder.py                 # all sets (~15 min on 2 cores)
    python benchmarks/bench_count_ladder.py --seeds 0 1     # one set
    python benchmarks/bench_count_ladder.py --errors --methods ladder  # with scs_err

The default method's rows also record the ladder check (``atoms.count.ladder_check``) of
ICL's own choice (``icl_*``: its k, exactness, total and check) and whether ``count_atoms``
re-selected k because of it; the summary ``ladder_check/<set>`` counts wrong runs flagged
and missed, correct runs flagged (false alarms) and the runs the re-selection made correct
(gained) or no longer correct (lost).  ``--dump DIR`` pickles each default run's SCS, truth
and GMM sweep for offline analysis of the check.

Writes ``benchmarks/results/bench_count_ladder.json`` (``..._errors.json`` with
``--errors``, or ``--out``; per-run rows and the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import perovstem.atoms.count as _count_mod

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bench_count_ladder.json"
sys.path.insert(0, str(HERE.parent / "tests" / "atoms"))

from _pb_columns import pb_column_scs  # noqa: E402

SETS = {"tune": (0, 1), "held-out": (100, 101), "fresh": (400, 401)}

# the GMM sweep count_atoms makes (captured to read ICL's own choice without a second sweep)
_SWEEPS: list = []
_gmm_sweep = _count_mod.gmm_sweep


def _capture_sweep(*args, **kwargs):
    sw = _gmm_sweep(*args, **kwargs)
    _SWEEPS.append(sw)
    return sw


_count_mod.gmm_sweep = _capture_sweep


def simulate(seed: int, n_cols: int, max_atoms: int, dose: float, dist: str):
    """Fitted SCS, true counts and SCS errors of one run (the tests' Pb-column generator)."""
    rng = np.random.default_rng([seed, n_cols, max_atoms, int(dose), dist == "sphere"])
    lev = np.arange(1, max_atoms + 1)
    if dist == "uniform":
        n = rng.integers(1, max_atoms + 1, n_cols)
    else:
        n = rng.choice(lev, n_cols, p=lev / lev.sum())
    return pb_column_scs(n, dose, rng, with_err=True)


def count(
    x: np.ndarray, method: str, err: np.ndarray | None = None
) -> tuple[np.ndarray, int, int, dict]:
    import pandas as pd

    from perovstem.atoms import count_atoms

    data = x if err is None else pd.DataFrame({"scs": x, "scs_err": err})
    _SWEEPS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = count_atoms(data, method=method)
    info = r.attrs["counting"]["all"]
    return r["n_atoms"].to_numpy(), int(info["n_components"]), int(info["first_count"]), info


def icl_choice(x: np.ndarray, n: np.ndarray, info: dict) -> dict:
    """ICL's own choice (before the ladder check's re-selection) and its check."""
    sw = _SWEEPS[-1]
    fit = sw.fit(sw.selected)
    fc = int(info["first_count"])
    c = fc + np.argmax(fit.posterior(x), axis=1)
    chk = _count_mod.ladder_check(fit, first_count=fc)
    final = info["ladder_check"] or {}
    return {
        "icl_k": int(fit.n_components),
        "icl_exact": float(np.mean(c == n)),
        "icl_total_ratio": float(c.sum() / n.sum()),
        "icl_check_ok": bool(chk["ok"]),
        "icl_overlap": chk["overlap"],
        "icl_first_ratio": chk["first_ratio"],
        "icl_max_gap": max(chk["gap_ratios"]) if chk["gap_ratios"] else None,
        "icl_check_failed": [m.split(" (")[0].split(":")[0] for m in chk["messages"]],
        "reselected": "reselected_from" in final,
        "final_check_ok": final.get("ok"),
    }


def _correct(exact: float, ratio: float) -> bool:
    return exact >= 0.8 and abs(ratio - 1) <= 0.05


def _wrong(exact: float, ratio: float) -> bool:
    # as docs/counting.md: total off by > 10 % or < 50 % exact
    return exact < 0.5 or abs(ratio - 1) > 0.1


def check_summary(rows: list[dict]) -> dict:
    """The ladder check on ICL's choice against the truth, and what the re-selection did."""
    wrong = [r for r in rows if _wrong(r["icl_exact"], r["icl_total_ratio"])]
    corr = [r for r in rows if _correct(r["icl_exact"], r["icl_total_ratio"])]
    merged = [r for r in rows if r["icl_k"] < 0.8 * r["levels"]]
    was = [_correct(r["icl_exact"], r["icl_total_ratio"]) for r in rows]
    now = [_correct(r["exact"], r["total_ratio"]) for r in rows]
    return {
        "runs": len(rows),
        "icl_wrong": len(wrong),
        "icl_wrong_flagged": sum(not r["icl_check_ok"] for r in wrong),
        "icl_correct": len(corr),
        "icl_correct_flagged": sum(not r["icl_check_ok"] for r in corr),
        "icl_merged_k_lt_0.8_levels": len(merged),
        "icl_merged_flagged": sum(not r["icl_check_ok"] for r in merged),
        "reselected": sum(r["reselected"] for r in rows),
        "correct_icl_to_final": [sum(was), sum(now)],
        "gained": sum(n and not w for w, n in zip(was, now, strict=True)),
        "lost": sum(w and not n for w, n in zip(was, now, strict=True)),
    }


def summary(rows: list[dict]) -> dict:
    ex = np.array([r["exact"] for r in rows])
    ra = np.array([r["total_ratio"] for r in rows])
    return {
        "runs": len(rows),
        "correct": int(np.sum((ex >= 0.8) & (np.abs(ra - 1) <= 0.05))),
        "mean_exact": float(ex.mean()),
        "median_total_ratio": float(np.median(ra)),
        "mean_abs_total_error": float(np.mean(np.abs(ra - 1))),
        "over_split_gt_1.5": int(np.sum(ra > 1.5)),
        "merged_lt_0.67": int(np.sum(ra < 0.67)),
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
        "max_seconds": float(np.max([r["seconds"] for r in rows])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="*", default=[s for v in SETS.values() for s in v])
    ap.add_argument("--methods", nargs="*", default=["gmm", "ladder"])
    ap.add_argument("--errors", action="store_true", help="count the table with scs_err")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write")
    ap.add_argument("--dump", type=Path, default=None, help="pickle default runs' sweeps here")
    args = ap.parse_args()
    out = OUT.with_name("bench_count_ladder_errors.json") if args.errors else OUT
    out = args.out or out
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    count(np.arange(1.0, 41.0), "ladder")
    count(np.arange(1.0, 41.0), "gmm")  # numba compile outside the timing
    rows = []
    for seed in args.seeds:
        for dist in ("uniform", "sphere"):
            for max_atoms in (10, 20, 30):
                for n_cols in (40, 100, 300):
                    for dose in (2e3, 1e4, 5e4):
                        x, n, err = simulate(seed, n_cols, max_atoms, dose, dist)
                        for method in args.methods:
                            t0 = time.perf_counter()
                            c, k, fc, info = count(x, method, err if args.errors else None)
                            dt = time.perf_counter() - t0
                            extra = icl_choice(x, n, info) if method == "gmm" else {}
                            if args.dump and method == "gmm":
                                import pickle

                                tag = f"{seed}_{dist}_{max_atoms}_{n_cols}_{int(dose)}"
                                with open(args.dump / f"{tag}.pkl", "wb") as fh:
                                    pickle.dump({"x": x, "n": n, "sweep": _SWEEPS[-1]}, fh)
                            rows.append(
                                {
                                    "seed": seed,
                                    "dist": dist,
                                    "max_atoms": max_atoms,
                                    "n_cols": int(x.size),
                                    "dose": dose,
                                    "method": method,
                                    "levels": int(np.unique(n).size),
                                    "k": k,
                                    "first_count": fc,
                                    "exact": float(np.mean(c == n)),
                                    "total_ratio": float(c.sum() / n.sum()),
                                    "seconds": dt,
                                    **extra,
                                }
                            )
                print(f"seed {seed} {dist} 1-{max_atoms}: {len(rows)} rows", flush=True)
    summ = {}
    for name, seeds in SETS.items():
        for method in args.methods:
            sel = [r for r in rows if r["seed"] in seeds and r["method"] == method]
            if sel:
                summ[f"{name}/{method}"] = summary(sel)
                print(name, method, json.dumps(summ[f"{name}/{method}"]), flush=True)
                if method == "gmm":
                    summ[f"ladder_check/{name}"] = check_summary(sel)
                    print(name, "check", json.dumps(summ[f"ladder_check/{name}"]), flush=True)
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0],
                },
                "scs_err_given": bool(args.errors),
                "seeds": list(args.seeds),
                "summary": summ,
                "runs": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
