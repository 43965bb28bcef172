"""Benchmark of perovstem.pipeline: serial vs a 2-worker dask LocalCluster (plain script).

A 200-frame in-situ series of a degrading CsCd_xPb_{1-x}Br3 nanocrystal is simulated once
(KMC + HAADF rendering); the per-frame analysis step (Pb-cluster detection and counting,
``insitu.clusters``; falls back to ``series.frame_stats`` when that step is not available) is
then run through the same pipeline serially and on a LocalCluster with 2 single-threaded
worker processes; a second, heavier workload fits every atom column of every frame
(``atoms.series``: joint Gaussian fit per frame, then a hidden Markov model).  Both runs must give identical tables.  Wall times of the mapped step and of
the whole run (including cluster start-up) are written to
``benchmarks/results/bench_pipeline.json``: *cold* = the pipeline starts its own LocalCluster
(worker start-up, imports and JIT compilation in every worker are timed), *warm* = a
long-lived cluster handed to the pipeline (second run timed; started as the pipeline starts
its own, ``perovstem.pipeline.executor.local_cluster``: without dask's
``MALLOC_TRIM_THRESHOLD_``).  CPU seconds of each run (this process and the workers) are
recorded with the wall times.  The load average is recorded:
on a shared machine the figures are only comparable within one run of this script.

Run it as a script (``if __name__ == "__main__"``): worker processes re-import the main module.

Usage::

    python benchmarks/bench_pipeline.py [--frames 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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


def _step_time(result, step_id: str = "analysis") -> float:
    return next(s.wall_s for s in result.steps if s.id == step_id)


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished child processes (the workers of
    a LocalCluster the pipeline started and closed)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _warm_cluster(n_workers: int):
    """The long-lived cluster of the warm runs, started as the pipeline starts its own
    (``perovstem.pipeline.executor.local_cluster``, where this version has it)."""
    try:
        from perovstem.pipeline.executor import local_cluster
    except ImportError:
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
    return local_cluster(n_workers)


def _bench(analysis: str, n_frames: int, n_workers: int, tmp: Path) -> dict:
    """Time one per-frame step serially, on a fresh LocalCluster (cold) and a warm one."""
    from distributed import Client

    from perovstem.pipeline import parse_config, run_pipeline

    cfg = parse_config(_config(n_frames, analysis), source="<bench>")
    base = tmp / analysis
    # simulate once (and compile numba kernels) - not timed; later runs reuse the series
    run_pipeline(cfg, out=base / "serial", scheduler="serial", quiet=True)
    for rid in ("dask", "warm"):
        shutil.copytree(base / "serial", base / rid)

    def fresh(rid: str) -> None:
        shutil.rmtree(base / rid / ".cache" / "analysis", ignore_errors=True)

    fresh("serial")
    c0, t0 = _cpu_s(), time.perf_counter()
    serial = run_pipeline(cfg, out=base / "serial", scheduler="serial", quiet=True)
    t_serial, c_serial = time.perf_counter() - t0, _cpu_s() - c0
    # cold: the pipeline starts its own LocalCluster (start-up, imports, JIT in workers)
    fresh("dask")
    c0, t0 = _cpu_s(), time.perf_counter()
    dist = run_pipeline(
        cfg, out=base / "dask", scheduler=f"local:{n_workers}", processes=True, quiet=True
    )
    t_dask, c_dask = time.perf_counter() - t0, _cpu_s() - c0
    # warm: a long-lived cluster (as on an HPC allocation) handed to the pipeline; the first
    # run warms the workers, the second is timed
    with _warm_cluster(n_workers) as cluster, Client(cluster) as client:
        for _ in range(2):
            fresh("warm")
            w0, c0 = client.run(time.process_time), time.process_time()
            t0 = time.perf_counter()
            warm = run_pipeline(cfg, out=base / "warm", scheduler=client, quiet=True)
            t_warm = time.perf_counter() - t0
            w1 = client.run(time.process_time)
            c_warm = time.process_time() - c0 + sum(w1[w] - w0[w] for w in w0)
    identical = True
    n_rows = 0
    for p in sorted((base / "serial" / "tables").glob("analysis.*.parquet")):
        n_rows += len(pd.read_parquet(p))
        for other in ("dask", "warm"):
            identical &= p.read_bytes() == (base / other / "tables" / p.name).read_bytes()
    s_step, d_step, w_step = _step_time(serial), _step_time(dist), _step_time(warm)
    return {
        "workload": {"frames": n_frames, "step": analysis, "rows_out": n_rows},
        "ours": {
            "serial_step_s": round(s_step, 3),
            "serial_run_s": round(t_serial, 3),
            "serial_run_cpu_s": round(c_serial, 3),
        },
        "peer": {
            "name": f"same pipeline on a dask.distributed LocalCluster ({n_workers} worker "
            "processes, 1 thread each)",
            "cold_step_s": round(d_step, 3),
            "cold_run_s": round(t_dask, 3),
            "warm_step_s": round(w_step, 3),
            "warm_run_s": round(t_warm, 3),
            # CPU of this process + the workers (cold: the closed cluster's processes)
            "cold_run_cpu_s": round(c_dask, 3),
            "warm_run_cpu_s": round(c_warm, 3),
        },
        "ratio": {
            "cold_step_speedup_dask_over_serial": round(s_step / d_step, 3),
            "warm_step_speedup_dask_over_serial": round(s_step / w_step, 3),
        },
        "identical_results": bool(identical),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--steps",
        nargs="+",
        default=["insitu.clusters", "atoms.series"],
        help="per-frame steps to time (default: cluster detection, column fits)",
    )
    args = ap.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]

    from perovstem.pipeline import get_step

    results, notes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for analysis in args.steps:
            if not get_step(analysis).available:
                notes[analysis] = "not available in this version"
                continue
            try:
                results.append(_bench(analysis, args.frames, args.workers, Path(tmp)))
            except Exception as exc:  # report, keep the other workloads
                notes[analysis] = f"{type(exc).__name__}: {exc}"
            print(json.dumps(results[-1] if results else notes, indent=1), flush=True)

    versions = {"python": sys.version.split()[0]}
    for pkg in ("perovstem", "numpy", "scipy", "pandas", "dask", "distributed", "numba"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    result = {
        "benchmark": "pipeline per-frame steps: serial vs dask LocalCluster",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "load_average_1_5_15min_at_start": load_start,
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions,
        "workloads": results,
        "notes": notes or None,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
