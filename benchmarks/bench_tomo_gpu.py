"""GPU check of the optional CuPy SIRT backend against the CPU (numba) SIRT, same data.

Plain script for a machine with a CUDA GPU and CuPy (not collected by pytest). Writes
``benchmarks/results/bench_tomo_gpu.json`` (or the path given with ``--out``).

Case: the analytic faceted nanocrystal phantom with two Pb inclusions of ``bench_tomo.py``,
71 projections over ±70°, Poisson noise, 100 SIRT iterations with non-negativity, at 128³
and 256³.  Reports wall time of both backends, the relative difference between the two
reconstructions (they implement the same update, so it must be ~float32 round-off) and each
one's relative L2 error to the voxelised truth; ``gpu_cupy_1iter_s`` (one iteration) shows
the GPU's fixed set-up cost.

Usage::

    python benchmarks/bench_tomo_gpu.py [--sizes 128 256] [--iters 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _case(n: int, seed: int = 1):
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(
        0.48 * n,
        orientation_deg=(25.0, 35.0, 15.0),
        inclusion_radius_A=(0.025 * n, 0.035 * n),
        rng=seed,
    )
    ang = np.linspace(-70.0, 70.0, 71)
    ts, _ = tilt_series(ph, ang, shape=(n, n), pixel_size_A=1.0, counts_per_A=8.0, rng=seed)
    truth = ph.voxelize((n, n, n), 1.0) * 8.0
    return ts, truth


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_tomo_gpu.json")
    args = ap.parse_args()

    import cupy as cp

    from perovstem.tomo import reconstruct

    dev = cp.cuda.runtime.getDeviceProperties(0)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "gpu": dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"],
        },
        "versions": {p: _v(p) for p in ("numpy", "numba", "cupy-cuda13x", "cupy-cuda12x")},
        "iterations": args.iters,
        "cases": [],
    }
    for n in args.sizes:
        ts, truth = _case(n)
        # warm-up (numba compile / CUDA context) on a tiny problem
        reconstruct(ts, method="sirt", n_iter=2)
        reconstruct(ts, method="sirt", n_iter=2, backend="cupy")
        cp.cuda.Device(0).synchronize()
        t0 = time.perf_counter()
        cpu = reconstruct(ts, method="sirt", n_iter=args.iters)
        t_cpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        gpu = reconstruct(ts, method="sirt", n_iter=args.iters, backend="cupy")
        cp.cuda.Device(0).synchronize()
        t_gpu = time.perf_counter() - t0
        # one iteration: the set-up (strip table, GPU matrix assembly, transfers) + 1 step
        t0 = time.perf_counter()
        reconstruct(ts, method="sirt", n_iter=1, backend="cupy")
        cp.cuda.Device(0).synchronize()
        t_gpu1 = time.perf_counter() - t0
        vc, vg = np.asarray(cpu.volume), np.asarray(gpu.volume)
        case = {
            "size": n,
            "cpu_numba_s": t_cpu,
            "gpu_cupy_s": t_gpu,
            "gpu_cupy_1iter_s": t_gpu1,
            "speedup_gpu_over_cpu": t_cpu / t_gpu,
            "rel_diff_gpu_vs_cpu": _rel(vg, vc),
            "rel_error_cpu": _rel(vc, truth),
            "rel_error_gpu": _rel(vg, truth),
        }
        print(json.dumps(case), flush=True)
        result["cases"].append(case)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def _v(pkg: str):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
