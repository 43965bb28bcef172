"""Benchmark of perovstem.pipeline: serial vs a 2-worker dask LocalCluster (plain script).

A 200-frame in-situ series of a degrading CsCd_xPb_{1-x}Br3 nanocrystal is simulated once
(KMC + HAADF rendering); the per-frame analysis step (Pb-cluster detection and counting,
``insitu.clusters``; falls back to ``series.frame_stats`` when that step is not available) is
then run through the same pipeline serially and on a LocalCluster with 2 single-threaded
worker processes.  Both runs must give identical tables.  Wall times of the mapped step and of
the whole run (including cluster start-up) are written to
``benchmarks/results/bench_pipeline.json``.

Usage::

    python benchmarks/bench_pipeline.py [--frames 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bench_pipeline.json"


def _config(n_frames: int, analysis: str) -> dict:
    return {
        "run": {"name": "bench", "seed": 5, "report": False},
        "step": [
            {
                "run": "simulate.nanocrystal",
                "id": "nc",
                "edge_A": 48.0,
                "cd_fraction": 0.2,
                "view3d": False,
            },
            {
                "run": "simulate.kmc",
                "id": "kmc",
                "n_frames": n_frames,
                "frame_time_s": 0.5,
                "dose_rate_e_per_A2_s": 1000.0,
            },
            {"run": "simulate.insitu_series", "id": "series", "pixel_size_A": 0.5},
            {"run": analysis, "id": "analysis", "inputs": {"series": "series.series"}},
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from perovstem.errors import PerovstemError
    from perovstem.pipeline import get_step, parse_config, run_pipeline

    candidates = ["insitu.clusters", "series.frame_stats"]
    candidates = [c for c in candidates if get_step(c).available]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. simulate once (and compile numba kernels) - not timed
        note = ""
        for analysis in candidates:
            cfg = parse_config(_config(args.frames, analysis), source="<bench>")
            try:
                run_pipeline(cfg, out=tmp / "serial", scheduler="serial", quiet=True)
                break
            except (PerovstemError, ValueError, TypeError) as exc:
                note += f"{analysis} failed ({type(exc).__name__}: {exc}); "
                import shutil

                shutil.rmtree(tmp / "serial" / ".cache" / "analysis", ignore_errors=True)
        else:
            sys.exit(f"no analysis step ran: {note}")
        for rid in ("dask",):  # the dask run reuses the simulated series (same cache keys)
            import shutil

            shutil.copytree(tmp / "serial", tmp / rid)
            shutil.rmtree(tmp / rid / ".cache" / "analysis")
        shutil.rmtree(tmp / "serial" / ".cache" / "analysis")

        t0 = time.perf_counter()
        serial = run_pipeline(cfg, out=tmp / "serial", scheduler="serial", quiet=True)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        dist = run_pipeline(
            cfg, out=tmp / "dask", scheduler=f"local:{args.workers}", processes=True, quiet=True
        )
        t_dask = time.perf_counter() - t0
        step_serial = next(s.wall_s for s in serial.steps if s.id == "analysis")
        step_dask = next(s.wall_s for s in dist.steps if s.id == "analysis")
        identical = True
        for p in sorted((tmp / "serial" / "tables").glob("analysis.*.parquet")):
            a, b = pd.read_parquet(p), pd.read_parquet(tmp / "dask" / "tables" / p.name)
            identical &= a.equals(b)
        n_rows = sum(
            len(pd.read_parquet(p)) for p in (tmp / "serial" / "tables").glob("analysis.*.parquet")
        )

    versions = {"python": sys.version.split()[0]}
    for pkg in ("perovstem", "numpy", "scipy", "pandas", "dask", "distributed", "numba"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    result = {
        "benchmark": "pipeline per-frame step: serial vs dask LocalCluster",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
        },
        "versions": versions,
        "workload": {"frames": args.frames, "step": analysis, "rows_out": n_rows},
        "ours": {
            "serial_step_s": round(step_serial, 3),
            "serial_run_s": round(t_serial, 3),
        },
        "peer": {
            "name": f"same pipeline on dask.distributed LocalCluster ({args.workers} worker "
            "processes, 1 thread each)",
            "dask_step_s": round(step_dask, 3),
            "dask_run_s": round(t_dask, 3),
        },
        "ratio": {
            "step_speedup_dask_over_serial": round(step_serial / step_dask, 3),
            "run_speedup_dask_over_serial": round(t_serial / t_dask, 3),
        },
        "identical_results": bool(identical),
        "note": note or None,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
